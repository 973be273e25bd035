"""The ``active-series`` command line.

Every subcommand that talks to a database reads its connection from ``--dsn``, else
``DATABASE_URL``, else the standard libpq variables (``PGHOST``, ``PGPORT``, ``PGUSER``,
...).  ``db start|stop|status`` manage an embedded local cluster (data in
``.active-series/db`` unless ``--data-dir``).  Expected failures print one line to stderr
and exit with a distinct code (the ``EXIT_*`` constants below); no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psycopg

from active_series import __version__, alerts
from active_series.install import SchemaVersionError, check_version, install

# exit codes
EXIT_OK = 0
EXIT_FAILURE = 1  # verify found drift
EXIT_USAGE = 2  # argparse's own
EXIT_DATABASE = 3  # unreachable or refused
EXIT_SCHEMA = 4  # not installed or another version
EXIT_NOT_FOUND = 5  # unknown organization
EXIT_INPUT = 6  # bad dates or other rejected input
EXIT_STRIPE_KEY = 7  # STRIPE_API_KEY missing (worker, close-period)
EXIT_INTERRUPTED = 130  # Ctrl-C

DEFAULT_DATA_DIR = ".active-series/db"
DEFAULT_DBNAME = "active_series"
# The embedded cluster keeps data across runs: unlike the test clusters, write it durably.
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}

# -- SQL the commands send (the relay's own statements are in queries.py) ----------------
SQL_EXPLAIN = """
SELECT p.name AS project, t.name AS testbed, b.name AS benchmark, m.name AS measure,
       s.first_seen, s.last_seen
FROM active_series.period_series(%s, %s) AS s
JOIN active_series.project AS p ON p.id = s.project_id
JOIN active_series.testbed AS t ON t.id = s.testbed_id
JOIN active_series.benchmark AS b ON b.id = s.benchmark_id
JOIN active_series.measure AS m ON m.id = s.measure_id
ORDER BY p.name, t.name, b.name, m.name
"""

# the period starting at %s (NULL: the current one) with its exact count
SQL_PERIOD = """
WITH cur AS (SELECT period_start, period_end FROM active_series.current_period(%(org)s))
SELECT p.period_start, p.period_end, p.active_series
FROM active_series.periods(%(org)s) AS p
WHERE p.period_start = coalesce(%(start)s, (SELECT period_start FROM cur))
UNION ALL
SELECT c.period_start, c.period_end, 0::bigint
FROM cur AS c
WHERE coalesce(%(start)s, c.period_start) = c.period_start
    AND NOT EXISTS (SELECT FROM active_series.periods(%(org)s) AS p
                    WHERE p.period_start = c.period_start)
"""

SQL_PERIODS = """
SELECT %(org)s::bigint AS organization_id, period_start, period_end, active_series
FROM active_series.periods(%(org)s)
ORDER BY period_start
"""


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
        raise CliError(f"cannot connect to the database: {_message(exc)}", EXIT_DATABASE) from None
    if check:
        try:
            check_version(conn)
        except SchemaVersionError as exc:
            conn.close()
            raise CliError(str(exc), EXIT_SCHEMA) from None
    return conn


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
    return _first_line(diag or str(exc)).removeprefix("active_series: ")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def cmd_install(args: argparse.Namespace) -> int:
    try:
        version = install(conninfo(args))
        optional = install_plpython(conninfo(args), args.plpython)
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot connect to the database: {_message(exc)}", EXIT_DATABASE) from None
    except SchemaVersionError as exc:
        raise CliError(str(exc), EXIT_SCHEMA) from None
    print(f"active_series {version} installed" + (f"; {optional}" if optional else ""))
    return EXIT_OK


def plpython_script() -> str:
    """sql/optional/plpython.sql, shipped in the package beside the extension script."""
    from importlib import resources

    packaged = resources.files("active_series") / "sql" / "optional" / "plpython.sql"
    if packaged.is_file():
        return packaged.read_text()
    raise CliError("this installation does not ship sql/optional/plpython.sql", EXIT_SCHEMA)


def install_plpython(dsn: str, mode: str) -> str:
    """The optional PL/Python functions (stripe_reconcile, relay_now). ``mode``: "auto"
    installs them when plpython3u is available and this role may create it (or it exists),
    "yes" insists, "no" skips. Returns what was done, for the user."""
    if mode == "no":
        return ""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'plpython3u'),"
            " EXISTS (SELECT FROM pg_extension WHERE extname = 'plpython3u'),"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        ).fetchone()
        assert row is not None
        available, created, superuser = row
        if not available:
            if mode == "yes":
                raise CliError(
                    "plpython3u is not available on this server "
                    "(Debian: apt-get install postgresql-plpython3-15)",
                    EXIT_SCHEMA,
                )
            return "PL/Python functions skipped: plpython3u is not available on the server"
        if not (created or superuser) and mode == "auto":
            return "PL/Python functions skipped: creating plpython3u needs a superuser"
        try:
            with conn.transaction():
                conn.execute(plpython_script())
        except psycopg.errors.InsufficientPrivilege as exc:
            raise CliError(
                f"cannot install the PL/Python functions: {_message(exc)}", EXIT_SCHEMA
            ) from None
    return "PL/Python functions stripe_reconcile and relay_now installed"


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
    if (args.period is not None or args.history) and args.organization is None:
        raise CliError("--period and --history need --organization", EXIT_USAGE)
    with connect(args) as conn:
        if args.history:
            cur = _db_call(lambda: conn.execute(SQL_PERIODS, {"org": args.organization}))
            names = [c.name for c in cur.description or []]
            rows = cur.fetchall()
        elif args.period is not None:
            start, end, count = _period(conn, args.organization, args.period)
            names = ["organization_id", "period_start", "period_end", "active_series"]
            rows = [(args.organization, start, end, count)]
        else:
            query = (
                "SELECT u.organization_id, u.organization_name, u.plan, u.stripe_customer_id,"
                " u.period_start, u.period_end, u.active_series, u.private_series,"
                " u.public_series, s.amount, s.currency, s.series_cap, s.next_alert,"
                " s.stripe_in_sync"
                " FROM active_series.usage AS u"
                " CROSS JOIN LATERAL active_series.usage_summary(u.organization_id) AS s"
            )
            params: tuple[Any, ...] = ()
            if args.organization is not None:
                query += " WHERE u.organization_id = %s"
                params = (args.organization,)
            cur = conn.execute(query + " ORDER BY u.organization_id", params)
            names = [c.name for c in cur.description or []]
            rows = cur.fetchall()
            if args.organization is not None and not rows:
                raise CliError(f"organization {args.organization} does not exist", EXIT_NOT_FOUND)
    _output(args, names, rows)
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace) -> int:
    if args.poll_interval <= 0:
        raise CliError("--poll-interval must be a positive number of seconds", EXIT_INPUT)
    show = alerts.as_json if args.json else alerts.as_text
    with connect(args) as conn:
        if args.organization is not None:
            _db_call(
                lambda: conn.execute(
                    "SELECT * FROM active_series.usage_summary(%s)", (args.organization,)
                )
            )
        rows = (
            alerts.follow(conn, args.after, args.organization, args.poll_interval)
            if args.follow
            else iter(alerts.since(conn, args.after, args.organization))
        )
        for alert in rows:
            print(show(alert), flush=True)
    return EXIT_OK


def _period(
    conn: psycopg.Connection[Any], org: int, start: datetime | None
) -> tuple[datetime, datetime, int]:
    """(start, end, exact count) of the organization's period starting at ``start`` (None:
    the current one); a start that begins no period is bad input."""
    rows = _db_call(lambda: conn.execute(SQL_PERIOD, {"org": org, "start": start}).fetchall())
    if rows:
        return rows[0][0], rows[0][1], int(rows[0][2])
    starts = [
        r[0].isoformat()
        for r in conn.execute(
            "SELECT period_start FROM active_series.periods(%s) ORDER BY 1 DESC LIMIT 3", (org,)
        )
    ]
    hint = f"; recent ones start at {', '.join(starts)}" if starts else ""
    assert start is not None
    raise CliError(
        f"no billing period of organization {org} starts at {start.isoformat()}{hint}",
        EXIT_INPUT,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        start, end, count = _period(conn, args.organization, args.period)
        cur = _db_call(lambda: conn.execute(SQL_EXPLAIN, (args.organization, start)))
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
        return EXIT_OK
    print(
        f"organization {args.organization}, period {start.isoformat()} .. {end.isoformat()}:"
        f" {count} active series"
    )
    if rows:
        _print_table(names, rows)
    return EXIT_OK


def _output(args: argparse.Namespace, names: Sequence[str], rows: Sequence[Any]) -> None:
    if args.json:
        print(json.dumps([dict(zip(names, row, strict=True)) for row in rows], default=str))
    else:
        _print_table(names, rows)


def cmd_backfill(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr)
    with connect(args) as conn:
        conn.add_notice_handler(lambda d: progress.notice(d.message_primary or ""))
        try:
            _db_call(lambda: conn.execute("CALL active_series.backfill(%s)", (args.batch_size,)))
        finally:
            progress.finish()
    return EXIT_OK


class Progress:
    """Shows backfill's NOTICEs: a redrawn bar on a terminal, the plain lines otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.drawn = False

    def notice(self, message: str) -> None:
        text = message.removeprefix("active_series backfill: ")
        done, sep, rest = text.partition(" of ")
        total = rest.split(" ", 1)[0]
        if not (self.tty and sep and done.isdigit() and total.isdigit()):
            if self.drawn:
                self.stream.write("\n")
                self.drawn = False
            self.stream.write(f"backfill: {text}\n")
            self.stream.flush()
            return
        n, of = int(done), max(int(total), 1)
        filled = min(self.WIDTH, self.WIDTH * n // of)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\rbackfill [{bar}] {100 * n // of:3d}% {n}/{of} reports")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def data_dir(args: argparse.Namespace) -> Path:
    """--data-dir, else ACTIVE_SERIES_DATA_DIR, else .active-series/db under the current one."""
    return Path(
        args.data_dir or os.environ.get("ACTIVE_SERIES_DATA_DIR") or DEFAULT_DATA_DIR
    ).absolute()


def embedded_cluster(path: Path, port: int | None = None) -> Any:
    """The embedded cluster in ``path`` (run as the postgres user when we are root)."""
    from active_series.cluster import Cluster, ClusterError

    try:
        return Cluster(path, port, settings=DURABLE_SETTINGS)
    except ClusterError as exc:
        raise CliError(_first_line(str(exc)), EXIT_DATABASE) from None


def _cluster_call(fn: Callable[[], Any], log_file: Path | None = None) -> Any:
    from active_series.cluster import ClusterError

    try:
        return fn()
    except ClusterError as exc:
        where = f" (server log: {log_file})" if log_file and log_file.exists() else ""
        raise CliError(_first_line(str(exc)) + where, EXIT_DATABASE) from None


def ensure_database(cluster: Any, dbname: str, *, with_schema: bool = True) -> str:
    """Create ``dbname`` in the cluster when missing, install the schema; return its DSN."""
    from psycopg import sql

    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
            exists = admin.execute("SELECT FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        dsn: str = cluster.dsn(dbname)
        if with_schema:
            install(dsn)
            install_plpython(dsn, "auto")
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot connect to the database: {_message(exc)}", EXIT_DATABASE) from None
    except SchemaVersionError as exc:
        raise CliError(str(exc), EXIT_SCHEMA) from None
    return dsn


def cmd_db_start(args: argparse.Namespace) -> int:
    cluster = embedded_cluster(data_dir(args), args.port)
    _cluster_call(cluster.start, cluster.log_file)
    dsn = ensure_database(cluster, args.dbname, with_schema=not args.no_install)
    schema = "" if args.no_install else f", schema active_series {__version__}"
    print(
        f"PostgreSQL running in {cluster.data_dir} (port {cluster.port}); "
        f"database {args.dbname}{schema}",
        file=sys.stderr,
    )
    print(dsn)
    return EXIT_OK


def cmd_db_stop(args: argparse.Namespace) -> int:
    cluster = embedded_cluster(data_dir(args))
    if not cluster.initialized:
        print(f"no cluster in {cluster.data_dir}", file=sys.stderr)
        return EXIT_OK
    _cluster_call(cluster.stop, cluster.log_file)
    print(f"PostgreSQL in {cluster.data_dir} stopped", file=sys.stderr)
    return EXIT_OK


def cmd_db_status(args: argparse.Namespace) -> int:
    cluster = embedded_cluster(data_dir(args))
    status = cluster.status()
    if not status.running:
        what = "stopped" if cluster.initialized else "no cluster"
        print(f"{what}: {cluster.data_dir} (start it: active-series db start)", file=sys.stderr)
        return EXIT_DATABASE
    print(f"running in {cluster.data_dir}: {status}", file=sys.stderr)
    print(cluster.dsn(args.dbname))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from active_series import demo

    return demo.run(args)


def cmd_stripe_emulator(args: argparse.Namespace) -> int:
    from active_series import stripe_emulator

    return stripe_emulator.main(args.emulator_args)


def _relay_config(args: argparse.Namespace) -> Any:
    from active_series.relay import RelayConfig

    api_key = os.environ.get("STRIPE_API_KEY", "")
    if not api_key:
        raise CliError("STRIPE_API_KEY is not set (export the Stripe secret key)", EXIT_STRIPE_KEY)
    for name in ("poll_interval", "debounce", "rate_limit", "grace", "stripe_timeout"):
        if getattr(args, name, 0) < 0:
            raise CliError(f"--{name.replace('_', '-')} must not be negative", EXIT_INPUT)
    return RelayConfig(
        dsn=conninfo(args),
        api_key=api_key,
        api_base=args.stripe_api_base,
        meter_event_name=args.meter_event_name,
        poll_interval=getattr(args, "poll_interval", 5.0),
        debounce=getattr(args, "debounce", 0.05),
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
    p.add_argument(
        "--with-plpython",
        dest="plpython",
        action="store_const",
        const="yes",
        default="auto",
        help="also install the PL/Python functions (stripe_reconcile, relay_now), or fail "
        "(default: install them when plpython3u is available and we may create it)",
    )
    p.add_argument(
        "--without-plpython",
        dest="plpython",
        action="store_const",
        const="no",
        help="do not install the PL/Python functions",
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser(
        "verify", parents=[common], help="compare cache and history with a recomputation"
    )
    p.add_argument("--organization", type=organization_id, help="only this organization id")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "count",
        parents=[common],
        help="exact count of a period, or series whose last_seen is in a window",
    )
    p.add_argument("--organization", type=organization_id, required=True)
    p.add_argument(
        "--period", type=parse_time, metavar="START", help="period start (default: current)"
    )
    p.add_argument("--from", dest="window_from", type=parse_time, help="window start")
    p.add_argument("--to", dest="window_to", type=parse_time, help="window end (exclusive)")
    p.add_argument("--visibility", choices=["public", "private"])
    p.set_defaults(func=cmd_count)

    p = sub.add_parser(
        "usage",
        parents=[common],
        help="usage per organization: the current period, a past one, or every one",
    )
    p.add_argument("--organization", type=organization_id, help="only this organization id")
    p.add_argument(
        "--period", type=parse_time, metavar="START", help="the period starting at START"
    )
    p.add_argument("--history", action="store_true", help="every period of the organization")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser(
        "alerts",
        parents=[common],
        help="threshold alerts, one per line (--follow: and each new one as it is written)",
    )
    p.add_argument("--organization", type=organization_id, help="only this organization id")
    p.add_argument("--follow", action="store_true", help="keep printing new alerts")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--after", type=alert_id, default=0, metavar="ID", help="only alerts after this id"
    )
    p.add_argument("--poll-interval", type=float, default=5.0, help="seconds (with --follow)")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser(
        "explain",
        parents=[common],
        help="the series a period's bill is made of (project, testbed, benchmark, measure)",
    )
    p.add_argument("--organization", type=organization_id, required=True)
    p.add_argument(
        "--period", type=parse_time, metavar="START", help="period start (default: current)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "backfill", parents=[common], help="rebuild cache and history from existing metrics"
    )
    p.add_argument("--batch-size", type=batch_size, default=500, help="reports per committed batch")
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
        "--debounce", type=float, default=0.05, help="seconds to let a burst of changes settle"
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
    p.add_argument("--organization", type=organization_id, help="only this organization id")
    p.set_defaults(func=cmd_close_period)

    p = sub.add_parser("relay", help="inspect and steer the Stripe relay")
    relay_sub = p.add_subparsers(dest="relay_command", required=True, metavar="ACTION")
    for name, func, text in (
        ("status", cmd_relay_status, "per billed organization: usage vs what Stripe holds"),
        ("failures", cmd_relay_failures, "parked organizations and refused posts"),
    ):
        rp = relay_sub.add_parser(name, parents=[common], help=text)
        rp.add_argument("--organization", type=organization_id)
        rp.add_argument("--json", action="store_true", help="print JSON")
        rp.set_defaults(func=func)
    rp = relay_sub.add_parser(
        "resume", parents=[common], help="resume a parked organization after the fix"
    )
    rp.add_argument("--organization", type=organization_id, required=True)
    rp.set_defaults(func=cmd_relay_resume)

    p = sub.add_parser(
        "stripe-emulator",
        help="serve a local Stripe emulator (see its --help)",
        add_help=False,
    )
    p.add_argument("emulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_stripe_emulator)

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
    dp.set_defaults(func=cmd_db_start)
    dp = db_sub.add_parser("stop", parents=[cluster_opts], help="stop the cluster")
    dp.set_defaults(func=cmd_db_stop)
    dp = db_sub.add_parser(
        "status", parents=[cluster_opts], help="print the DSN when running (exit 3 when not)"
    )
    dp.set_defaults(func=cmd_db_status)

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
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stripe-emulator"]:  # its options, --help included, are its own
        from active_series import stripe_emulator

        return stripe_emulator.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"active-series: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except psycopg.OperationalError as exc:
        print(f"active-series: database error: {_message(exc)}", file=sys.stderr)
        return EXIT_DATABASE
    except psycopg.Error as exc:
        print(f"active-series: {_message(exc)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
