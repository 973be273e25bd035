"""The worker reads the meter it posts to: at start, and when a post is refused.

A meter that does not fit (none active under the event name, a formula other than ``last``,
other payload keys than the worker's) stops the worker with one line naming what to fix and
exit code 8, before any post; a meter that stops fitting while the worker runs stops it the
same way instead of parking every organization whose post it refuses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from active_series.errors import ExitCode
from oracle import ingest, make_org
from relay_harness import (
    API_KEY,
    EVENT_NAME,
    Emulator,
    WorkerProcess,
    bill,
    mismatches,
    wait_until,
    workers,
)


def meter(emu: Emulator, event_name: str, formula: str = "last", **keys: str) -> str:
    params: dict[str, Any] = {
        "display_name": event_name,
        "event_name": event_name,
        "default_aggregation": {"formula": formula},
    }
    if "customer" in keys:
        params["customer_mapping"] = {"type": "by_id", "event_payload_key": keys["customer"]}
    if "value" in keys:
        params["value_settings"] = {"event_payload_key": keys["value"]}
    return str(emu.client.v1.billing.meters.create(params=params).id)


def usage_to_post(conn, emu: Emulator) -> tuple[Any, str]:
    """A billed organization with one series: what a worker would post at once."""
    org = make_org(conn, "billed")
    customer = emu.customer("billed")
    bill(conn, org.id, customer)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    return org, customer


def parked(conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM active_series._relay_state WHERE parked_at IS NOT NULL"
    ).fetchone()
    return int(row[0])


def error_line(worker: WorkerProcess) -> str:
    lines = [ln for ln in worker.log().splitlines() if ln.startswith("active-series: ")]
    assert len(lines) == 1, worker.log()
    return lines[0]


def ended(worker: WorkerProcess, timeout: float = 60) -> int:
    assert worker.proc is not None
    try:
        return worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not stop:\n{worker.log()}") from None


UNFIT = {
    "sum": (
        lambda emu: meter(emu, "summed", "sum"),
        "summed",
        "aggregates with sum (the worker needs last); fix: deactivate it and create a meter "
        "with formula last (active-series stripe setup)",
    ),
    "other keys": (
        lambda emu: meter(emu, "keyed", customer="customer", value="series"),
        "keyed",
        "reads the customer from payload key customer (the worker sends stripe_customer_id) "
        "and reads the value from payload key series (the worker sends value); fix: run the "
        "worker with --meter-customer-key customer and run the worker with --meter-value-key "
        "series",
    ),
    "missing": (
        lambda emu: None,
        "nowhere",
        "no active Stripe meter has the event name nowhere: create one with formula last "
        "(active-series stripe setup), or name yours with --meter-event-name",
    ),
    "inactive": (
        lambda emu: emu.client.v1.billing.meters.deactivate(meter(emu, "retired")).id,
        "retired",
        "(event retired) is inactive and takes no events: reactivate it",
    ),
}


@pytest.mark.parametrize("once", [False, True], ids=["daemon", "once"])
@pytest.mark.parametrize("case", sorted(UNFIT))
def test_a_meter_that_does_not_fit_stops_the_worker_before_any_post(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, case: str, once: bool
) -> None:
    emu = relay_emulator
    make, event_name, says = UNFIT[case]
    mid = make(emu)
    usage_to_post(conn, emu)
    options = ["--meter-event-name", event_name, "--poll-interval", "0.5"]
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", *options, *(["--once"] * once))
    with workers(worker.start()):
        assert ended(worker) == ExitCode.METER
    line = error_line(worker)
    assert says in line, line
    if mid is not None:
        assert f"the meter {mid} (event {event_name})" in line, line
    assert len(worker.log_events("meter_unfit")) == 1
    assert emu.events() == []
    assert emu.ctl.stats()["requests"].get("/v1/billing/meter_events", 0) == 0
    assert conn.execute("SELECT count(*) FROM active_series._ledger").fetchone()[0] == 0
    assert parked(conn) == 0


def test_close_period_checks_the_meter_too(
    conn, dsn, relay_emulator: Emulator, monkeypatch, capsys
) -> None:
    from active_series import cli

    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    meter(relay_emulator, "summed", "sum")
    code = cli.main(
        ["close-period", "--dsn", dsn, "--stripe-api-base", relay_emulator.url]
        + ["--meter-event-name", "summed"]
    )
    assert code == ExitCode.METER
    assert "aggregates with sum (the worker needs last)" in capsys.readouterr().err


@pytest.mark.parametrize("api", ["v1", "v2-stream"])
def test_custom_payload_keys_are_posted_under_the_meters_keys(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, capsys, api: str
) -> None:
    from active_series import cli

    emu = relay_emulator
    mid = meter(emu, "custom_keys", customer="account", value="active")
    org, customer = usage_to_post(conn, emu)
    options = [
        "--meter-event-name", "custom_keys", "--meter-customer-key", "account",
        "--meter-value-key", "active", "--api", api, "--poll-interval", "0.5",
    ]  # fmt: skip
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", *options)
    with workers(worker.start()):
        ingest(conn, org, org.testbeds[1], [(org.benchmarks[1], org.measures[1])])

        def in_sync() -> bool:
            assert cli.main(["relay", "status", "--dsn", dsn, "--json"]) == 0
            rows = json.loads(capsys.readouterr().out)
            return bool(rows) and all(r["in_sync"] for r in rows) and not parked(conn)

        wait_until(in_sync, 30, "the organization in sync")
        assert worker.alive(), worker.log()
    start, end = conn.execute(
        "SELECT period_start, period_end FROM active_series.current_period(%s)", (org.id,)
    ).fetchone()
    assert emu.ctl.aggregate(mid, customer, start.timestamp(), end.timestamp()) == 2
    events = emu.events(customer)
    assert events and all(set(e["payload"]) == {"account", "active"} for e in events)
    assert all(e["meter"] == mid for e in events)
    assert len(worker.log_events("meter_checked")) == 1


def deactivate(emu: Emulator) -> None:
    """Every post is refused from now on (archived_meter)."""
    emu.client.v1.billing.meters.deactivate(emu.meter)


def replace(emu: Emulator) -> None:
    """A meter reading another customer key takes the event name: every post is refused (no
    customer in the payload)."""
    emu.client.v1.billing.meters.deactivate(emu.meter)
    meter(emu, EVENT_NAME, customer="account")


CHANGES = {
    "deactivated": (deactivate, f"the meter {{meter}} (event {EVENT_NAME}) is inactive"),
    "replaced": (replace, "fix: run the worker with --meter-customer-key account"),
}


@pytest.mark.parametrize(
    ("api", "change"),
    [("v1", "deactivated"), ("v1", "replaced"), ("v2-stream", "deactivated")],
)
def test_a_meter_that_stops_fitting_stops_the_worker_instead_of_parking_everyone(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, api: str, change: str
) -> None:
    emu = relay_emulator
    orgs = [make_org(conn, f"org{i}") for i in range(3)]
    billed = {org.id: emu.customer(f"org{org.id}") for org in orgs}
    for org in orgs:
        bill(conn, org.id, billed[org.id])
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    options = ["--api", api, "--poll-interval", "0.5"]
    worker = WorkerProcess(dsn, emu.url, tmp_path / "w.log", *options)
    with workers(worker.start()):
        wait_until(lambda: not mismatches(conn, emu, billed), 30, "every organization posted")
        make_change, says = CHANGES[change]
        make_change(emu)
        for org in orgs:
            ingest(conn, org, org.testbeds[1], [(org.benchmarks[1], org.measures[1])])
        assert ended(worker) == ExitCode.METER
    line = error_line(worker)
    assert says.format(meter=emu.meter) in line, line
    assert len(worker.log_events("meter_unfit")) == 1
    assert worker.log_events("refused_by_meter")
    assert worker.log_events("parked") == [] and parked(conn) == 0
    refused = conn.execute(
        "SELECT count(*) FROM active_series._ledger WHERE status = 'failed'"
    ).fetchone()[0]
    assert refused >= 1

    # the fix: the meter back as it was; a worker started again posts the refused values
    if change == "replaced":
        for m in emu.client.v1.billing.meters.list(params={"status": "active"}).data:
            emu.client.v1.billing.meters.deactivate(m.id)
    emu.client.v1.billing.meters.reactivate(emu.meter)
    again = WorkerProcess(dsn, emu.url, tmp_path / "again.log", *options)
    with workers(again.start()):
        # refused after their claim ended (Stripe validates asynchronously, in both APIs):
        # relayed at the next change (or at the period's close)
        for org in orgs:
            ingest(conn, org, org.testbeds[0], [(org.benchmarks[2], org.measures[2])])
        wait_until(lambda: not mismatches(conn, emu, billed), 30, "the refused values posted")
        assert again.alive()
    assert parked(conn) == 0
