"""Resending a post under Stripe's idempotency rules: Stripe stores the first answer to an
idempotency key, a 500 included, and replays it to every later request with that key. Each
attempt of the worker gets a fresh key, so a post whose first attempt failed goes through
later; its identifier is what keeps Stripe from counting it twice. Every call names the
pinned Stripe API version."""

from __future__ import annotations

from pathlib import Path

import pytest
from active_series.relay.stripe_api import STRIPE_API_VERSION
from oracle import ingest, make_org
from relay_harness import Emulator, WorkerProcess, bill, mismatches, quiescent, wait_until, workers

EVENTS = "/v1/billing/meter_events"


@pytest.mark.parametrize(
    ("fault", "sdk_retries", "calls"),
    [
        # a 500, stored for the key: the SDK's two retries with that key get it replayed,
        # the worker's next attempt (a new key) is executed
        ("error", "2", [500, 500, 500, 200]),
        # the event was recorded and its answer lost; without SDK retries the worker's next
        # attempt (a new key) is executed: the duplicate identifier counts as sent
        ("drop_after", "0", ["dropped", 400]),
    ],
)
def test_a_post_whose_first_attempt_failed_goes_through_on_a_later_one(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, fault: str, sdk_retries: str, calls
):
    emu = relay_emulator
    org = make_org(conn, "resent")
    cus = emu.customer("resent")
    bill(conn, org.id, cus)
    emu.ctl.add_fault(fault, 1, path_prefix=EVENTS)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    worker = WorkerProcess(
        dsn,
        emu.url,
        tmp_path / "worker.log",
        "--poll-interval",
        "0.5",
        "--retry-min",
        "0.2",
        "--retry-max",
        "1",
        "--max-network-retries",
        sdk_retries,
    )
    with workers(worker.start()):
        wait_until(
            lambda: quiescent(conn) and not mismatches(conn, emu, {org.id: cus}),
            30,
            "Stripe to hold the usage",
        )
        assert worker.alive()
    assert emu.ctl.fault_counts() == {fault: 1}
    # one event, under the ledger's identifier, although it was posted more than once
    events = emu.events(cus)
    assert [(e["value"], e["identifier"]) for e in events] == [(1, events[0]["identifier"])]
    ledger = conn.execute(
        "SELECT identifier, status, attempts FROM active_series._ledger WHERE organization_id = %s",
        (org.id,),
    ).fetchall()
    assert ledger == [(events[0]["identifier"], "sent", ledger[0][2])]
    assert ledger[0][2] >= 2
    assert [c["status"] for c in emu.ctl.calls(cus)] == calls


def test_every_call_of_the_worker_names_the_pinned_stripe_api_version(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn, "versioned")
    cus = emu.customer("versioned")
    bill(conn, org.id, cus)
    before = emu.ctl.stats()["stripe_versions"]
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    worker = WorkerProcess(dsn, emu.url, tmp_path / "worker.log", "--poll-interval", "0.5")
    with workers(worker.start()):
        wait_until(lambda: quiescent(conn) and emu.events(cus), 30, "the post")
    after = emu.ctl.stats()["stripe_versions"]
    sent = {v: n - before.get(v, 0) for v, n in after.items() if n != before.get(v, 0)}
    assert set(sent) == {STRIPE_API_VERSION}
    assert sent[STRIPE_API_VERSION] >= 2  # the subscription read and the post, at least
