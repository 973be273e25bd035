"""What the operator's tools do to a live database: pg_dump and a restore into a new
database (custom and plain format, CREATE EXTENSION and plain installs, the reference model
and an application's own schema), and DROP EXTENSION.

A restore holds every row, count, history, period, billing account, ledger and outbox row,
alert and sequence position; records nothing again; and goes on exactly: the next ingest
counts once, and the worker brings Stripe to the counts without a wrong value."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import foreign_schema as app
import oracle
import psycopg
import pytest
from active_series.install import create_reference_model
from catalog import differences, dsn_snapshot
from conftest import clean_env, install_mode
from psycopg import sql
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    bill,
    mismatches,
    quiescent,
    wait_until,
    workers,
)

Conn = psycopg.Connection[Any]


class Model:
    """The data model a test writes through: the reference model or schema app."""

    def __init__(self, name: str) -> None:
        self.name = name

    def create(self, dsn: str) -> None:
        if self.name == "reference":
            create_reference_model(dsn)
        else:
            with psycopg.connect(dsn, autocommit=True) as conn:
                app.create(conn)

    def org(self, conn: Conn, name: str) -> Any:
        if self.name == "reference":
            return oracle.make_org(conn, name)
        return app.make_org(conn, name)

    def ingest(self, conn: Conn, org: Any, k: int, created: dt.datetime | None = None) -> None:
        series = [(b, m) for b in org.benchmarks for m in org.measures][: k + 1]
        testbed = org.testbeds[k % len(org.testbeds)]
        if self.name == "reference":
            with conn.transaction():
                oracle.ingest(conn, org, testbed, series, created)
        else:
            app.ingest(conn, org, testbed, series, created)

    def assert_exact(self, conn: Conn, org: Any) -> None:
        if self.name == "reference":
            oracle.assert_matches_oracle(conn, org.id)
            return
        for start, end, count in conn.execute(
            "SELECT period_start, period_end, active_series FROM active_series.periods(%s)",
            (org.id,),
        ).fetchall():
            assert count == app.oracle(conn, org.id, start, end), start
        assert oracle.verify(conn, org.id) == []


def program(pg_cluster: Any, name: str) -> str:
    """The server's own pg_dump / pg_restore / psql (its major version's)."""
    bindir = getattr(pg_cluster, "bindir", None)
    if bindir is not None and (Path(bindir) / name).exists():
        return str(Path(bindir) / name)
    found = shutil.which(name)
    assert found, f"{name} not found"
    return found


def tables(conn: Conn) -> list[str]:
    """Every table of the extension's schema and of schema app, as qualified names."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('active_series', 'app') AND c.relkind IN ('r', 'p', 'S')"
            " ORDER BY 1"
        )
    ]


def contents(dsn: str) -> dict[str, list[tuple[str, ...]]]:
    """Each table's rows and each sequence's position, as text, sorted. _meta's install
    time is left out: CREATE EXTENSION writes it anew."""
    out: dict[str, list[tuple[str, ...]]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in tables(conn):
            if name == "active_series._meta":
                query = sql.SQL("SELECT version FROM active_series._meta")
            elif conn.execute(
                "SELECT relkind = 'S' FROM pg_class WHERE oid = %s::regclass", (name,)
            ).fetchone() == (True,):
                query = sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(name))
            else:
                query = sql.SQL("SELECT t::text FROM {} AS t").format(sql.SQL(name))
            out[name] = sorted(tuple(str(v) for v in row) for row in conn.execute(query))
    return out


@pytest.mark.parametrize("fmt", ["custom", "plain"])
@pytest.mark.parametrize("mode", ["extension", "plain"])
@pytest.mark.parametrize("model", ["reference", "app"])
def test_a_restored_dump_is_identical_and_goes_on_exactly(
    request: pytest.FixtureRequest,
    pg_cluster: Any,
    new_empty_db: Callable[[], str],
    relay_emulator: Emulator,
    tmp_path: Path,
    fmt: str,
    mode: str,
    model: str,
) -> None:
    if mode == "extension":
        request.getfixturevalue("extension_files")
    emu, m = relay_emulator, Model(model)
    source, restored = new_empty_db(), new_empty_db()
    install_mode(source, mode)
    m.create(source)
    with psycopg.connect(source, autocommit=True) as conn:
        billed, free = m.org(conn, "billed"), m.org(conn, "free")
        customer = emu.customer("billed")
        bill(conn, billed.id, customer)
        conn.execute("SELECT active_series.set_alert(%s, 2)", (billed.id,))
        conn.execute("SELECT active_series.set_series_cap(%s, 1000)", (free.id,))
        conn.execute("SET active_series.allow_explicit_created = on")
        for k, month in enumerate((8, 9, 10)):
            m.ingest(conn, free, k, oracle.utc(2026, month, 3))
        conn.execute("RESET active_series.allow_explicit_created")
        # a finalized period with the value billed (the worker finalizes the others, unbilled)
        conn.execute(
            "SELECT active_series._relay_finalize_period(%s, %s, 1)",
            (free.id, oracle.utc(2026, 8)),
        )
        for k in range(3):
            m.ingest(conn, billed, k)
        worker = WorkerProcess(source, emu.url, tmp_path / "source.log", "--poll-interval", "0.2")
        with workers(worker.start()):
            wait_until(lambda: quiescent(conn), 60, "the worker to post the source's changes")
        m.ingest(conn, billed, 3)  # left in the outbox when the dump is taken
        assert conn.execute("SELECT count(*) FROM active_series._outbox").fetchone() != (0,)
        assert conn.execute("SELECT count(*) FROM active_series._ledger").fetchone() != (0,)
        assert conn.execute("SELECT count(*) FROM active_series._alert").fetchone() != (0,)
        assert conn.execute(
            "SELECT count(billed_value), count(finalized_at) FROM active_series._relay_period"
        ).fetchone() == (1, 3)

    dump = tmp_path / ("db.dump" if fmt == "custom" else "db.sql")
    subprocess.run(
        [program(pg_cluster, "pg_dump"), f"--format={fmt}", f"--file={dump}", source],
        check=True,
        env=clean_env(),
    )
    if fmt == "custom":
        restore = [program(pg_cluster, "pg_restore"), "--exit-on-error", "-d", restored, dump]
    else:
        restore = [
            program(pg_cluster, "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            restored,
            "-f",
            dump,
        ]
    subprocess.run([str(a) for a in restore], check=True, env=clean_env(), capture_output=True)

    assert contents(restored) == contents(source)
    assert differences(dsn_snapshot(restored), dsn_snapshot(source)) == []
    with psycopg.connect(restored, autocommit=True) as conn:
        assert oracle.verify(conn) == []
        before = oracle.api_period_usage(conn, billed.id, None)
        m.ingest(conn, billed, 5)  # two series new to the period
        assert oracle.api_period_usage(conn, billed.id, None) == before + 2
        m.assert_exact(conn, billed)
        m.assert_exact(conn, free)
        worker = WorkerProcess(
            restored, emu.url, tmp_path / "restored.log", "--poll-interval", "0.2"
        )
        with workers(worker.start()):
            wait_until(
                lambda: quiescent(conn) and not mismatches(conn, emu, {billed.id: customer}),
                60,
                "Stripe to hold the restored database's counts",
            )
    assert_increasing_timestamps(emu)
    identifiers = [e["identifier"] for e in emu.events()]
    assert len(identifiers) == len(set(identifiers))


def test_drop_extension_keeps_the_applications_rows_and_attach_with_backfill_recounts(
    extension_files: Path, new_empty_db: Callable[[], str]
) -> None:
    dsn = new_empty_db()
    install_mode(dsn, "extension")
    m = Model("app")
    m.create(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        org = m.org(conn, "a")
        for k in range(4):
            m.ingest(conn, org, k)
        counted = oracle.api_period_usage(conn, org.id, None)
        rows = {
            t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(t))).fetchone()
            for t in app.TABLES.values()
        }
        conn.execute("DROP EXTENSION active_series")
        assert {
            t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(t))).fetchone()
            for t in app.TABLES.values()
        } == rows
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = 'app'::regnamespace AND NOT t.tgisinternal"
        ).fetchone() == (0,)
        m.ingest(conn, org, 4)  # the application goes on without the extension
        conn.execute("CREATE EXTENSION active_series")
        app.attach_app(conn)
        conn.execute("CALL active_series.backfill()")
        assert oracle.api_period_usage(conn, org.id, None) > counted
        m.assert_exact(conn, org)
