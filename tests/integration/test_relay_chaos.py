"""Chaos: random ingest while the worker is SIGKILLed and restarted at random moments,
Stripe fails a third of the calls, and the database restarts once. At quiescence every
(customer, period) is exact: none under-billed.

``make test`` runs a short round; ``ACTIVE_SERIES_CHAOS_SECONDS`` (``make soak``) a longer one.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from oracle import ingest, make_org
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    bill,
    mismatches,
    quiescent,
    short_periods,
    wait_until,
    workers,
)

EVENTS = "/v1/billing/meter_events"
KINDS = ["error", "rate_limit", "drop_before", "drop_after", "timeout", "timeout_after"]


def ingest_randomly(dsn: str, orgs: list[Any], stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = psycopg.connect(dsn, autocommit=True)
            org = rng.choice(orgs)
            pairs = {(rng.choice(org.benchmarks), rng.choice(org.measures)) for _ in range(3)}
            ingest(conn, org, rng.choice(org.testbeds), sorted(pairs))
        except psycopg.OperationalError:
            conn = None
            time.sleep(0.2)
        time.sleep(rng.uniform(0.02, 0.2))
    if conn is not None:
        conn.close()


def unclosed_ended(conn, grace: float) -> int:
    return conn.execute(
        "SELECT count(*) FROM active_series._period WHERE closed_at IS NULL"
        " AND period_end + make_interval(secs => %s) < clock_timestamp()",
        (grace,),
    ).fetchone()[0]


def run_chaos(dsn, pg_cluster, emu: Emulator, tmp_path: Path, seconds: float) -> None:
    rng = random.Random(2026)
    with psycopg.connect(dsn, autocommit=True) as setup:
        orgs = [make_org(setup, f"o{i}", testbeds=3, benchmarks=5, measures=4) for i in range(5)]
        billed = {}
        for org in orgs[:4]:
            billed[org.id] = emu.customer()
            bill(setup, org.id, billed[org.id])
        for org in orgs[:2]:
            short_periods(setup, org.id, 7)  # periods end (and must close) during the chaos
    grace = 1.0
    emu.ctl.random_failures(0.35, seed=9, kinds=KINDS, timeout_seconds=1.5, path_prefix=EVENTS)
    args = (
        "--poll-interval",
        "1",
        "--grace",
        str(grace),
        "--debounce",
        "0.05",
        "--stripe-timeout",
        "1",
        "--max-network-retries",
        "1",
        "--retry-min",
        "0.2",
        "--retry-max",
        "2",
        "--reconnect-delay",
        "0.2",
    )
    worker = WorkerProcess(dsn, emu.url, tmp_path / "worker.log", *args)
    stop = threading.Event()
    ingester = threading.Thread(target=ingest_randomly, args=(dsn, orgs, stop, 1))
    kills = 0
    with workers(worker):
        worker.start()
        ingester.start()
        try:
            deadline = time.monotonic() + seconds
            restarted = False
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(0.3, 2.0))
                worker.kill()
                kills += 1
                worker.start()
                if not restarted and time.monotonic() > deadline - seconds / 2:
                    time.sleep(1.0)  # the worker is running: it loses its connections
                    pg_cluster.restart()
                    restarted = True
            # the seed's gap: the last report of a period has its post fail, none follows
            with psycopg.connect(dsn, autocommit=True) as last:
                emu.ctl.add_fault("error", count=4, path_prefix=EVENTS)
                org = orgs[0]
                ingest(last, org, org.testbeds[0], [(org.benchmarks[4], org.measures[3])])
        finally:
            stop.set()
            ingester.join()
        emu.ctl.random_failures(0)
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_until(
                lambda: (
                    quiescent(conn)
                    and unclosed_ended(conn, grace) == 0
                    and not mismatches(conn, emu, billed)
                ),
                120,
                "quiescence",
            )
            assert mismatches(conn, emu, billed) == []
            closed = conn.execute(
                "SELECT count(*) FROM active_series._period WHERE closed_at IS NOT NULL"
            ).fetchone()[0]
    assert kills >= 20
    assert restarted
    assert closed >= 4
    faults = emu.ctl.fault_counts()
    requests = emu.ctl.stats()["requests"].get(EVENTS, 0)
    injected = sum(
        faults.get(k, 0)
        for k in ("error", "rate_limit", "drop_before", "drop_after", "timeout", "timeout_after")
    )
    assert injected >= 0.25 * requests, (faults, requests)
    assert_increasing_timestamps(emu)


def test_stripe_ends_exact_through_kills_faults_and_a_database_restart(
    dsn, pg_cluster, relay_emulator: Emulator, tmp_path: Path
):
    run_chaos(dsn, pg_cluster, relay_emulator, tmp_path, seconds=50)


@pytest.mark.soak
def test_soak_chaos(dsn, pg_cluster, relay_emulator: Emulator, tmp_path: Path):
    seconds = float(os.environ.get("ACTIVE_SERIES_CHAOS_SECONDS", "600"))
    run_chaos(dsn, pg_cluster, relay_emulator, tmp_path, seconds=seconds)
