"""What each ``active-series`` command does, once :mod:`.parser` has parsed it.

Every command that talks to a database reads its connection from ``--dsn``, else
``DATABASE_URL``, else the standard libpq variables (``PGHOST``, ``PGPORT``, ``PGUSER``,
...). Expected failures raise :class:`~active_series.errors.CommandError` with one line
and an exit code; :func:`active_series.cli.main` prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from active_series.cli import alerts
from active_series.cli import queries as q
from active_series.cli.output import Progress, output, print_table
from active_series.errors import CommandError, ExitCode
from active_series.install import (
    InstallError,
    SchemaVersionError,
    check_attached,
    check_version,
    install,
    install_plpython,
)
from active_series.text import pg_message

if TYPE_CHECKING:
    from active_series.relay import RelayConfig


def conninfo(args: argparse.Namespace) -> str:
    """--dsn, else DATABASE_URL, else '' (libpq then reads the PG* variables)."""
    return args.dsn or os.environ.get("DATABASE_URL", "")


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
        version = install(conninfo(args))
        optional = install_plpython(conninfo(args), args.plpython)
    except psycopg.OperationalError as exc:
        raise unreachable(exc) from None
    except InstallError as exc:
        raise CommandError(str(exc), ExitCode.SCHEMA) from None
    print(f"active_series {version} installed" + (f"; {optional}" if optional else ""))
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
    with connect(args) as conn:
        if args.window_from is None and args.window_to is None:
            params: tuple[Any, ...] = (args.organization, args.period)
            value = _db_call(lambda: conn.execute(q.PERIOD_USAGE, params).fetchone())
        elif args.window_from is None or args.window_to is None:
            raise CommandError("--from and --to go together", ExitCode.INPUT)
        else:
            params = (args.organization, args.window_from, args.window_to, args.visibility)
            value = _db_call(lambda: conn.execute(q.COUNT_ACTIVE, params).fetchone())
    print(value[0])
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
    output(args.json, names, rows)
    return ExitCode.OK


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
            json.dumps(
                {
                    "organization_id": args.organization,
                    "period_start": start.isoformat(),
                    "period_end": end.isoformat(),
                    "active_series": count,
                    "series": [dict(zip(names, row, strict=True)) for row in rows],
                },
                default=str,
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
        poll_interval=getattr(args, "poll_interval", 5.0),
        watch_interval=getattr(args, "watch_interval", 0.05),
        debounce=getattr(args, "debounce", 0.05),
        rate_limit=args.rate_limit,
        grace=args.grace,
        invoice_grace=args.invoice_grace,
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
        once=getattr(args, "once", False),
    )


def _relay_errors(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except SchemaVersionError as exc:
        raise CommandError(str(exc), ExitCode.SCHEMA) from None
    except psycopg.OperationalError as exc:
        raise unreachable(exc) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from active_series.relay import Worker

    cfg = _relay_config(args)
    return _relay_errors(lambda: Worker(cfg).run())


def cmd_close_period(args: argparse.Namespace) -> int:
    from active_series.relay import close_periods

    cfg = _relay_config(args)
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
