"""The embedded cluster of ``active-series db start|stop|status`` (and of the demo): a local
server whose data stays in a project directory (``.active-series/db`` unless
``--data-dir``), written durably, run as the postgres user when we are root."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from active_series import __version__
from active_series.devtools.cluster import Cluster, ClusterError
from active_series.errors import CommandError, ExitCode
from active_series.install import InstallError, create_reference_model, install, install_plpython
from active_series.text import first_line, pg_message

DEFAULT_DATA_DIR = ".active-series/db"
# The embedded cluster keeps data across runs: unlike the test clusters, write it durably.
DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def data_dir(args: argparse.Namespace) -> Path:
    """--data-dir, else ACTIVE_SERIES_DATA_DIR, else .active-series/db under the current one."""
    return Path(
        args.data_dir or os.environ.get("ACTIVE_SERIES_DATA_DIR") or DEFAULT_DATA_DIR
    ).absolute()


def embedded_cluster(path: Path, port: int | None = None) -> Cluster:
    """The embedded cluster in ``path`` (run as the postgres user when we are root)."""
    try:
        return Cluster(path, port, settings=DURABLE_SETTINGS)
    except ClusterError as exc:
        raise CommandError(first_line(str(exc)), ExitCode.DATABASE) from None


def cluster_call(fn: Callable[[], Any], log_file: Path | None = None) -> Any:
    """Run a cluster operation; a failure becomes one line naming the server log."""
    try:
        return fn()
    except ClusterError as exc:
        where = f" (server log: {log_file})" if log_file and log_file.exists() else ""
        raise CommandError(first_line(str(exc)) + where, ExitCode.DATABASE) from None


def ensure_database(cluster: Cluster, dbname: str, *, with_schema: bool = True) -> str:
    """Create ``dbname`` in the cluster when missing, install the schema; return its DSN."""
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
            exists = admin.execute("SELECT FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        dsn: str = cluster.dsn(dbname)
        if with_schema:
            install(dsn)
            create_reference_model(dsn)
            install_plpython(dsn, "auto")
    except psycopg.OperationalError as exc:
        raise CommandError(
            f"cannot connect to the database: {pg_message(exc)}", ExitCode.DATABASE
        ) from None
    except InstallError as exc:
        raise CommandError(str(exc), ExitCode.SCHEMA) from None
    return dsn


# ---------------------------------------------------------------- the db commands


def start(args: argparse.Namespace) -> int:
    cluster = embedded_cluster(data_dir(args), args.port)
    cluster_call(cluster.start, cluster.log_file)
    dsn = ensure_database(cluster, args.dbname, with_schema=not args.no_install)
    schema = "" if args.no_install else f", schema active_series {__version__}"
    print(
        f"PostgreSQL running in {cluster.data_dir} (port {cluster.port}); "
        f"database {args.dbname}{schema}",
        file=sys.stderr,
    )
    print(dsn)
    return ExitCode.OK


def stop(args: argparse.Namespace) -> int:
    cluster = embedded_cluster(data_dir(args))
    if not cluster.initialized:
        print(f"no cluster in {cluster.data_dir}", file=sys.stderr)
        return ExitCode.OK
    cluster_call(cluster.stop, cluster.log_file)
    print(f"PostgreSQL in {cluster.data_dir} stopped", file=sys.stderr)
    return ExitCode.OK


def status(args: argparse.Namespace) -> int:
    cluster = embedded_cluster(data_dir(args))
    state = cluster.status()
    if not state.running:
        what = "stopped" if cluster.initialized else "no cluster"
        print(f"{what}: {cluster.data_dir} (start it: active-series db start)", file=sys.stderr)
        return ExitCode.DATABASE
    print(f"running in {cluster.data_dir}: {state}", file=sys.stderr)
    print(cluster.dsn(args.dbname))
    return ExitCode.OK
