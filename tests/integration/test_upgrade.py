"""Upgrade safety: a released version, upgraded with its data, is this version exactly.

Every released version (its frozen script, ``sql/releases/``) is installed with data, both
as a plain install and with CREATE EXTENSION, then upgraded to this version (the package's
upgrade scripts, or ALTER EXTENSION ... UPDATE). Afterwards:

- the catalog equals a fresh install's, object for object (tests/integration/catalog.py);
- every count, history row and last_seen equals the oracle's, before and after more ingest;
- the work queued before the upgrade reaches Stripe through the worker;
- the CLI and the worker refuse a database of another version, with a clear message.

``make test`` also runs part of the suite against a template upgraded from the oldest
release (``ACTIVE_SERIES_TEST_UPGRADE_FROM``, tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from active_series import __version__
from active_series.install import (
    SchemaVersionError,
    available_versions,
    create_reference_model,
    install,
    installed_version,
    upgrade_path,
)
from catalog import differences, dsn_snapshot
from conftest import REPO, install_mode
from oracle import (
    Org,
    allow_explicit_created,
    assert_matches_oracle,
    ingest,
    make_entities,
    make_org,
    make_project,
    one,
    verify,
)
from psycopg import sql
from relay_harness import (
    Emulator,
    WorkerProcess,
    bill,
    mismatches,
    quiescent,
    short_periods,
    wait_until,
    workers,
)
from test_cli import run

RELEASES = sorted(available_versions() - {__version__})


def test_every_frozen_release_is_shipped_and_has_an_upgrade_path() -> None:
    frozen = {
        p.name[len("active_series--") : -len(".sql")] for p in (REPO / "sql/releases").glob("*.sql")
    }
    assert frozen, "no released version in sql/releases"
    assert frozen - {__version__} == set(RELEASES)
    for version in RELEASES:
        assert upgrade_path(version), version


def series(org: Org, first: int, last: int) -> list[tuple[int, int]]:
    every = [(b, m) for b in org.benchmarks for m in org.measures]
    return every[first:last]


@dataclass
class Loaded:
    monthly: list[Org]  # calendar-month periods: checked against the oracle
    moved: Org  # a moved billing period
    billed: Org  # Stripe-billed, on 4-second periods


def load(conn: psycopg.Connection[Any], customer: str) -> Loaded:
    """Data written through the old version: months of history with measure sets that grow
    and shrink (cache, series outside their benchmark's set, history, counts), a soft-deleted
    project, a moved billing period, and a billed organization on short periods with ended
    periods whose final values are still to be posted."""
    now = one(conn, "SELECT date_trunc('second', clock_timestamp())")
    allow_explicit_created(conn)
    history = make_org(conn, "history", testbeds=2, benchmarks=3, measures=4)
    for days, first, last in [(75, 0, 5), (45, 2, 9), (44, 0, 3), (12, 4, 12), (0, 1, 3)]:
        at = now - dt.timedelta(days=days)
        ingest(conn, history, history.testbeds[days % 2], series(history, first, last), at)
    mixed = make_org(conn, "mixed", visibility="public")
    gone = Org(mixed.id, make_project(conn, mixed.id, "gone", "private"), [], [], [])
    gone.testbeds = make_entities(conn, "testbed", gone.project_id, 1)
    gone.benchmarks = make_entities(conn, "benchmark", gone.project_id, 2)
    gone.measures = make_entities(conn, "measure", gone.project_id, 2)
    for days in (40, 1):
        at = now - dt.timedelta(days=days)
        ingest(conn, mixed, mixed.testbeds[1], series(mixed, 0, 4), at)
        ingest(conn, gone, gone.testbeds[0], series(gone, 0, 3), at)
    conn.execute(
        "UPDATE active_series.project SET deleted_at = now() WHERE id = %s", (gone.project_id,)
    )

    moved = make_org(conn, "moved")
    for days in (50, 20, 3):
        at = now - dt.timedelta(days=days)
        ingest(conn, moved, moved.testbeds[0], series(moved, 0, days // 5), at)
    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (moved.id, now - dt.timedelta(days=40), now - dt.timedelta(days=26)),
    )
    conn.execute("RESET active_series.allow_explicit_created")

    billed = make_org(conn, "billed")
    bill(conn, billed.id, customer)
    start = short_periods(conn, billed.id, 4)
    allow_explicit_created(conn)
    for k in (1, 2, 4):
        at = start + dt.timedelta(seconds=4 * k + 1)
        ingest(conn, billed, billed.testbeds[k % 2], series(billed, 0, k + 2), at)
    conn.execute("RESET active_series.allow_explicit_created")
    ingest(conn, billed, billed.testbeds[0], series(billed, 3, 7))
    return Loaded([history, mixed], moved, billed)


def assert_exact(conn: psycopg.Connection[Any], data: Loaded) -> None:
    """The oracle for calendar-month organizations; for all, the caches equal a
    from-scratch recomputation (verify)."""
    for org in data.monthly:
        assert_matches_oracle(conn, org.id)
    assert verify(conn) == []


def reads(conn: psycopg.Connection[Any], data: Loaded) -> dict[int, list[Any]]:
    """What the public API answers for each organization, in the columns every version has:
    periods with their counts and series (first and last activity in each), and each
    series' last_seen. (Series written before variants existed are their benchmarks' empty
    variants.)"""
    out = {}
    for org in [*data.monthly, data.moved, data.billed]:
        rows = conn.execute("SELECT * FROM active_series.periods(%s)", (org.id,)).fetchall()
        out[org.id] = [
            (
                *row,
                sorted(
                    conn.execute(
                        "SELECT project_id, testbed_id, benchmark_id, measure_id, first_seen,"
                        " last_seen FROM active_series.period_series(%s, %s)",
                        (org.id, row[0]),
                    ).fetchall()
                ),
            )
            for row in rows
        ]
        out[org.id].append(
            sorted(
                conn.execute(
                    "SELECT project_id, testbed_id, benchmark_id, measure_id, last_seen"
                    " FROM active_series.series_last_seen WHERE organization_id = %s",
                    (org.id,),
                ).fetchall()
            )
        )
    return out


def install_old(dsn: str, version: str, mode: str) -> None:
    if mode == "plain":
        assert install(dsn, version) == version
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE EXTENSION active_series VERSION {}").format(sql.Literal(version))
            )
    with psycopg.connect(dsn) as conn:
        assert installed_version(conn) == version


def fresh(dsn: str, mode: str) -> None:
    """A fresh install with the reference model (what an upgraded 0.3.0 database holds)."""
    install_mode(dsn, mode)
    create_reference_model(dsn)


@pytest.fixture(params=["plain", "extension"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "extension":
        request.getfixturevalue("extension_files")
    return str(request.param)


@pytest.mark.slow
@pytest.mark.parametrize("old", RELEASES)
def test_an_upgraded_database_equals_a_fresh_install_and_keeps_its_data_exact(
    old: str,
    mode: str,
    new_empty_db: Callable[[], str],
    relay_emulator: Emulator,
    tmp_path: Path,
) -> None:
    emu = relay_emulator
    customer = emu.customer("billed")
    upgraded, reference = new_empty_db(), new_empty_db()
    install_old(upgraded, old, mode)
    with psycopg.connect(upgraded, autocommit=True) as conn:
        data = load(conn, customer)
        assert_exact(conn, data)
        before = reads(conn, data)
        queued = one(conn, "SELECT count(*) FROM active_series._outbox")
        assert queued > 0

    assert install(upgraded) == __version__
    fresh(reference, mode)
    assert differences(dsn_snapshot(upgraded), dsn_snapshot(reference)) == []

    with psycopg.connect(upgraded, autocommit=True) as conn:
        assert reads(conn, data) == before
        assert one(conn, "SELECT count(*) FROM active_series._outbox") == queued
        assert_exact(conn, data)
        # ingest goes on through the new version's triggers
        history, mixed = data.monthly
        ingest(conn, history, history.testbeds[1], series(history, 0, 12))
        ingest(conn, mixed, mixed.testbeds[0], series(mixed, 2, 6))
        ingest(conn, data.moved, data.moved.testbeds[1], series(data.moved, 0, 2))
        ingest(conn, data.billed, data.billed.testbeds[1], series(data.billed, 5, 9))
        assert_exact(conn, data)

        # what was queued before the upgrade, and since, reaches Stripe
        worker = WorkerProcess(
            upgraded, emu.url, tmp_path / "worker.log", "--grace", "1", "--poll-interval", "0.5"
        ).start()
        billed = {data.billed.id: customer}
        with workers(worker):
            wait_until(
                lambda: quiescent(conn) and not mismatches(conn, emu, billed),
                60,
                "Stripe to hold every period's usage",
            )
            assert worker.alive()


@pytest.mark.parametrize("old", RELEASES)
def test_the_cli_and_the_worker_refuse_an_old_schema_until_it_is_upgraded(
    old: str, empty_dsn: str, tmp_path: Path
) -> None:
    install_old(empty_dsn, old, "plain")
    for command in (["count", "--organization", "1"], ["worker", "--once"]):
        proc = run(*command, "--dsn", empty_dsn, env={"STRIPE_API_KEY": "sk_test_x"})
        assert proc.returncode == 4, proc.stderr
        # (the worker logs its start first)
        errors = [x for x in proc.stderr.splitlines() if not x.startswith("ts=")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        line = errors[0]
        assert line.startswith("active-series: "), line
        assert f"active_series {old}" in line and __version__ in line, line
        assert "active-series install" in line, line

    upgraded = run("install", "--dsn", empty_dsn)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"active_series upgraded from {old} to {__version__}" in upgraded.stdout
    assert run("usage", "--dsn", empty_dsn).returncode == 0


@pytest.mark.parametrize("old", RELEASES)
def test_concurrent_upgrades_run_once(old: str, new_empty_db: Callable[[], str]) -> None:
    upgraded, reference = new_empty_db(), new_empty_db()
    install_old(upgraded, old, "plain")
    results: list[object] = []

    def upgrade() -> None:
        try:
            results.append(install(upgraded))
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [__version__] * 3
    fresh(reference, "plain")
    assert differences(dsn_snapshot(upgraded), dsn_snapshot(reference)) == []


def test_the_relays_period_state_moves_out_of_the_period_rows_with_its_values(
    mode: str, new_empty_db: Callable[[], str]
) -> None:
    """0.3.0 kept what the relay did with a period in columns of _period; 0.4.0 keeps it in
    _relay_period: the upgrade carries closed, finalized (billed or not) and drifting
    periods over exactly, and the views read them as before."""
    upgraded = new_empty_db()
    install_old(upgraded, "0.3.0", mode)
    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with psycopg.connect(upgraded, autocommit=True) as conn:
        org = make_org(conn, "billed")
        bill(conn, org.id, "cus_upgraded")
        allow_explicit_created(conn)
        for k, month in enumerate((1, 2, 3, 4)):
            when = dt.datetime(2026, month, 3, tzinfo=dt.UTC)
            ingest(conn, org, org.testbeds[0], series(org, 0, k + 1), when)
        months = [dt.datetime(2026, m, 1, tzinfo=dt.UTC) for m in (1, 2, 3, 4)]
        values = [
            # (closed, finalized, billed, drift since)
            (at, at, 1, None),  # finalized as billed
            (at, at + dt.timedelta(hours=1), 5, at + dt.timedelta(hours=2)),  # drifting
            (at, at, None, None),  # finalized unbilled
        ]
        for start, (closed, final, billed, drift) in zip(months, values, strict=False):
            conn.execute(
                "UPDATE active_series._period SET closed_at = %s, finalized_at = %s,"
                " billed_value = %s, drift_since = %s"
                " WHERE organization_id = %s AND period_start = %s",
                (closed, final, billed, drift, org.id, start),
            )
        conn.execute(
            "UPDATE active_series._period SET closed_at = %s"
            " WHERE organization_id = %s AND period_start = %s",
            (at, org.id, months[3]),
        )
        drift_before = conn.execute("SELECT * FROM active_series.billing_drift").fetchall()
        assert len(drift_before) == 1

    assert install(upgraded) == __version__
    with psycopg.connect(upgraded, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT period_start, closed_at, finalized_at, billed_value, drift_since"
            " FROM active_series._relay_period WHERE organization_id = %s ORDER BY 1",
            (org.id,),
        ).fetchall()
        assert rows == [
            (start, *v) for start, v in zip(months, [*values, (at, None, None, None)], strict=True)
        ]
        assert conn.execute("SELECT * FROM active_series.billing_drift").fetchall() == drift_before
        assert (
            one(
                conn,
                "SELECT count(*) FROM pg_attribute"
                " WHERE attrelid = 'active_series._period'::regclass"
                " AND attname IN ('closed_at', 'finalized_at', 'billed_value', 'drift_since')"
                " AND NOT attisdropped",
            )
            == 0
        )


def test_install_never_downgrades(dsn: str) -> None:
    for old in RELEASES:
        with pytest.raises(
            SchemaVersionError, match=f"has active_series {__version__}.*no upgrade path"
        ):
            install(dsn, old)
    with psycopg.connect(dsn) as conn:
        assert installed_version(conn) == __version__


def test_install_refuses_a_version_it_does_not_ship(empty_dsn: str) -> None:
    with pytest.raises(SchemaVersionError, match=r"cannot install active_series 9\.9\.9"):
        install(empty_dsn, "9.9.9")
    with psycopg.connect(empty_dsn) as conn:
        assert installed_version(conn) is None
        assert one(conn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'active_series'") == 0


def test_a_running_worker_stops_when_the_schema_changes_version_under_it(
    conn: psycopg.Connection[Any], dsn: str, relay_emulator: Emulator, tmp_path: Path
) -> None:
    org = make_org(conn, "billed")
    bill(conn, org.id, relay_emulator.customer("billed"))
    worker = WorkerProcess(
        dsn, relay_emulator.url, tmp_path / "worker.log", "--poll-interval", "0.5"
    ).start()
    with workers(worker):
        ingest(conn, org, org.testbeds[0], series(org, 0, 2))
        wait_until(lambda: quiescent(conn), 30, "the first count to be relayed")
        # what an upgrade by a newer release looks like to this program
        conn.execute("UPDATE active_series._meta SET version = '9.9.9'")
        assert worker.proc is not None
        assert worker.proc.wait(30) == 4
    [mismatch] = worker.log_events("schema_mismatch")
    assert "active_series 9.9.9" in mismatch["error"], mismatch
    assert worker.log_events("stop")
