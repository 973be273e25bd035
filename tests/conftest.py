"""Shared pytest fixtures: one PostgreSQL server per session, one fresh database per test.

Contract (other tests rely on exactly this):

- ``pg_cluster`` (session): the server. A started
  :class:`active_series.devtools.testpg.TestServer` (testing.postgresql, from its factory
  with the cached initdb; as root it runs as the ``postgres`` system user) in a temporary
  directory, stopped and deleted at session end. Its programs come from
  ``ACTIVE_SERIES_PG_BINDIR`` (default: PostgreSQL 15's), so the same suites run on another
  major version. With ``ACTIVE_SERIES_TEST_DSN`` set, an :class:`ExternalServer` for that
  server instead (same ``dsn(dbname)``; ``restart()``/``kill()`` skip the test).
- ``superuser_dsn`` (session): conninfo of the ``postgres`` maintenance database,
  as superuser.
- ``template_db`` (session): name of a template database holding the active_series
  schema, installed once with ``active_series.install.install`` (nothing else in it).
  With ``ACTIVE_SERIES_TEST_UPGRADE_FROM=<version>``, that released version is installed
  first and then upgraded, so the tests run against an upgraded schema.
- ``dsn`` (function): conninfo of a new database cloned from ``template_db``;
  dropped ``WITH (FORCE)`` after the test.
- ``conn`` (function): a ``psycopg.Connection`` to ``dsn``, ``autocommit=True``;
  closed after the test.
- ``connect`` (function): factory ``connect(**kwargs) -> psycopg.Connection`` to the
  same database as ``dsn``; ``autocommit=True`` unless given; every connection
  it made is closed after the test.

Markers: ``soak`` and ``benchmark`` (``make test`` leaves them out), ``slow``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from active_series.devtools.cluster import find_bindir
from active_series.devtools.testpg import TestServer, TestServerFactory
from active_series.install import create_reference_model, install
from psycopg import sql
from psycopg.conninfo import make_conninfo

DSN_ENV = "ACTIVE_SERIES_TEST_DSN"
UPGRADE_ENV = "ACTIVE_SERIES_TEST_UPGRADE_FROM"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long-running soak test (make soak)")
    config.addinivalue_line("markers", "benchmark: performance measurement (make bench)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_report_header(config: pytest.Config) -> str:
    """Which PostgreSQL the session's server runs (the same suites run on several)."""
    if os.environ.get(DSN_ENV):
        return f"postgresql: the external server of {DSN_ENV}"
    try:
        postgres = find_bindir() / "postgres"
        version = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        return f"postgresql: unknown ({exc})"
    return f"postgresql: {version} ({postgres})"


class ExternalServer:
    """A server someone else runs (``ACTIVE_SERIES_TEST_DSN``); it is not ours to restart."""

    def __init__(self, base_dsn: str) -> None:
        self.base_dsn = base_dsn

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(self.base_dsn, dbname=dbname)

    def is_running(self) -> bool:
        return True

    def restart(self) -> None:
        pytest.skip(f"needs a server the tests run themselves ({DSN_ENV} is set)")

    def kill(self) -> None:
        pytest.skip(f"needs a server the tests run themselves ({DSN_ENV} is set)")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pytest.skip(f"needs a server the tests run themselves ({DSN_ENV} is set)")


Server = TestServer | ExternalServer


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Server]:
    """The PostgreSQL server of this test session."""
    external = os.environ.get(DSN_ENV)
    if external:
        yield ExternalServer(external)
        return
    try:
        factory = TestServerFactory()
        server = factory()
    except RuntimeError as exc:
        pytest.exit(f"cannot start the test PostgreSQL server: {exc}", returncode=3)
    try:
        yield server
    finally:
        server.stop()
        factory.clear_cache()


@pytest.fixture(scope="session")
def superuser_dsn(pg_cluster: Server) -> str:
    """Conninfo of the ``postgres`` maintenance database (superuser)."""
    return pg_cluster.dsn("postgres")


def _admin(pg_cluster: Server, statement: sql.Composable) -> None:
    """Run one statement in the maintenance database (a fresh connection: the server
    may have been restarted by a test since the last one)."""
    with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute(statement)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def template_db(pg_cluster: Server) -> Iterator[str]:
    """A template database with the active_series schema installed, cloned by ``dsn``."""
    name = _unique("active_series_tpl")
    ident = sql.Identifier(name)
    _admin(pg_cluster, sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        upgrade_from = os.environ.get(UPGRADE_ENV)
        if upgrade_from:
            install(pg_cluster.dsn(name), upgrade_from)
        install(pg_cluster.dsn(name))
        create_reference_model(pg_cluster.dsn(name))
        # No connections from now on: CREATE DATABASE ... TEMPLATE needs it idle.
        _admin(
            pg_cluster,
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                ident
            ),
        )
        yield name
    finally:
        with contextlib.suppress(psycopg.Error):
            _admin(pg_cluster, sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
            _admin(pg_cluster, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture
def dsn(pg_cluster: Server, template_db: str) -> Iterator[str]:
    """Conninfo of a new database cloned from the template, dropped after the test."""
    name = _unique("active_series_test")
    ident = sql.Identifier(name)
    _admin(
        pg_cluster,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(template_db)),
    )
    yield pg_cluster.dsn(name)
    if not pg_cluster.is_running():  # a test killed or stopped the server: bring it back
        pg_cluster.start()
    _admin(pg_cluster, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture
def connect(dsn: str) -> Iterator[Callable[..., psycopg.Connection[Any]]]:
    """Factory of connections to the test's database (autocommit unless told otherwise)."""
    opened: list[psycopg.Connection[Any]] = []

    def _connect(**kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        connection = psycopg.connect(dsn, **kwargs)
        opened.append(connection)
        return connection

    yield _connect
    for connection in opened:
        with contextlib.suppress(Exception):
            connection.close()


@pytest.fixture
def conn(connect: Callable[..., psycopg.Connection[Any]]) -> psycopg.Connection[Any]:
    """An autocommit connection to the test's database."""
    return connect()
