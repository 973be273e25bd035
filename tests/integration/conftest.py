"""Fixtures of the integration tests beyond tests/conftest.py.

- ``new_empty_db`` (function): factory ``new_empty_db() -> conninfo`` of a new database
  without the active_series schema (from template0); every one is dropped after the test.
- ``empty_dsn`` (function): one such database.
- ``extension_files`` (session): ``make install`` run once, so that CREATE EXTENSION and
  ALTER EXTENSION ... UPDATE find every version's scripts; skips the test where the server
  is not ours or its share directory is not writable.
- ``relay_emulator`` (function): the Stripe emulator (relay_harness).
- ``login`` (function): factory ``login(group) -> conninfo`` of a new LOGIN member of
  ``active_series_<group>`` (``None``: of no group); dropped after the test.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from active_series.devtools.testpg import TestServer
from active_series.install import install
from psycopg import sql
from psycopg.conninfo import make_conninfo
from relay_harness import relay_emulator  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    """The environment without the variables of an enclosing make or virtualenv."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_ok(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a program; fail the test with its output unless it exits 0."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=clean_env(), check=False, **kwargs
    )
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def new_empty_db(pg_cluster: Any, superuser_dsn: str) -> Iterator[Callable[[], str]]:
    """Factory of new databases without the active_series schema."""
    names: list[str] = []

    def create() -> str:
        name = f"active_series_empty_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(superuser_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        names.append(name)
        return str(pg_cluster.dsn(name))

    yield create
    with psycopg.connect(superuser_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def empty_dsn(new_empty_db: Callable[[], str]) -> str:
    """A new database without the active_series schema."""
    return new_empty_db()


@pytest.fixture(scope="session")
def extension_files(pg_cluster: Any) -> Path:
    """The server's extension directory, after ``make install`` of this tree."""
    if not isinstance(pg_cluster, TestServer):
        pytest.skip("make install places files for a local server; the test server is external")
    pg_config = str(pg_cluster.bindir / "pg_config")
    if not Path(pg_config).exists():
        pg_config = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
    sharedir = Path(run_ok([pg_config, "--sharedir"]).stdout.strip()) / "extension"
    if os.geteuid() != 0 and not os.access(sharedir, os.W_OK):
        pytest.skip(f"make install needs write access to {sharedir} (run as root)")
    run_ok(["make", "--no-print-directory", "-C", str(REPO), "install", f"PG_CONFIG={pg_config}"])
    return sharedir


def install_mode(dsn: str, mode: str) -> None:
    """The active_series schema in ``dsn``: ``plain`` (active-series install) or
    ``extension`` (CREATE EXTENSION: the extension_files fixture first)."""
    if mode == "plain":
        install(dsn)
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION active_series")


@pytest.fixture
def login(pg_cluster: Any, dsn: str) -> Iterator[Callable[[str], str]]:
    """``login(group)`` -> conninfo of a new LOGIN role that is a member of
    ``active_series_<group>`` (``None``: of no group). Dropped after the test."""
    made: list[str] = []

    def _login(group: str | None) -> str:
        name = f"as_{group or 'nobody'}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            made.append(name)
            if group is not None:
                admin.execute(
                    sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(f"active_series_{group}"), sql.Identifier(name)
                    )
                )
        return make_conninfo(dsn, user=name)

    yield _login
    with psycopg.connect(dsn, autocommit=True) as admin:
        for name in made:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
