"""The seed's gap: the last report of a period has its post fail and nothing follows; the
final value still reaches Stripe once the period has ended (end + grace), inside it."""

from __future__ import annotations

import datetime as dt
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
                "SELECT closed_at FROM active_series._relay_period"
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


def test_changes_in_the_last_hour_of_a_period_are_posted_as_they_come_in_its_first_half_hour(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    """The period's tail (its last hour) runs at half speed: a change in it is posted at once,
    at most one every two seconds, with a timestamp in the tail's first half, so the second
    half stays free for the final post and the corrections after the period ends. A monthly
    customer reporting at 23:30 on the month's last day is billed at once, not at 00:05."""
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    # four-hour periods, the current one ending in 20 minutes: 40 minutes into its tail
    now = conn.execute("SELECT date_trunc('second', clock_timestamp())").fetchone()[0]
    end = now + dt.timedelta(minutes=20)
    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (org.id, end - dt.timedelta(hours=4), end),
    )
    start, period_end, _ = current(conn, org.id)
    assert period_end == end
    tail = int(end.timestamp()) - 3600
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.5")
    with workers(worker.start()):
        for i in range(3):
            ingest(
                conn,
                org,
                org.testbeds[0],
                [(org.benchmarks[j], org.measures[0]) for j in range(i + 1)],
            )
            wait_until(
                lambda n=i + 1: emu.last_value(cus, start, end) == n, 30, f"the post of {i + 1}"
            )
    events = emu.events(cus)
    assert [e["value"] for e in events] == [1, 2, 3]
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(set(stamps))
    for e in events:
        # posted as it came, at the tail's half-speed time, in the tail's first half
        assert tail <= e["timestamp"] < tail + 1800
        assert e["timestamp"] <= tail + (e["received_at"] - tail) / 2
    assert stamps[0] >= tail + (2400 - 5) // 2
