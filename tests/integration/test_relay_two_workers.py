"""Two workers at once: never two concurrent Stripe calls for one customer; killing one,
the other carries on."""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg
from oracle import ingest, make_org
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    assert_one_call_per_customer,
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
    # the killed worker's customer waits for its call's deadline (3 x 2 x 2 s + 6.5 s)
    args = ("--poll-interval", "0.5", "--debounce", "0", "--stripe-timeout", "2")
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


def test_a_call_cut_off_by_a_restart_keeps_every_worker_off_its_customer_until_its_deadline(
    conn, dsn, pg_cluster, relay_emulator: Emulator, tmp_path: Path
):
    """The server restarts (as at a failover) while a worker's call is in flight: the claim's
    row lock is gone, but the call goes on. No worker, the caller included, calls for that
    customer again before the deadline the post's ledger row holds; then it is resent."""
    emu = relay_emulator
    org = make_org(conn, "cut", benchmarks=2, measures=2)
    customer = emu.customer("cut")
    bill(conn, org.id, customer)
    # the first post takes 4 s; one attempt takes at most 2 x 5 s (connect, read), so its
    # deadline is 5 + 10 s after its ledger row is written
    emu.ctl.delay_next(1, 4.0, path_prefix="/v1/billing/meter_events")
    args = ("--poll-interval", "0.5", "--debounce", "0", "--reconnect-delay", "0.1")
    args += ("--stripe-timeout", "5", "--max-network-retries", "0")
    procs = [WorkerProcess(dsn, emu.url, tmp_path / f"{n}.log", *args) for n in "ab"]
    with workers(*procs):
        for proc in procs:
            proc.start()
        wait_until(lambda: all(p.log_events("watching") for p in procs), 30, "two workers")
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        wait_until(lambda: any(c["finish"] is None for c in emu.ctl.calls(customer)), 30)
        pg_cluster.restart()
        with psycopg.connect(dsn, autocommit=True) as after:
            wait_until(lambda: quiescent(after) and not mismatches(after, emu, {org.id: customer}))
            # every call ends while its worker lives (killed, a call would count as abandoned)
            wait_until(lambda: all(c["finish"] is not None for c in emu.ctl.calls(customer)))
            assert all(p.alive() for p in procs)
            ledger = after.execute(
                "SELECT status, in_flight_until, in_flight_on FROM active_series._ledger"
                " WHERE organization_id = %s",
                (org.id,),
            ).fetchall()
    assert_one_call_per_customer(emu)
    assert len(emu.ctl.calls(customer)) >= 2  # the call cut off, then the resend
    waited = [e for p in procs for e in p.log_events("call_in_flight_elsewhere")]
    assert waited, "no worker saw the call in flight"
    assert ledger == [("sent", None, None)]
