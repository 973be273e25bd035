"""What wakes the worker: a NOTIFY after a commit, or the poll when notifications are lost."""

from __future__ import annotations

import time
from pathlib import Path

from oracle import ingest, make_org
from relay_harness import Emulator, WorkerProcess, bill, mismatches, wait_until, workers


def test_a_commit_wakes_the_worker_through_notify_long_before_the_poll(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", "--poll-interval", "60")
    with workers(worker.start()):
        wait_until(lambda: worker.log_events("drained"), 30, "the start-up drain")
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        posted = wait_until(lambda: worker.log_events("posted"), 30, "the post")
        assert posted[0]["wake"] == "notify"
        assert [d["wake"] for d in worker.log_events("drained")] == ["start", "notify"]
    assert mismatches(conn, emu, {org.id: cus}) == []


def test_with_the_listen_connection_killed_the_poll_still_relays_the_change(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    # reconnecting the listener takes far longer than a poll: the poll must find the change
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.5", "--reconnect-delay", "60"
    )
    with workers(worker.start()):
        listening = wait_until(lambda: worker.log_events("listening"), 30, "LISTEN")
        wait_until(lambda: worker.log_events("drained"), 30, "the start-up drain")
        conn.execute("SELECT pg_terminate_backend(%s)", (int(listening[0]["backend_pid"]),))
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        posted = wait_until(lambda: worker.log_events("posted"), 30, "the post")
        assert posted[0]["wake"] == "poll"
        assert worker.log_events("listen_lost")
        assert len(worker.log_events("listening")) == 1
    assert mismatches(conn, emu, {org.id: cus}) == []


def test_drains_start_at_most_once_per_debounce_and_a_change_after_quiet_is_posted_at_once(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    """--debounce bounds how often drains start: the changes that come within it of the last
    drain's start are posted together, in one post per customer, when it is over; a change
    after a quiet spell is posted at once, without waiting for a window."""
    window = 5.0
    emu = relay_emulator
    org = make_org(conn, testbeds=1, benchmarks=1, measures=6)
    cus = emu.customer()
    bill(conn, org.id, cus)
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "w.log", "--poll-interval", "60", "--debounce", str(window)
    )

    def series(n: int) -> None:
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], m) for m in org.measures[:n]])

    def values() -> list[int]:
        return [int(e["value"]) for e in emu.ctl.meter_events(customer=cus)]

    with workers(worker.start()):
        wait_until(lambda: worker.log_events("drained"), 30, "the start-up drain")
        time.sleep(window)  # a quiet spell
        committed = time.monotonic()
        series(1)
        wait_until(lambda: values() == [1], 30, "the first post")
        assert time.monotonic() - committed < window  # not held for a window
        # three commits right after that drain started: one post, of the last count
        for n in (2, 3, 4):
            series(n)
        wait_until(lambda: values()[-1:] == [4], 30, "the coalesced post")
        assert values() == [1, 4]
        assert [d["wake"] for d in worker.log_events("drained")] == ["start", "notify", "notify"]
    assert mismatches(conn, emu, {org.id: cus}) == []
