"""A permanent refusal parks one organization; the others go on; relay resume resumes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from active_series import cli
from oracle import ingest, make_org
from relay_harness import Emulator, WorkerProcess, bill, mismatches, wait_until, workers


def failures(conn, org: int) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT kind, reason FROM active_series.relay_failures WHERE organization_id = %s",
        (org,),
    ).fetchall()


def test_an_unknown_customer_parks_only_its_organization_until_resumed(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, capsys
):
    emu = relay_emulator
    bad, good = make_org(conn, "bad"), make_org(conn, "good")
    good_cus = emu.customer("good")
    bill(conn, bad.id, "cus_doesnotexist")
    bill(conn, good.id, good_cus)
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.5")
    with workers(worker.start()):
        ingest(conn, bad, bad.testbeds[0], [(bad.benchmarks[0], bad.measures[0])])
        ingest(conn, good, good.testbeds[0], [(good.benchmarks[0], good.measures[0])])
        wait_until(
            lambda: {k for k, _ in failures(conn, bad.id)} == {"parked", "failed_post"},
            30,
            "the bad organization to be parked",
        )
        kinds = dict(failures(conn, bad.id))
        assert "meter_event_customer_not_found" in kinds["parked"]
        assert "meter_event_customer_not_found" in kinds["failed_post"]
        wait_until(lambda: not mismatches(conn, emu, {good.id: good_cus}), 30, "good's post")
        # more changes of both: the good one is relayed, the parked one waits
        ingest(conn, good, good.testbeds[1], [(good.benchmarks[1], good.measures[1])])
        ingest(conn, bad, bad.testbeds[1], [(bad.benchmarks[1], bad.measures[1])])
        wait_until(lambda: not mismatches(conn, emu, {good.id: good_cus}), 30, "good's 2nd post")
        assert emu.events("cus_doesnotexist") == []
        # Stripe accepted the post and refused it later, in an error report naming the
        # request's idempotency key: parked once, from the report
        assert len(worker.log_events("refused_later")) == 1
        assert worker.log_events("parked") == []
        assert cli.main(["relay", "status", "--dsn", dsn, "--json"]) == 0
        status = {r["organization_id"]: r for r in json.loads(capsys.readouterr().out)}
        assert status[bad.id]["parked"] and not status[bad.id]["in_sync"]

        assert cli.main(["relay", "failures", "--dsn", dsn, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {r["organization_id"] for r in listed} == {bad.id}

        # the fix: the right customer; then resume
        bad_cus = emu.customer("bad")
        bill(conn, bad.id, bad_cus)
        assert cli.main(["relay", "resume", "--dsn", dsn, "--organization", str(bad.id)]) == 0
        assert "resumed" in capsys.readouterr().out
        wait_until(lambda: not mismatches(conn, emu, {bad.id: bad_cus}), 30, "bad's post")
        assert failures(conn, bad.id) == []

        def bad_status() -> dict[str, Any]:
            assert cli.main(["relay", "status", "--dsn", dsn, "--json"]) == 0
            rows = {r["organization_id"]: r for r in json.loads(capsys.readouterr().out)}
            return dict(rows[bad.id])

        # in sync once Stripe's event summary confirms the post
        wait_until(lambda: bad_status()["in_sync"], 30, "bad in sync, confirmed")
        status = bad_status()
        assert status["period_usage"] == 2 and status["stripe_summary"] == 2
        assert not status["parked"]
