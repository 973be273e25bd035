"""The commands of the developer tools in ``active-series``: ``db``, ``demo`` and
``stripe-emulator``. The command line finds :func:`register` through the entry point group
``active_series.commands`` (pyproject.toml), so the product never imports the tools; each
tool is imported only when its command runs."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_DATA_DIR = ".active-series/db"  # localdb.DEFAULT_DATA_DIR, without importing it
DEFAULT_DBNAME = "active_series"


def _db(args: argparse.Namespace) -> int:
    from active_series.devtools import localdb

    action = {"start": localdb.start, "stop": localdb.stop, "status": localdb.status}
    return action[args.db_command](args)


def _demo(args: argparse.Namespace) -> int:
    from active_series.devtools import demo

    return demo.run(args)


def _stripe_emulator(args: argparse.Namespace) -> int:
    from active_series.devtools import stripe_emulator

    return stripe_emulator.main(args.extra)


def register(sub: Any) -> None:
    """Add the developer tools' commands to the ``active-series`` subparsers ``sub``."""
    p = sub.add_parser(
        "stripe-emulator",
        help="serve a local Stripe emulator (see its --help)",
        add_help=False,
    )
    # its options, --help included, are its own: main() leaves them in args.extra
    p.set_defaults(func=_stripe_emulator, extra_args=True)

    cluster_opts = argparse.ArgumentParser(add_help=False)
    cluster_opts.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the cluster's data directory (default: ACTIVE_SERIES_DATA_DIR, else "
        f"{DEFAULT_DATA_DIR} in the current directory)",
    )
    cluster_opts.add_argument(
        "--dbname", default=DEFAULT_DBNAME, help=f"database (default {DEFAULT_DBNAME})"
    )
    p = sub.add_parser(
        "db",
        help="an embedded local PostgreSQL cluster (run as the postgres user when root)",
        description="Start, stop or inspect a local PostgreSQL cluster in a project directory. "
        "start and status print the database's DSN on stdout.",
    )
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dp = db_sub.add_parser(
        "start",
        parents=[cluster_opts],
        help="initialize when needed, start, create the database and install the schema",
    )
    dp.add_argument("--port", type=int, help="TCP port (default: the last one, else a free one)")
    dp.add_argument("--no-install", action="store_true", help="do not install the schema")
    dp.set_defaults(func=_db)
    dp = db_sub.add_parser("stop", parents=[cluster_opts], help="stop the cluster")
    dp.set_defaults(func=_db)
    dp = db_sub.add_parser(
        "status", parents=[cluster_opts], help="print the DSN when running (exit 3 when not)"
    )
    dp.set_defaults(func=_db)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline live: database, Stripe emulator, worker, several organizations",
        description="Start the embedded cluster, the Stripe emulator and the worker; bill "
        "several organizations on short periods through the stripe SDK; print database vs "
        "Stripe per period and write a PNG chart. Stops everything it started.",
    )
    p.add_argument("--short", action="store_true", help="about 35 seconds (CI) instead of ~2 min")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the cluster's data directory (default: {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where the chart, summary.json and worker.log go (default: .active-series/demo)",
    )
    p.add_argument("--period-seconds", type=int, help="billing period length (default 10 / 25)")
    p.add_argument("--periods", type=int, help="periods with activity (default 3 / 5)")
    p.set_defaults(func=_demo)
