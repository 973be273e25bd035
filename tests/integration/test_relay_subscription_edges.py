"""The edges of a Stripe subscription: nothing is posted for time before it began (an
organization with activity linked mid-period), and nothing after it was canceled (at once,
or at a scheduled ``cancel_at``), while what it billed up to then was posted."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import psycopg
from oracle import allow_explicit_created, ingest, make_org
from relay_harness import Emulator, WorkerProcess, bill, quiescent, wait_until, workers


def all_series(org: Any) -> list[tuple[int, int]]:
    return [(b, m) for b in org.benchmarks for m in org.measures]


def worker_for(dsn: str, emu: Emulator, log: Path, *extra: str) -> WorkerProcess:
    return WorkerProcess(
        dsn,
        emu.url,
        log,
        "--poll-interval",
        "0.3",
        "--debounce",
        "0",
        "--grace",
        "1",
        "--invoice-grace",
        "2",
        "--subscription-recheck",
        "0.5",
        *extra,
    )


def subscribe(emu: Emulator, cus: str) -> Any:
    price = emu.metered_price(unit_amount=10)
    return emu.client.v1.subscriptions.create(
        params={
            "customer": cus,
            "items": [{"price": price.id}],
            "metadata": {"emulator_period_seconds": "3600"},
        }
    )


def status(conn: psycopg.Connection[Any], org: int) -> dict[str, Any]:
    cur = conn.execute(
        "SELECT * FROM active_series.relay_status WHERE organization_id = %s", (org,)
    )
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return {d.name: v for d, v in zip(cur.description, row, strict=True)}


def stub_period(conn: psycopg.Connection[Any], org: int, before: dt.datetime) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT period_start, period_end, finalized_at, billed_value,"
        " active_series.period_usage(organization_id, period_start)"
        " FROM active_series._period WHERE organization_id = %s AND period_end <= %s"
        " ORDER BY period_start DESC LIMIT 1",
        (org, before),
    ).fetchone()
    assert row is not None
    return tuple(row)


def linked_mid_period(conn: psycopg.Connection[Any], emu: Emulator) -> tuple[Any, str, Any]:
    """An organization with activity a minute ago, linked to a customer whose subscription
    starts now."""
    org = make_org(conn, "linked")
    allow_explicit_created(conn)
    ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
    ingest(conn, org, org.testbeds[0], all_series(org)[:3], created=ago)
    conn.execute("RESET active_series.allow_explicit_created")
    cus = emu.customer("linked")
    sub = subscribe(emu, cus)
    bill(conn, org.id, cus)
    return org, cus, sub


def test_a_period_before_the_subscription_began_is_finalized_unposted(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org, cus, sub = linked_mid_period(conn, emu)
    began = sub["start_date"]
    worker = worker_for(dsn, emu, tmp_path / "worker.log").start()
    with workers(worker):
        ingest(conn, org, org.testbeds[1], all_series(org)[3:5])
        began_at = dt.datetime.fromtimestamp(began, dt.UTC)
        # the stub period the subscription's start cut off, finalized (the old rules posted
        # its final value after the grace, then finalized it after the invoice grace)
        wait_until(
            lambda: quiescent(conn) and stub_period(conn, org.id, began_at)[2] is not None,
            30,
            "the period before the subscription finalized",
        )
        wait_until(lambda: status(conn, org.id)["in_sync"], 30, "the current period in sync")
        start, end, _, billed, usage = stub_period(conn, org.id, began_at)
        assert end == began_at and usage == 3 and billed is None
        skipped = worker.log_events("period_before_subscription")
        assert [int(e["usage"]) for e in skipped] == [3]
        # past the stub's grace and invoice grace, the worker running: still nothing posted
        # before the subscription began
        time.sleep(2.5)
        ingest(conn, org, org.testbeds[1], all_series(org)[5:6])
        wait_until(lambda: quiescent(conn) and status(conn, org.id)["in_sync"], 30, "in sync")
        assert worker.alive()
    events = emu.events(cus)
    assert events and all(e["timestamp"] >= began for e in events)
    current = status(conn, org.id)
    assert int(current["period_start"].timestamp()) == began
    assert current["period_usage"] == current["stripe_value"] == 3
    state = emu.ctl.subscription_state(sub.id)
    assert [p["quantity"] for p in state["periods"] if p["current"]] == [3]


def test_periods_before_the_subscription_are_posted_when_asked(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org, cus, sub = linked_mid_period(conn, emu)
    began = sub["start_date"]
    began_at = dt.datetime.fromtimestamp(began, dt.UTC)
    worker = worker_for(dsn, emu, tmp_path / "worker.log", "--post-before-subscription")
    with workers(worker.start()):
        wait_until(
            lambda: quiescent(conn) and stub_period(conn, org.id, began_at)[2] is not None,
            30,
            "the period before the subscription finalized",
        )
    assert stub_period(conn, org.id, began_at)[3] == 3
    assert [e["value"] for e in emu.events(cus) if e["timestamp"] < began] == [3]


def in_sync_on(conn: psycopg.Connection[Any], org: int, value: int) -> bool:
    row = status(conn, org)
    return quiescent(conn) and row["in_sync"] and row["stripe_value"] == value


def assert_cancellation_respected(
    conn: psycopg.Connection[Any],
    emu: Emulator,
    org: Any,
    cus: str,
    sub: Any,
    worker: WorkerProcess,
    ended: int,
    posted_before: int,
) -> None:
    """After the cancellation took effect: more activity, no post, no parking; relay_status
    shows the value Stripe billed and the usage since, not in sync."""
    ingest(conn, org, org.testbeds[1], all_series(org)[3:6])
    wait_until(lambda: quiescent(conn), 30, "the outbox drained")
    wait_until(lambda: worker.log_events("subscription_ended"), 30, "the cancellation seen")
    assert worker.alive()
    events = emu.events(cus)
    assert len(events) == posted_before
    assert all(e["timestamp"] < ended for e in events)
    row = status(conn, org.id)
    assert not row["parked"] and row["parked_reason"] is None
    assert row["stripe_value"] == 3 and row["period_usage"] == 6 and not row["in_sync"]
    assert row["outbox_depth"] == 0
    state = emu.ctl.subscription_state(sub.id)
    assert state["subscription"]["status"] == "canceled"
    last = state["periods"][-1]
    assert last["end"] == ended and last["invoiced"] and last["quantity"] == 3
    assert [int(e["ended"]) for e in worker.log_events("subscription_ended")] == [ended]
    assert worker.log_events("parked") == []


def test_cancellation_mid_period_bills_the_value_at_cancellation_and_posts_nothing_after(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn, "canceling")
    cus = emu.customer("canceling")
    sub = subscribe(emu, cus)
    bill(conn, org.id, cus)
    worker = worker_for(dsn, emu, tmp_path / "worker.log").start()
    with workers(worker):
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the usage posted")
        posted = len(emu.events(cus))
        # canceled in a later second than the post's timestamp (a meter event in the
        # cancellation's second is at the period's boundary)
        wait_until(
            lambda: emu.ctl.now() >= max(e["timestamp"] for e in emu.events(cus)) + 1,
            10,
            "a second after the post",
        )
        canceled = emu.client.v1.subscriptions.cancel(
            sub.id, params={"invoice_now": True, "prorate": True}
        )
        assert canceled.status == "canceled" and canceled.ended_at is not None
        time.sleep(1.0)  # longer than --subscription-recheck: the next claim reads it again
        assert_cancellation_respected(
            conn, emu, org, cus, sub, worker, int(canceled.ended_at), posted
        )


def test_a_scheduled_cancellation_ends_the_posts_at_cancel_at(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn, "cancel-at")
    cus = emu.customer("cancel-at")
    sub = subscribe(emu, cus)
    bill(conn, org.id, cus)
    worker = worker_for(dsn, emu, tmp_path / "worker.log").start()
    with workers(worker):
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the usage posted")
        cancel_at = int(emu.ctl.now()) + 2
        updated = emu.client.v1.subscriptions.update(sub.id, params={"cancel_at": cancel_at})
        assert updated.status == "active" and updated.cancel_at == cancel_at
        wait_until(lambda: emu.ctl.now() >= cancel_at + 1.0, 10, "cancel_at passed")
        posted = len(emu.events(cus))
        assert_cancellation_respected(conn, emu, org, cus, sub, worker, cancel_at, posted)


def test_the_emulator_cancels_as_stripe_does(relay_emulator: Emulator):
    emu = relay_emulator
    cus = emu.customer("emulated")
    sub = subscribe(emu, cus)
    both = {"cancel_at": int(emu.ctl.now()) + 60, "cancel_at_period_end": True}
    for params in (both, {"cancel_at": int(emu.ctl.now()) - 1}):
        try:
            emu.client.v1.subscriptions.update(sub.id, params=params)
        except Exception as exc:  # noqa: BLE001 - the SDK's InvalidRequestError
            assert getattr(exc, "http_status", None) == 400
        else:
            raise AssertionError(f"{params} accepted")
    at_end = emu.client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    assert at_end.cancel_at == at_end["items"]["data"][0]["current_period_end"]
    undone = emu.client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": False})
    assert undone.cancel_at is None and undone.canceled_at is None
    done = emu.client.v1.subscriptions.cancel(sub.id)
    assert done.status == "canceled"
    # canceled without invoice_now: its partial period's usage is not invoiced at once
    assert emu.ctl.subscription_state(sub.id)["periods"][-1]["invoiced"] is False
    listed = emu.client.v1.subscriptions.list(params={"customer": cus})
    assert listed.data == []
    listed = emu.client.v1.subscriptions.list(params={"customer": cus, "status": "all"})
    assert [s.id for s in listed.data] == [sub.id]
    for call in (
        lambda: emu.client.v1.subscriptions.cancel(sub.id),
        lambda: emu.client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True}),
    ):
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the SDK's InvalidRequestError
            assert getattr(exc, "http_status", None) == 400
        else:
            raise AssertionError("a canceled subscription changed")
