"""The ``active-series`` command line: its options, and which command each one runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

from active_series import __version__
from active_series.cli import commands as c
from active_series.cli import model, stripe_setup

# where other distributions (and active_series.devtools) add commands: a function that
# takes the subparsers and adds its own, each with func=handler(args) -> exit code
COMMANDS_GROUP = "active_series.commands"


def _integer(text: str, what: str, bits: int) -> int:
    """A whole number within the range of the SQL integer type it is passed as (a larger one
    would make psycopg send numeric, and no function takes that)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a whole number: {text!r}") from None
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise argparse.ArgumentTypeError(f"{what} is out of range ({bits}-bit integer): {text}")
    return value


def organization_id(text: str) -> int:
    """An organization id (bigint); unknown ones are the database's to report."""
    return _integer(text, "an organization id", 64)


def alert_id(text: str) -> int:
    return _integer(text, "an alert id", 64)


def batch_size(text: str) -> int:
    """Reports per backfill batch (integer); the procedure rejects values below 1."""
    return _integer(text, "the batch size", 32)


def parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-11-01, 2026-11-01T05:00:00+02:00)"
        ) from None
    if value.tzinfo is None:  # billing periods are UTC
        value = value.replace(tzinfo=UTC)
    return value


def _organization(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument(
        "--organization",
        type=organization_id,
        required=required,
        help=None if required else "only this organization id",
    )


def _period(p: argparse.ArgumentParser, text: str = "period start (default: current)") -> None:
    p.add_argument("--period", type=parse_time, metavar="START", help=text)


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _command(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    text: str,
    *parents: Any,
    needs: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand; ``needs``: the roles that may run it (named when a privilege is refused)."""
    p: argparse.ArgumentParser = sub.add_parser(name, parents=list(parents), help=text)
    p.set_defaults(func=func, command_name=name, command_needs=needs)
    return p


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

    p = _command(
        sub,
        "install",
        c.cmd_install,
        "install or upgrade the schema over a connection",
        common,
        needs=c.OWNER,
    )
    p.add_argument(
        "--with-plpython",
        dest="plpython",
        action="store_const",
        const="yes",
        default="auto",
        help="also install the PL/Python function stripe_reconcile, or fail "
        "(default: install it when plpython3u is available and we may create it)",
    )
    p.add_argument(
        "--without-plpython",
        dest="plpython",
        action="store_const",
        const="no",
        help="do not install the PL/Python functions",
    )

    p = _command(
        sub,
        "create-model",
        model.cmd_create_model,
        "create the reference data model as your own tables, attached",
        common,
        needs=c.OWNER,
    )
    p.add_argument(
        "--schema",
        default="active_series",
        help="the schema to create it in (default: %(default)s)",
    )

    p = _command(
        sub, "attach", model.cmd_attach, "start tracking on your own tables", common, needs=c.OWNER
    )
    p.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="ROLE=TABLE",
        help=f"the table playing ROLE, one of {', '.join(model.ROLES)} (variant optional)",
    )
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="ROLE.COLUMN=NAME",
        help="your column holding a role's value where its name differs, e.g. "
        "report.created=created_at (empty NAME: the table has none)",
    )

    _command(sub, "detach", model.cmd_detach, "stop tracking on your tables", common, needs=c.OWNER)

    p = _command(
        sub,
        "verify",
        c.cmd_verify,
        "compare cache and history with a recomputation",
        common,
        needs=c.ADMIN,
    )
    _organization(p)

    p = _command(
        sub,
        "count",
        c.cmd_count,
        "exact count of a period, or series whose last_seen is in a window",
        common,
        needs=c.READ,
    )
    _organization(p, required=True)
    _period(p)
    p.add_argument("--from", dest="window_from", type=parse_time, help="window start")
    p.add_argument("--to", dest="window_to", type=parse_time, help="window end (exclusive)")
    p.add_argument("--visibility", choices=["public", "private"])

    p = _command(
        sub,
        "usage",
        c.cmd_usage,
        "usage per organization: the current period, a past one, or every one",
        common,
        needs=c.READ,
    )
    _organization(p)
    _period(p, "the period starting at START")
    p.add_argument("--history", action="store_true", help="every period of the organization")
    _json(p)

    p = _command(
        sub,
        "alerts",
        c.cmd_alerts,
        "threshold alerts, one per line (--follow: and each new one as it is written)",
        common,
        needs=c.READER,
    )
    _organization(p)
    p.add_argument("--follow", action="store_true", help="keep printing new alerts")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--after", type=alert_id, default=0, metavar="ID", help="only alerts after this id"
    )
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds (with --follow)")

    p = _command(
        sub,
        "explain",
        c.cmd_explain,
        "the series a period's bill is made of (project, testbed, benchmark, measure)",
        common,
        needs=c.READER,
    )
    _organization(p, required=True)
    _period(p)
    _json(p)

    p = _command(
        sub,
        "backfill",
        c.cmd_backfill,
        "rebuild cache and history from existing metrics",
        common,
        needs=c.ADMIN,
    )
    p.add_argument("--batch-size", type=batch_size, default=500, help="reports per committed batch")

    # the Stripe account and the meter: the worker's, close-period's and stripe setup's
    meter_opts = argparse.ArgumentParser(add_help=False)
    meter_opts.add_argument(
        "--stripe-api-base",
        default="https://api.stripe.com",
        metavar="URL",
        help="Stripe API base URL (default: Stripe's; e.g. a local emulator)",
    )
    meter_opts.add_argument(
        "--meter-event-name", default="active_series", help="the meter's event name"
    )
    meter_opts.add_argument(
        "--meter-customer-key",
        default="stripe_customer_id",
        metavar="KEY",
        help="the payload key of the customer id, as the meter's customer_mapping names it"
        " (default stripe_customer_id)",
    )
    meter_opts.add_argument(
        "--meter-value-key",
        default="value",
        metavar="KEY",
        help="the payload key of the value, as the meter's value_settings name it (default value)",
    )
    stripe_opts = argparse.ArgumentParser(add_help=False, parents=[meter_opts])
    stripe_opts.add_argument(
        "--rate-limit", type=float, default=25.0, help="Stripe requests per second (0: no limit)"
    )
    stripe_opts.add_argument(
        "--grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="post a period's final value this long after its end (default 300)",
    )
    stripe_opts.add_argument(
        "--invoice-grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="post corrections to an ended period until this long after its end, then record "
        "differences in billing_drift (default 3600: Stripe's default invoice grace)",
    )
    stripe_opts.add_argument(
        "--confirm-after",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="read what Stripe holds (the meter's event summary) this long after a post, "
        "before relay_status says in_sync; a difference read then is posted again "
        "(default 5; Stripe's summaries lag behind its events). --once and close-period "
        "wait for the reads of their own posts: up to this, plus the reads' pace under "
        "--rate-limit, plus 5 s",
    )
    stripe_opts.add_argument(
        "--concurrency",
        type=int,
        default=8,
        metavar="N",
        help="organizations with a Stripe call in flight at once (default 8)",
    )
    stripe_opts.add_argument(
        "--api",
        choices=("v1", "v2-stream"),
        default="v1",
        help="v1: one meter event per request (default); v2-stream: meter event streams, "
        "100 events per request, refusals read back from the Events API",
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

    p = _command(
        sub,
        "worker",
        c.cmd_worker,
        "relay active-series counts to Stripe (STRIPE_API_KEY from the environment)",
        common,
        stripe_opts,
        needs=c.WORKER,
    )
    p.add_argument("--poll-interval", type=float, default=5.0, help="seconds between polls")
    p.add_argument(
        "--watch-interval",
        type=float,
        default=0.05,
        help="seconds between looks at the outbox for new changes (ingest sends no NOTIFY)",
    )
    p.add_argument(
        "--debounce",
        type=float,
        default=0.05,
        help="drains start at most this often (seconds): a change after a quiet spell is"
        " posted at once, changes within this of the last drain are posted together",
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
    p.add_argument(
        "--subscription-recheck",
        type=float,
        default=3600.0,
        help="seconds between reads of a customer's subscriptions (a cancellation is seen"
        " within this long; a period's end is seen at once)",
    )
    p.add_argument(
        "--post-before-subscription",
        action="store_true",
        help="post the periods that ended before the customer's subscription began"
        " (by default they are finalized unposted: no invoice bills them)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="drain the work due now, wait for Stripe's event summaries to confirm what it"
        " posted (see --confirm-after), and exit",
    )

    p = _command(
        sub,
        "close-period",
        c.cmd_close_period,
        "post final values and close the billing periods past end + grace",
        common,
        stripe_opts,
        needs=c.WORKER,
    )
    _organization(p)

    p = sub.add_parser("relay", help="inspect and steer the Stripe relay")
    relay_sub = p.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    for name, func, text in (
        ("status", c.cmd_relay_status, "per billed organization: usage vs what Stripe holds"),
        ("failures", c.cmd_relay_failures, "parked organizations and refused posts"),
    ):
        rp = _command(relay_sub, name, func, text, common, needs=c.READ)
        rp.set_defaults(command_name=f"relay {name}")
        _organization(rp)
        _json(rp)
    rp = _command(
        relay_sub,
        "resume",
        c.cmd_relay_resume,
        "resume a parked organization after the fix",
        common,
        needs=c.ADMIN,
    )
    rp.set_defaults(command_name="relay resume")
    _organization(rp, required=True)

    stripe_setup.add_commands(sub, common, meter_opts, organization_id)

    # commands of the developer tools (active_series.devtools), registered by entry point
    for entry in entry_points(group=COMMANDS_GROUP):
        entry.load()(sub)
    return parser
