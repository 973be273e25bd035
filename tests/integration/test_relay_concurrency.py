"""One worker relays many organizations at once (v1 calls on its thread pool, or v2 stream
requests of many events), never two calls for one customer at a time; v2 stream sessions
are renewed as they expire, an event Stripe refuses later ends in relay_failures, and a
database error between a claim's stream requests leaves none of them in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from oracle import ingest, make_org, one
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

EVENTS = "/v1/billing/meter_events"
STREAM = "/v2/billing/meter_event_stream"


def billed_orgs(conn: Any, emu: Emulator, count: int) -> tuple[list[Any], dict[int, str]]:
    orgs = [make_org(conn, f"c{i}", testbeds=1, benchmarks=3, measures=1) for i in range(count)]
    billed = {org.id: emu.customer(f"c{i}") for i, org in enumerate(orgs)}
    for org_id, cus in billed.items():
        bill(conn, org_id, cus)
    return orgs, billed


def max_overlap(calls: list[dict[str, Any]]) -> int:
    """The most calls the emulator was handling at one moment."""
    edges = sorted(
        [(c["start"], 1) for c in calls] + [(c["finish"], -1) for c in calls if c["finish"]]
    )
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def report_each(conn: Any, orgs: list[Any], benchmark: int) -> None:
    with conn.transaction():
        for org in orgs:
            ingest(conn, org, org.testbeds[0], [(org.benchmarks[benchmark], org.measures[0])])


def worker(dsn: str, emu: Emulator, tmp_path: Path, *extra: str) -> WorkerProcess:
    return WorkerProcess(
        dsn, emu.url, tmp_path / "w.log", "--poll-interval", "0.3", "--debounce", "0", *extra
    )


@pytest.mark.parametrize("api", ["v1", "v2-stream"])
def test_many_customers_at_once_never_two_calls_for_one(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, api: str
):
    emu = relay_emulator
    orgs, billed = billed_orgs(conn, emu, 24)
    # every meter-event call takes 0.2 s: only calls made at once can keep up
    emu.ctl.add_fault("delay", 10_000, path_prefix=EVENTS if api == "v1" else STREAM, seconds=0.2)
    proc = worker(dsn, emu, tmp_path, "--api", api, "--concurrency", "6")
    with workers(proc.start()):
        for benchmark in range(3):
            report_each(conn, orgs, benchmark)
            wait_until(lambda: quiescent(conn) and not mismatches(conn, emu, billed), 60, "in sync")
    assert mismatches(conn, emu, billed) == []
    calls = emu.ctl.calls()
    assert_one_call_per_customer(emu)
    assert_increasing_timestamps(emu, billing_periods(conn, billed))
    if api == "v1":
        assert {len(c["customers"]) for c in calls} == {1}
        assert max_overlap(calls) > 1  # several customers' calls were in flight at once
    else:
        assert max(c["events"] for c in calls) > 1  # one request carried many customers' events
        assert len(calls) < 3 * len(orgs)


def test_stream_sessions_are_renewed_as_they_expire(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    orgs, billed = billed_orgs(conn, emu, 5)
    emu.ctl.configure_stream(session_ttl=1.0)
    proc = worker(dsn, emu, tmp_path, "--api", "v2-stream")
    with workers(proc.start()):
        for benchmark in range(3):
            report_each(conn, orgs, benchmark)
            wait_until(lambda: quiescent(conn) and not mismatches(conn, emu, billed), 60, "in sync")
            emu.ctl.advance_clock(2)  # the session in use has expired
    assert emu.ctl.configure_stream()["sessions"] >= 3
    assert mismatches(conn, emu, billed) == []
    assert one(conn, "SELECT count(*) FROM active_series.relay_failures") == 0


def test_an_event_the_stream_refuses_later_ends_in_relay_failures(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    orgs, billed = billed_orgs(conn, emu, 3)
    ghost = make_org(conn, "ghost", testbeds=1, benchmarks=1, measures=1)
    bill(conn, ghost.id, "cus_nobody")  # Stripe has no such customer
    proc = worker(dsn, emu, tmp_path, "--api", "v2-stream")
    with workers(proc.start()):
        report_each(conn, [*orgs, ghost], 0)
        wait_until(
            lambda: (
                one(
                    conn,
                    "SELECT count(*) FROM active_series.relay_failures WHERE organization_id = %s",
                    (ghost.id,),
                )
                == 2
            ),
            60,
            "the refusal reported",
        )
        wait_until(lambda: not mismatches(conn, emu, billed), 60, "the others in sync")
    kinds = conn.execute(
        "SELECT kind, reason FROM active_series.relay_failures WHERE organization_id = %s"
        " ORDER BY kind",
        (ghost.id,),
    ).fetchall()
    assert [k for k, _ in kinds] == ["failed_post", "parked"]
    assert all("meter_event_customer_not_found" in r for _, r in kinds)
    assert emu.events("cus_nobody") == []
    assert "refused_later" in proc.log()


def test_a_database_error_between_stream_requests_leaves_no_call_of_the_claim_in_flight(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    """A v2 claim hands each request to the pool as soon as its posts are pending and goes
    on writing the next request's. When the database fails in between, the claim waits for
    the requests in flight before it gives up: the next claim resends their pending posts,
    and a resend during the first call would be a second call for one customer at once."""
    emu = relay_emulator
    orgs, billed = billed_orgs(conn, emu, 101)  # 100 events in the first request, 1 in the next
    last = billed[max(billed)]
    # the refusal ends with a row of public.refusing deleted: no DDL on the ledger while the
    # worker holds locks on it (a DROP TRIGGER would queue the worker's inserts behind it)
    conn.execute("CREATE TABLE public.refusing AS SELECT 1 AS flag")
    conn.execute(
        "CREATE FUNCTION public.refuse_ledger_row() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF EXISTS (SELECT FROM public.refusing) THEN"
        " RAISE EXCEPTION 'the database failed'; END IF; RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER refuse_ledger_row BEFORE INSERT ON active_series._ledger FOR EACH ROW"
        f" WHEN (NEW.stripe_customer_id = '{last}') EXECUTE FUNCTION public.refuse_ledger_row()"
    )
    emu.ctl.delay_next(1, 3.0, path_prefix=STREAM)  # the first request takes 3 s
    proc = worker(dsn, emu, tmp_path, "--api", "v2-stream", "--reconnect-delay", "0.1")
    with workers(proc.start()):
        wait_until(lambda: proc.log_events("watching"), 30, "the worker")
        report_each(conn, orgs, 0)
        wait_until(lambda: proc.log_events("database_unavailable"), 30, "the failed write")
        conn.execute("DELETE FROM public.refusing")
        wait_until(lambda: quiescent(conn) and not mismatches(conn, emu, billed), 60, "in sync")
    # the first request ran its 3 s, and its posts were resent only after it
    first = emu.ctl.calls()[0]
    assert first["events"] == 100 and first["finish"] - first["start"] >= 3.0
    assert_one_call_per_customer(emu)
    assert_increasing_timestamps(emu, billing_periods(conn, billed))
