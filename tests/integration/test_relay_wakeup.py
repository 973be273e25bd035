"""What wakes the worker: a new outbox row seen by its watch (ingest sends no NOTIFY), or the
poll when the watch is lost; and that no ingest commit notifies."""

from __future__ import annotations

import time
from pathlib import Path

from oracle import ingest, make_org
from relay_harness import Emulator, WorkerProcess, bill, mismatches, wait_until, workers


def test_a_commit_wakes_the_worker_through_the_watch_long_before_the_poll(
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
        assert posted[0]["wake"] == "change"
        assert [d["wake"] for d in worker.log_events("drained")] == ["start", "change"]
    assert mismatches(conn, emu, {org.id: cus}) == []


def test_with_the_watch_connection_killed_the_poll_still_relays_the_change(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn)
    cus = emu.customer()
    bill(conn, org.id, cus)
    # reconnecting the watch takes far longer than a poll: the poll must find the change
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.5", "--reconnect-delay", "60"
    )
    with workers(worker.start()):
        watching = wait_until(lambda: worker.log_events("watching"), 30, "the watch")
        wait_until(lambda: worker.log_events("drained"), 30, "the start-up drain")
        conn.execute("SELECT pg_terminate_backend(%s)", (int(watching[0]["backend_pid"]),))
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        posted = wait_until(lambda: worker.log_events("posted"), 30, "the post")
        assert posted[0]["wake"] == "poll"
        assert worker.log_events("watch_lost")
        assert len(worker.log_events("watching")) == 1
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
        assert [d["wake"] for d in worker.log_events("drained")] == ["start", "change", "change"]
    assert mismatches(conn, emu, {org.id: cus}) == []


def test_no_ingest_commit_notifies(conn, connect):
    """A transaction that NOTIFYs takes a lock shared by the whole server at commit: ingest
    commits that change a count, reach an alert threshold, or soft-delete a project send
    none (a listener on every channel the schema ever used hears nothing)."""
    listener = connect()
    for channel in ("active_series", "active_series_alert"):
        listener.execute(f"LISTEN {channel}")
    org = make_org(conn)
    conn.execute("SELECT active_series.set_alert(%s, 1)", (org.id,))
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    conn.execute(
        "UPDATE active_series.project SET deleted_at = now() WHERE id = %s", (org.project_id,)
    )
    assert conn.execute("SELECT count(*) FROM active_series._outbox").fetchone()[0] >= 2
    assert conn.execute("SELECT count(*) FROM active_series._alert").fetchone() == (1,)
    assert list(listener.notifies(timeout=1)) == []
