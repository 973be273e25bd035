"""The ``active-series`` command line.

Every subcommand reads its connection from ``--dsn``, else ``DATABASE_URL``, else
the standard libpq variables (``PGHOST``, ``PGPORT``, ``PGUSER``, ...).  Expected
failures print one line to stderr and exit with a distinct code; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from active_series import __version__
from active_series.install import SchemaVersionError, check_version, install

# exit codes
EXIT_OK = 0
EXIT_FAILURE = 1  # verify found drift
EXIT_USAGE = 2  # argparse's own
EXIT_DATABASE = 3  # unreachable or refused
EXIT_SCHEMA = 4  # not installed or another version
EXIT_NOT_FOUND = 5  # unknown organization
EXIT_INPUT = 6  # bad dates or other rejected input


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def conninfo(args: argparse.Namespace) -> str:
    """--dsn, else DATABASE_URL, else '' (libpq then reads the PG* variables)."""
    return args.dsn or os.environ.get("DATABASE_URL", "")


def connect(args: argparse.Namespace, *, check: bool = True) -> psycopg.Connection:
    try:
        conn = psycopg.connect(conninfo(args), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
        raise CliError(f"cannot connect to the database: {first}", EXIT_DATABASE) from None
    if check:
        try:
            check_version(conn)
        except SchemaVersionError as exc:
            conn.close()
            raise CliError(str(exc), EXIT_SCHEMA) from None
    return conn


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-11-01 or 2026-11-01T00:00:00Z)"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"time {text!r} has no time zone; add one, e.g. {text}+00:00"
        )
    return value


def _db_call(fn: Callable[[], Any]) -> Any:
    """Run a database call, turning the errors users cause into one-line CliErrors."""
    try:
        return fn()
    except psycopg.errors.NoDataFound as exc:
        raise CliError(_message(exc), EXIT_NOT_FOUND) from None
    except (psycopg.errors.DataException, psycopg.errors.InvalidParameterValue) as exc:
        raise CliError(_message(exc), EXIT_INPUT) from None
    except psycopg.OperationalError as exc:
        raise CliError(f"database error: {_message(exc)}", EXIT_DATABASE) from None


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag.message_primary if exc.diag else None
    return (diag or str(exc)).removeprefix("active_series: ")


def cmd_install(args: argparse.Namespace) -> int:
    try:
        version = install(conninfo(args))
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot connect to the database: {_message(exc)}", EXIT_DATABASE) from None
    except SchemaVersionError as exc:
        raise CliError(str(exc), EXIT_SCHEMA) from None
    print(f"active_series {version} installed")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = _db_call(
            lambda: conn.execute(
                "SELECT organization_id, problem, detail FROM active_series.verify(%s)",
                (args.organization,),
            ).fetchall()
        )
    for org, problem, detail in rows:
        print(f"organization {org}: {problem}: {detail}")
    if rows:
        print(f"{len(rows)} problem(s) found", file=sys.stderr)
        return EXIT_FAILURE
    print("healthy: cache and history match a from-scratch recomputation")
    return EXIT_OK


def cmd_count(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        if args.window_from is None and args.window_to is None:
            value = _db_call(
                lambda: conn.execute(
                    "SELECT active_series.period_usage(%s, %s)", (args.organization, args.period)
                ).fetchone()
            )
        elif args.window_from is None or args.window_to is None:
            raise CliError("--from and --to go together", EXIT_INPUT)
        else:
            value = _db_call(
                lambda: conn.execute(
                    "SELECT active_series.count_active(%s, %s, %s, %s)",
                    (args.organization, args.window_from, args.window_to, args.visibility),
                ).fetchone()
            )
    print(value[0])
    return EXIT_OK


def cmd_usage(args: argparse.Namespace) -> int:
    query = (
        "SELECT organization_id, organization_name, plan, stripe_customer_id, period_start,"
        " period_end, active_series, private_series, public_series FROM active_series.usage"
    )
    params: tuple[Any, ...] = ()
    if args.organization is not None:
        query += " WHERE organization_id = %s"
        params = (args.organization,)
    with connect(args) as conn:
        cur = conn.execute(query + " ORDER BY organization_id", params)
        names = [c.name for c in cur.description or []]
        rows = cur.fetchall()
    if args.organization is not None and not rows:
        raise CliError(f"organization {args.organization} does not exist", EXIT_NOT_FOUND)
    if args.json:
        print(json.dumps([dict(zip(names, row, strict=True)) for row in rows], default=str))
    else:
        _print_table(names, rows)
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        conn.add_notice_handler(lambda d: print(d.message_primary, file=sys.stderr))
        _db_call(lambda: conn.execute("CALL active_series.backfill(%s)", (args.batch_size,)))
    return EXIT_OK


def cmd_stripe_emulator(args: argparse.Namespace) -> int:
    from active_series import stripe_emulator

    return stripe_emulator.main(args.emulator_args)


def _relay_config(args: argparse.Namespace) -> Any:
    from active_series.relay import RelayConfig

    api_key = os.environ.get("STRIPE_API_KEY", "")
    if not api_key:
        raise CliError("STRIPE_API_KEY is not set (the Stripe secret key)", EXIT_USAGE)
    for name in ("poll_interval", "debounce", "rate_limit", "grace", "stripe_timeout"):
        if getattr(args, name, 0) < 0:
            raise CliError(f"--{name.replace('_', '-')} must not be negative", EXIT_INPUT)
    return RelayConfig(
        dsn=conninfo(args),
        api_key=api_key,
        api_base=args.stripe_api_base,
        meter_event_name=args.meter_event_name,
        poll_interval=getattr(args, "poll_interval", 5.0),
        debounce=getattr(args, "debounce", 0.2),
        rate_limit=args.rate_limit,
        grace=args.grace,
        metrics_port=getattr(args, "metrics_port", 0),
        max_network_retries=args.max_network_retries,
        stripe_timeout=args.stripe_timeout,
        retry_min=getattr(args, "retry_min", 1.0),
        retry_max=getattr(args, "retry_max", 300.0),
        reconnect_delay=getattr(args, "reconnect_delay", 1.0),
        shutdown_timeout=getattr(args, "shutdown_timeout", 30.0),
        sync_subscriptions=not getattr(args, "no_subscription_periods", False),
        once=getattr(args, "once", False),
    )


def _relay_errors(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except SchemaVersionError as exc:
        raise CliError(str(exc), EXIT_SCHEMA) from None
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot connect to the database: {_message(exc)}", EXIT_DATABASE) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from active_series.relay import Worker

    cfg = _relay_config(args)
    return _relay_errors(lambda: Worker(cfg).run())


def cmd_close_period(args: argparse.Namespace) -> int:
    from active_series.relay import close_periods

    cfg = _relay_config(args)
    claims = _relay_errors(lambda: close_periods(cfg, args.organization))
    print(f"{claims} organization(s) checked for periods to close")
    return EXIT_OK


def cmd_relay_status(args: argparse.Namespace) -> int:
    from active_series import queries

    return _relay_table(args, queries.RELAY_STATUS)


def cmd_relay_failures(args: argparse.Namespace) -> int:
    from active_series import queries

    return _relay_table(args, queries.RELAY_FAILURES)


def _relay_table(args: argparse.Namespace, query: str) -> int:
    params: tuple[Any, ...] = ()
    if args.organization is not None:
        query += " WHERE organization_id = %s"
        params = (args.organization,)
    with connect(args) as conn:
        cur = conn.execute(query + " ORDER BY organization_id", params)
        names = [c.name for c in cur.description or []]
        rows = cur.fetchall()
    if args.json:
        print(json.dumps([dict(zip(names, row, strict=True)) for row in rows], default=str))
    else:
        _print_table(names, rows)
    return EXIT_OK


def cmd_relay_resume(args: argparse.Namespace) -> int:
    from active_series import queries

    with connect(args) as conn:
        row = _db_call(lambda: conn.execute(queries.RELAY_RESUME, (args.organization,)).fetchone())
    was_parked = bool(row and row[0])
    print(
        f"organization {args.organization}: "
        + ("resumed" if was_parked else "was not parked; a relay pass is queued")
    )
    return EXIT_OK


def _print_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="active-series",
        description="Exact monthly-active time-series billing on PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"active-series {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dsn",
        help="libpq connection string or URI (default: DATABASE_URL, then PG* variables)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "install", parents=[common], help="install or upgrade the schema over a connection"
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser(
        "verify", parents=[common], help="compare cache and history with a recomputation"
    )
    p.add_argument("--organization", type=int, help="only this organization id")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "count",
        parents=[common],
        help="exact count of a period, or series whose last_seen is in a window",
    )
    p.add_argument("--organization", type=int, required=True)
    p.add_argument("--period", type=parse_time, help="period start (default: the current one)")
    p.add_argument("--from", dest="window_from", type=parse_time, help="window start")
    p.add_argument("--to", dest="window_to", type=parse_time, help="window end (exclusive)")
    p.add_argument("--visibility", choices=["public", "private"])
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("usage", parents=[common], help="current period usage per organization")
    p.add_argument("--organization", type=int)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser(
        "backfill", parents=[common], help="rebuild cache and history from existing metrics"
    )
    p.add_argument("--batch-size", type=int, default=500, help="reports per committed batch")
    p.set_defaults(func=cmd_backfill)

    stripe_opts = argparse.ArgumentParser(add_help=False)
    stripe_opts.add_argument(
        "--stripe-api-base",
        default="https://api.stripe.com",
        metavar="URL",
        help="Stripe API base URL (default: Stripe's; e.g. a local emulator)",
    )
    stripe_opts.add_argument(
        "--meter-event-name", default="active_series", help="the meter's event name"
    )
    stripe_opts.add_argument(
        "--rate-limit", type=float, default=25.0, help="Stripe requests per second (0: no limit)"
    )
    stripe_opts.add_argument(
        "--grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a period this long after its end (default 300)",
    )
    stripe_opts.add_argument(
        "--max-network-retries",
        type=int,
        default=2,
        help="retries of the Stripe SDK for 5xx, timeouts and connection errors",
    )
    stripe_opts.add_argument(
        "--stripe-timeout", type=float, default=30.0, help="seconds per Stripe request"
    )

    p = sub.add_parser(
        "worker",
        parents=[common, stripe_opts],
        help="relay active-series counts to Stripe (STRIPE_API_KEY from the environment)",
    )
    p.add_argument("--poll-interval", type=float, default=5.0, help="seconds between polls")
    p.add_argument(
        "--debounce", type=float, default=0.2, help="seconds to let a burst of changes settle"
    )
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: off)")
    p.add_argument("--retry-min", type=float, default=1.0, help="first per-organization backoff")
    p.add_argument("--retry-max", type=float, default=300.0, help="longest backoff")
    p.add_argument(
        "--reconnect-delay", type=float, default=1.0, help="first database reconnect backoff"
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds to finish in-flight work after SIGTERM/SIGINT",
    )
    p.add_argument(
        "--no-subscription-periods",
        action="store_true",
        help="do not take billing periods from the Stripe subscriptions",
    )
    p.add_argument("--once", action="store_true", help="drain the work due now and exit")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "close-period",
        parents=[common, stripe_opts],
        help="post final values and close the billing periods past end + grace",
    )
    p.add_argument("--organization", type=int, help="only this organization id")
    p.set_defaults(func=cmd_close_period)

    p = sub.add_parser("relay", help="inspect and steer the Stripe relay")
    relay_sub = p.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    for name, func, text in (
        ("status", cmd_relay_status, "per billed organization: usage vs what Stripe holds"),
        ("failures", cmd_relay_failures, "parked organizations and refused posts"),
    ):
        rp = relay_sub.add_parser(name, parents=[common], help=text)
        rp.add_argument("--organization", type=int)
        rp.add_argument("--json", action="store_true", help="print JSON")
        rp.set_defaults(func=func)
    rp = relay_sub.add_parser(
        "resume", parents=[common], help="resume a parked organization after the fix"
    )
    rp.add_argument("--organization", type=int, required=True)
    rp.set_defaults(func=cmd_relay_resume)

    p = sub.add_parser(
        "stripe-emulator",
        help="serve a local Stripe emulator (see its --help)",
        add_help=False,
    )
    p.add_argument("emulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_stripe_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"active-series: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
