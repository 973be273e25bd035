"""The seed's gap: the last report of a period has its post fail and nothing follows; the
final value still reaches Stripe once the period has ended (end + grace), inside it."""

from __future__ import annotations

import time
from pathlib import Path

from oracle import ingest, make_org
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    bill,
    billing_periods,
    short_periods,
    wait_until,
    workers,
)

EVENTS = "/v1/billing/meter_events"


def current(conn, org: int):
    return conn.execute(
        "SELECT period_start, period_end, clock_timestamp() FROM active_series.current_period(%s)",
        (org,),
    ).fetchone()


def test_the_final_value_arrives_after_the_period_when_its_last_post_failed(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    short_periods(conn, org.id, 8)
    worker = WorkerProcess(
        dsn,
        emu.url,
        tmp_path / "w.log",
        "--poll-interval",
        "0.5",
        "--grace",
        "1",
        "--max-network-retries",
        "0",
        "--retry-min",
        "0.2",
        "--retry-max",
        "0.5",
    )
    with workers(worker.start()):
        # start early in a period, so that both reports land in it
        while True:
            start, end, now = current(conn, org.id)
            if (end - now).total_seconds() > 5:
                break
            time.sleep(0.2)
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        wait_until(lambda: emu.events(cus), 30, "the first post")
        emu.ctl.add_fault("error", count=100000, path_prefix=EVENTS)
        ingest(conn, org, org.testbeds[1], [(org.benchmarks[1], org.measures[1])])
        assert current(conn, org.id)[0] == start
        # the post of the last report fails, and no report follows
        wait_until(lambda: worker.log_events("post_failed"), 30, "the failing post")
        wait_until(
            lambda: (current(conn, org.id)[2] - end).total_seconds() > 2, 30, "the period end"
        )
        assert emu.last_value(cus, start, end) == 1
        emu.ctl.clear_faults()
        wait_until(lambda: emu.last_value(cus, start, end) == 2, 30, "the final value")
        closed = wait_until(
            lambda: conn.execute(
                "SELECT closed_at FROM active_series._period"
                " WHERE organization_id = %s AND period_start = %s",
                (org.id, start),
            ).fetchone()[0],
            30,
            "the period to close",
        )
    final = [e for e in emu.events(cus) if e["value"] == 2]
    assert len(final) == 1
    assert start.timestamp() <= final[0]["timestamp"] < end.timestamp()
    assert final[0]["received_at"] >= end.timestamp()
    assert closed >= end
    assert_increasing_timestamps(emu, billing_periods(conn, {org.id: cus}))
