"""Two workers at once: never two concurrent Stripe calls for one customer; killing one,
the other carries on."""

from __future__ import annotations

import random
import time
from pathlib import Path

from oracle import ingest, make_org
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    bill,
    billing_periods,
    mismatches,
    quiescent,
    wait_until,
    workers,
)


def test_two_workers_never_overlap_calls_for_a_customer_and_survive_a_kill(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    # every meter event takes 0.3 s: two calls for one customer would overlap
    emu.ctl.random_failures(
        1.0, seed=3, kinds=["timeout"], timeout_seconds=0.3, path_prefix="/v1/billing/meter_events"
    )
    orgs = [make_org(conn, f"o{i}", benchmarks=4, measures=4) for i in range(6)]
    billed = {}
    for org in orgs:
        billed[org.id] = emu.customer(f"o{org.id}")
        bill(conn, org.id, billed[org.id])
    args = ("--poll-interval", "0.5", "--debounce", "0")
    a = WorkerProcess(dsn, emu.url, tmp_path / "a.log", *args).start()
    b = WorkerProcess(dsn, emu.url, tmp_path / "b.log", *args).start()
    rng = random.Random(5)
    series = [(bm, ms) for bm in orgs[0].benchmarks for ms in orgs[0].measures]
    with workers(a, b):
        for step in range(40):
            org = rng.choice(orgs)
            pick = rng.sample(range(len(series)), 2)
            pairs = [(org.benchmarks[i // 4], org.measures[i % 4]) for i in pick]
            ingest(conn, org, rng.choice(org.testbeds), pairs)
            time.sleep(0.1)
            if step == 20:
                a.kill()
                killed_at = len(emu.events())
        wait_until(lambda: quiescent(conn) and not mismatches(conn, emu, billed), 90, "quiescence")
        assert b.alive()
    assert mismatches(conn, emu, billed) == []
    concurrency = emu.ctl.concurrency()
    assert concurrency["violations"] == 0, concurrency
    assert max(concurrency["max_in_flight"].values()) == 1
    # both worked before the kill; the survivor posted after it
    assert a.log_events("posted") and b.log_events("posted")
    assert len(emu.events()) > killed_at
    assert_increasing_timestamps(emu, billing_periods(conn, billed))
