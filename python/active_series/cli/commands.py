"""What each ``active-series`` command does, once :mod:`.parser` has parsed it.

Every command that talks to a database reads its connection from ``--dsn``, else
``DATABASE_URL``, else the standard libpq variables (``PGHOST``, ``PGPORT``, ``PGUSER``,
...). Expected failures raise :class:`~active_series.errors.CommandError` with one line
and an exit code; :func:`active_series.cli.main` prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from active_series.cli import alerts
from active_series.cli import queries as q
from active_series.cli.output import Progress, output, print_table, to_json
from active_series.errors import CommandError, ExitCode
from active_series.install import (
    InstallError,
    InstallPermissionError,
    SchemaVersionError,
    check_attached,
    check_version,
    install_or_upgrade,
    install_plpython,
)
from active_series.text import first_line, major_units, money, pg_message

if TYPE_CHECKING:
    from active_series.relay import RelayConfig


#: Who may run a command (``command_needs`` of each parser): named in the one-line error when the
#: database refuses the command's role a privilege (exit 3, as a refused login).
OWNER: Final = "the owner of schema active_series (the role that installed it) or a superuser"
ADMIN: Final = "active_series_admin"
WORKER: Final = "active_series_worker or active_series_admin"
READER: Final = "active_series_reader or active_series_admin"
READ: Final = "active_series_reader, active_series_worker or active_series_admin"


def conninfo(args: argparse.Namespace) -> str:
    """--dsn, else DATABASE_URL, else '' (libpq then reads the PG* variables); a connection
    string libpq cannot parse is refused (exit 3) before anything connects."""
    dsn: str = args.dsn or os.environ.get("DATABASE_URL", "")
    try:
        options = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise malformed(first_line(exc)) from None
    for name in INTEGER_OPTIONS:  # libpq checks them only when it connects
        for part in str(options.get(name, "")).split(","):
            if part.strip() and not part.strip().lstrip("-").isdigit():
                raise malformed(f'invalid integer value "{part}" for connection option "{name}"')
    return dsn


#: The libpq connection options that take whole numbers.
INTEGER_OPTIONS: Final = (
    "port",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)


def malformed(detail: str) -> CommandError:
    return CommandError(
        f"malformed connection string (--dsn or DATABASE_URL): {detail}", ExitCode.DATABASE
    )


def denied(args: argparse.Namespace, detail: str) -> CommandError:
    """The command's role lacks a privilege: one line that says which role the command
    needs, then ``detail`` (what was refused)."""
    name = getattr(args, "command_name", None) or getattr(args, "command", None) or "it"
    needs = getattr(args, "command_needs", None)
    if needs is None:
        return CommandError(f"permission denied: {detail}", ExitCode.DATABASE)
    return CommandError(f"permission denied: {name} needs {needs} ({detail})", ExitCode.DATABASE)


def refused_privilege(args: argparse.Namespace, exc: psycopg.Error) -> CommandError:
    """:func:`denied` for a privilege the database refused."""
    return denied(args, f"the database said: {pg_message(exc)}")


def connect(
    args: argparse.Namespace, *, check: bool = True, attached: bool = True
) -> psycopg.Connection:
    """A connection to the database of ``args``; with ``check``, refused (exit 4) unless the
    schema is this program's version and, with ``attached``, tables are attached."""
    try:
        conn = psycopg.connect(conninfo(args), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise unreachable(exc) from None
    if check:
        try:
            check_version(conn)
            if attached:
                check_attached(conn)
        except SchemaVersionError as exc:
            conn.close()
            raise CommandError(str(exc), ExitCode.SCHEMA) from None
        except BaseException:
            conn.close()
            raise
    return conn


def unreachable(exc: psycopg.Error) -> CommandError:
    return CommandError(f"cannot connect to the database: {pg_message(exc)}", ExitCode.DATABASE)


def _db_call(fn: Callable[[], Any]) -> Any:
    """Run a database call, turning the errors users cause into one-line CommandErrors."""
    try:
        return fn()
    except psycopg.errors.NoDataFound as exc:
        raise CommandError(pg_message(exc), ExitCode.NOT_FOUND) from None
    except (psycopg.errors.DataException, psycopg.errors.InvalidParameterValue) as exc:
        raise CommandError(pg_message(exc), ExitCode.INPUT) from None
    except psycopg.OperationalError as exc:
        raise CommandError(f"database error: {pg_message(exc)}", ExitCode.DATABASE) from None


def cmd_install(args: argparse.Namespace) -> int:
    try:
        found, version = install_or_upgrade(conninfo(args))
        optional = install_plpython(conninfo(args), args.plpython)
    except psycopg.OperationalError as exc:
        raise unreachable(exc) from None
    except InstallPermissionError as exc:
        raise denied(args, str(exc)) from None
    except InstallError as exc:
        raise CommandError(str(exc), ExitCode.SCHEMA) from None
    if found is None:
        done = f"active_series {version} installed"
    elif found == version:
        done = f"active_series is already installed at version {version}"
    else:
        done = f"active_series upgraded from {found} to {version}"
    print(done + (f"; {optional}" if optional else ""))
    return ExitCode.OK


def cmd_verify(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = _db_call(lambda: conn.execute(q.VERIFY, (args.organization,)).fetchall())
    for org, problem, detail in rows:
        print(f"organization {org}: {problem}: {detail}")
    if rows:
        print(f"{len(rows)} problem(s) found", file=sys.stderr)
        return ExitCode.FAILURE
    print("healthy: cache and history match a from-scratch recomputation")
    return ExitCode.OK


def cmd_count(args: argparse.Namespace) -> int:
    window = args.window_from is not None or args.window_to is not None
    if args.period is not None and window:
        raise CommandError(
            "--period (a billing period) and --from/--to (a window) exclude each other",
            ExitCode.USAGE,
        )
    if window and (args.window_from is None or args.window_to is None):
        raise CommandError("--from and --to go together", ExitCode.INPUT)
    with connect(args) as conn:
        if window:
            params = (args.organization, args.window_from, args.window_to, args.visibility)
            value = _db_call(lambda: conn.execute(q.COUNT_ACTIVE, params).fetchone())[0]
        elif args.period is not None:  # a time that starts no period is bad input (exit 6)
            value = _period(conn, args.organization, args.period)[2]
        else:
            row = _db_call(lambda: conn.execute(q.PERIOD_USAGE, (args.organization,)).fetchone())
            value = row[0]
    print(value)
    return ExitCode.OK


def cmd_usage(args: argparse.Namespace) -> int:
    if (args.period is not None or args.history) and args.organization is None:
        raise CommandError("--period and --history need --organization", ExitCode.USAGE)
    with connect(args) as conn:
        if args.history:
            cur = _db_call(lambda: conn.execute(q.PERIODS, {"org": args.organization}))
            names = [c.name for c in cur.description or []]
            rows = cur.fetchall()
        elif args.period is not None:
            start, end, count = _period(conn, args.organization, args.period)
            names = ["organization_id", "period_start", "period_end", "active_series"]
            rows = [(args.organization, start, end, count)]
        else:
            names, rows = _by_organization(conn, q.USAGE, args.organization)
            if args.organization is not None and not rows:
                raise CommandError(
                    f"organization {args.organization} does not exist", ExitCode.NOT_FOUND
                )
            names, rows = _amounts(names, rows, args.json)
    output(args.json, names, rows)
    return ExitCode.OK


def _amounts(names: list[str], rows: list[Any], as_json: bool) -> tuple[list[str], list[Any]]:
    """The price preview's ``amount`` (Stripe's minor units) and ``currency`` columns as
    people and programs read them: in a table one column, ``31.00 USD``; in JSON
    ``amount`` in major units as an exact decimal string ("31.00"), ``currency`` (Stripe's
    lowercase code) and ``amount_minor_units`` (3100, the integer Stripe's API uses)."""
    at, cur = names.index("amount"), names.index("currency")

    def convert(row: Any) -> list[Any]:
        amount, currency = row[at], row[cur]
        priced = amount is not None and currency is not None
        values = list(row)
        if as_json:
            values[at] = major_units(amount, currency) if priced else None
            return [*values, amount]
        values[at] = money(amount, currency) if priced else None
        del values[cur]
        return values

    if as_json:
        return [*names, "amount_minor_units"], [convert(r) for r in rows]
    return [n for n in names if n != "currency"], [convert(r) for r in rows]


def cmd_alerts(args: argparse.Namespace) -> int:
    if args.poll_interval <= 0:
        raise CommandError("--poll-interval must be a positive number of seconds", ExitCode.INPUT)
    show = alerts.as_json if args.json else alerts.as_text
    with connect(args) as conn:
        if args.organization is not None:  # (an unknown organization is an error)
            _db_call(lambda: conn.execute(q.USAGE_SUMMARY, (args.organization,)))
        rows = (
            alerts.follow(conn, args.after, args.organization, args.poll_interval)
            if args.follow
            else iter(alerts.since(conn, args.after, args.organization))
        )
        for alert in rows:
            print(show(alert), flush=True)
    return ExitCode.OK


def _by_organization(
    conn: psycopg.Connection[Any], query: str, org: int | None
) -> tuple[list[str], list[Any]]:
    """A view's rows (all, or one organization's) by organization id, with column names."""
    params: tuple[Any, ...] = ()
    if org is not None:
        query += " WHERE organization_id = %s"
        params = (org,)
    cur = conn.execute(query + " ORDER BY organization_id", params)
    return [c.name for c in cur.description or []], cur.fetchall()


def _period(
    conn: psycopg.Connection[Any], org: int, start: datetime | None
) -> tuple[datetime, datetime, int]:
    """(start, end, exact count) of the organization's period starting at ``start`` (None:
    the current one); a start that begins no period is bad input."""
    rows = _db_call(lambda: conn.execute(q.PERIOD, {"org": org, "start": start}).fetchall())
    if rows:
        return rows[0][0], rows[0][1], int(rows[0][2])
    starts = [r[0].isoformat() for r in conn.execute(q.RECENT_PERIOD_STARTS, (org,))]
    hint = f"; recent ones start at {', '.join(starts)}" if starts else ""
    assert start is not None
    raise CommandError(
        f"no billing period of organization {org} starts at {start.isoformat()}{hint}",
        ExitCode.INPUT,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        start, end, count = _period(conn, args.organization, args.period)
        cur = _db_call(lambda: conn.execute(q.EXPLAIN, (args.organization, start)))
        names = [c.name for c in cur.description or []]
        rows = cur.fetchall()
    if args.json:
        print(
            to_json(
                {
                    "organization_id": args.organization,
                    "period_start": start,
                    "period_end": end,
                    "active_series": count,
                    "series": [dict(zip(names, row, strict=True)) for row in rows],
                }
            )
        )
        return ExitCode.OK
    print(
        f"organization {args.organization}, period {start.isoformat()} .. {end.isoformat()}:"
        f" {count} active series"
    )
    if rows:
        print_table(names, rows)
    return ExitCode.OK


def cmd_backfill(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr)
    with connect(args) as conn:
        conn.add_notice_handler(lambda d: progress.notice(d.message_primary or ""))
        try:
            _db_call(lambda: conn.execute(q.BACKFILL, (args.batch_size,)))
        finally:
            progress.finish()
    return ExitCode.OK


# ---------------------------------------------------------------- the relay


# imported when used: the relay needs the stripe SDK, which the other commands do not
def _relay_config(args: argparse.Namespace) -> RelayConfig:
    from active_series.relay import RelayConfig

    api_key = os.environ.get("STRIPE_API_KEY", "")
    if not api_key:
        raise CommandError(
            "STRIPE_API_KEY is not set (export the Stripe secret key)", ExitCode.STRIPE_KEY
        )
    for name in (
        "poll_interval",
        "watch_interval",
        "debounce",
        "rate_limit",
        "grace",
        "invoice_grace",
        "confirm_after",
        "stripe_timeout",
    ):
        if getattr(args, name, 0) < 0:
            raise CommandError(f"--{name.replace('_', '-')} must not be negative", ExitCode.INPUT)
    if getattr(args, "watch_interval", 0.05) <= 0:
        raise CommandError("--watch-interval must be positive", ExitCode.INPUT)
    if args.invoice_grace < args.grace:
        raise CommandError("--invoice-grace must not be shorter than --grace", ExitCode.INPUT)
    if args.concurrency < 1:
        raise CommandError("--concurrency must be at least 1", ExitCode.INPUT)
    return RelayConfig(
        dsn=conninfo(args),
        api_key=api_key,
        api_base=args.stripe_api_base,
        meter_event_name=args.meter_event_name,
        meter_customer_key=args.meter_customer_key,
        meter_value_key=args.meter_value_key,
        poll_interval=getattr(args, "poll_interval", 5.0),
        watch_interval=getattr(args, "watch_interval", 0.05),
        debounce=getattr(args, "debounce", 0.05),
        rate_limit=args.rate_limit,
        grace=args.grace,
        invoice_grace=args.invoice_grace,
        confirm_after=args.confirm_after,
        concurrency=args.concurrency,
        api=args.api,
        metrics_port=getattr(args, "metrics_port", 0),
        max_network_retries=args.max_network_retries,
        stripe_timeout=args.stripe_timeout,
        retry_min=getattr(args, "retry_min", 1.0),
        retry_max=getattr(args, "retry_max", 300.0),
        reconnect_delay=getattr(args, "reconnect_delay", 1.0),
        shutdown_timeout=getattr(args, "shutdown_timeout", 30.0),
        sync_subscriptions=not getattr(args, "no_subscription_periods", False),
        subscription_recheck=getattr(args, "subscription_recheck", 3600.0),
        post_before_subscription=getattr(args, "post_before_subscription", False),
        once=getattr(args, "once", False),
    )


def _relay_errors(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except SchemaVersionError as exc:
        raise CommandError(str(exc), ExitCode.SCHEMA) from None
    except psycopg.OperationalError as exc:
        raise unreachable(exc) from None


def _require_relay_rights(args: argparse.Namespace) -> None:
    """Refuse, with the role needed, a role that may not run the relay: the worker would
    otherwise retry the refused call for ever, as it retries a database that is down. An
    unreachable database or a schema not installed is left to the relay to handle."""
    try:
        conn = psycopg.connect(conninfo(args), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        return
    with conn:
        row = conn.execute(q.RELAY_ALLOWED).fetchone()
    if row is not None and row[0] is False:
        raise denied(args, "the role may not execute active_series._relay_work")


def cmd_worker(args: argparse.Namespace) -> int:
    from active_series.relay import Worker

    cfg = _relay_config(args)
    _require_relay_rights(args)
    return _relay_errors(lambda: Worker(cfg).run())


def cmd_close_period(args: argparse.Namespace) -> int:
    from active_series.relay import close_periods

    cfg = _relay_config(args)
    _require_relay_rights(args)
    claims = _relay_errors(lambda: close_periods(cfg, args.organization))
    print(f"{claims} organization(s) checked for periods to close")
    return ExitCode.OK


def cmd_relay_status(args: argparse.Namespace) -> int:
    return _relay_view(args, q.RELAY_STATUS)


def cmd_relay_failures(args: argparse.Namespace) -> int:
    return _relay_view(args, q.RELAY_FAILURES)


def _relay_view(args: argparse.Namespace, query: str) -> int:
    with connect(args) as conn:
        names, rows = _by_organization(conn, query, args.organization)
    output(args.json, names, rows)
    return ExitCode.OK


def cmd_relay_resume(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        row = _db_call(lambda: conn.execute(q.RELAY_RESUME, (args.organization,)).fetchone())
    was_parked = bool(row and row[0])
    print(
        f"organization {args.organization}: "
        + ("resumed" if was_parked else "was not parked; a relay pass is queued")
    )
    return ExitCode.OK
