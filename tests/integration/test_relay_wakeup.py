"""What wakes the worker: a NOTIFY after a commit, or the poll when notifications are lost."""

from __future__ import annotations

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
