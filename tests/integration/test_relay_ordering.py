"""Per customer and billing period, Stripe receives strictly increasing timestamps, each
inside the period of its value; a new period is posted while the ended one is still in its
grace, and the ended one's final value comes after (``last`` aggregates per period)."""

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
    short_periods,
    wait_until,
    workers,
)


def test_timestamps_only_increase_and_stay_inside_their_periods(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    orgs = [make_org(conn, f"o{i}", benchmarks=5, measures=4) for i in range(2)]
    billed = {}
    for org in orgs:
        billed[org.id] = emu.customer()
        bill(conn, org.id, billed[org.id])
        short_periods(conn, org.id, 3)
    worker = WorkerProcess(
        dsn,
        emu.url,
        tmp_path / "w.log",
        "--poll-interval",
        "0.3",
        "--grace",
        "0.5",
        "--debounce",
        "0",
    )
    rng = random.Random(11)
    with workers(worker.start()):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            org = rng.choice(orgs)
            ingest(
                conn,
                org,
                rng.choice(org.testbeds),
                [(rng.choice(org.benchmarks), rng.choice(org.measures))],
            )
            time.sleep(0.05)
        wait_until(
            lambda: (
                quiescent(conn)
                and not conn.execute(
                    "SELECT 1 FROM active_series._period"
                    " NATURAL LEFT JOIN active_series._relay_period"
                    " WHERE closed_at IS NULL"
                    " AND period_end + interval '0.5 s' < clock_timestamp()"
                ).fetchone()
                and not mismatches(conn, emu, billed)
            ),
            60,
            "every period closed and exact",
        )
    assert mismatches(conn, emu, billed) == []
    assert_increasing_timestamps(emu, billing_periods(conn, billed))
    # every accepted event lies inside the period of the value it carries
    outside = conn.execute(
        "SELECT identifier FROM active_series._ledger"
        " WHERE status = 'sent' AND NOT (to_timestamp(event_timestamp) >= period_start"
        " AND to_timestamp(event_timestamp) < period_end)"
    ).fetchall()
    assert outside == []
    sent = conn.execute("SELECT count(*) FROM active_series._ledger WHERE status = 'sent'")
    assert sent.fetchone()[0] == len(emu.events())
    # several periods went by, each closed with its own final value
    assert len(worker.log_events("period_closed")) >= 4
