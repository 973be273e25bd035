"""The edges of a Stripe subscription: nothing is posted for time before it began (an
organization with activity linked mid-period), and nothing after it was canceled (at once,
or at a scheduled ``cancel_at``), while what it billed up to then was posted."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
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
        "--confirm-after",
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
        " FROM active_series._period"
        " NATURAL LEFT JOIN active_series._relay_period"
        " WHERE organization_id = %s AND period_end <= %s"
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


@pytest.mark.parametrize("reader", ["same-worker", "new-worker-cannot-read"])
def test_a_late_change_before_the_subscription_began_is_not_posted_between_reads(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, reader: str
):
    """A stub period recorded after the subscription was read (a late change timestamped
    before it began) is finalized unbilled by the next claim, and nothing is posted for it:
    whether the claiming worker read the subscription since (the same worker, its next read
    an hour away) or not (a new worker whose reads fail): the start is recorded."""
    emu = relay_emulator
    org = make_org(conn, "stub")
    cus = emu.customer("stub")
    sub = subscribe(emu, cus)
    began = int(sub["start_date"])
    began_at = dt.datetime.fromtimestamp(began, dt.UTC)
    bill(conn, org.id, cus)
    # the database's periods on the subscription's schedule before any activity: no period
    # before it is recorded when the worker first reads the subscription
    item = sub["items"]["data"][0]
    conn.execute(
        "SELECT active_series.set_billing_period(%s, to_timestamp(%s), to_timestamp(%s))",
        (org.id, item["current_period_start"], item["current_period_end"]),
    )
    hourly = ("--subscription-recheck", "3600")
    worker = worker_for(dsn, emu, tmp_path / "first.log", *hourly).start()
    with workers(worker):
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the usage posted")
        if reader == "new-worker-cannot-read":
            worker.kill()
            emu.ctl.add_fault("error", 10_000, path_prefix="/v1/subscriptions", method="GET")
            worker = worker_for(dsn, emu, tmp_path / "second.log", *hourly).start()
        allow_explicit_created(conn)
        ingest(
            conn,
            org,
            org.testbeds[1],
            all_series(org)[3:5],
            created=began_at - dt.timedelta(seconds=30),
        )
        conn.execute("RESET active_series.allow_explicit_created")
        wait_until(
            lambda: quiescent(conn) and stub_period(conn, org.id, began_at)[2] is not None,
            30,
            "the period before the subscription finalized",
        )
        _, end, _, billed, usage = stub_period(conn, org.id, began_at)
        assert end <= began_at and usage == 2 and billed is None
        skipped = worker.log_events("period_before_subscription")
        assert [int(e["usage"]) for e in skipped] == [2]
        # the current period goes on as before
        ingest(conn, org, org.testbeds[1], all_series(org)[5:6])
        wait_until(lambda: in_sync_on(conn, org.id, 4), 30, "the current period in sync")
        assert worker.alive()
    emu.ctl.clear_faults()
    events = emu.events(cus)
    assert [e["value"] for e in events] == [3, 4]
    assert all(e["timestamp"] >= began for e in events)


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


def short_subscription(emu: Emulator, cus: str, seconds: int) -> tuple[Any, int]:
    """A subscription whose current period ends ``seconds`` from now (its tail under a
    minute: the changes in it wait for the posts after the end, unless the period ends in
    a cancellation)."""
    sub = subscribe(emu, cus)
    end = int(emu.ctl.now()) + seconds
    emu.ctl.set_subscription_period(sub.id, int(sub["start_date"]), end)
    return sub, end


@pytest.mark.parametrize("at_period_end", [True, False], ids=["at-period-end", "cancel-at"])
def test_a_change_in_the_tail_before_a_scheduled_cancellation_is_posted_before_it(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, at_period_end: bool
):
    emu = relay_emulator
    org = make_org(conn, "tail-cancel")
    cus = emu.customer("tail-cancel")
    sub, end = short_subscription(emu, cus, 24)
    if at_period_end:
        updated = emu.client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    else:
        updated = emu.client.v1.subscriptions.update(sub.id, params={"cancel_at": end - 3})
    cancel_at = int(updated.cancel_at)
    bill(conn, org.id, cus)
    worker = worker_for(dsn, emu, tmp_path / "worker.log").start()
    with workers(worker):
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the usage posted")
        assert int(status(conn, org.id)["period_end"].timestamp()) == end
        # inside the period's tail (its last 12 seconds), before the cancellation
        wait_until(lambda: emu.ctl.now() >= end - 10, 30, "the period's tail")
        ingest(conn, org, org.testbeds[1], all_series(org)[3:5])
        wait_until(lambda: emu.ctl.now() >= cancel_at + 1.5, 30, "the cancellation")
        wait_until(lambda: quiescent(conn), 30, "the outbox drained")
        assert worker.alive()
    events = emu.events(cus)
    assert all(e["timestamp"] < cancel_at for e in events)
    state = emu.ctl.subscription_state(sub.id)
    assert state["subscription"]["status"] == "canceled"
    last = state["periods"][-1]
    # the final invoice, made at the cancellation, billed the count of the tail's change
    assert last["end"] == cancel_at and last["invoiced"] and last["quantity"] == 5
    held = conn.execute(
        "SELECT stripe_value, period_usage FROM active_series.relay_periods"
        " WHERE organization_id = %s AND period_end = to_timestamp(%s)",
        (org.id, end),
    ).fetchone()
    assert held == (5, 5)


def test_a_restarted_worker_posts_nothing_after_the_end_before_it_reads_the_subscription(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn, "restarted")
    cus = emu.customer("restarted")
    sub = subscribe(emu, cus)
    bill(conn, org.id, cus)
    first = worker_for(dsn, emu, tmp_path / "first.log").start()
    with workers(first):
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the usage posted")
        wait_until(
            lambda: emu.ctl.now() >= max(e["timestamp"] for e in emu.events(cus)) + 1,
            10,
            "a second after the post",
        )
        canceled = emu.client.v1.subscriptions.cancel(sub.id, params={"invoice_now": True})
        time.sleep(1.0)  # longer than --subscription-recheck: the next claim reads it again
        ingest(conn, org, org.testbeds[1], all_series(org)[3:4])
        wait_until(
            lambda: quiescent(conn) and first.log_events("subscription_ended"),
            30,
            "the cancellation seen",
        )
    posted = len(emu.events(cus))
    # the next worker cannot read the subscriptions (yet): what it knows of the end is what
    # the database recorded
    emu.ctl.add_fault("error", 10_000, path_prefix="/v1/subscriptions", method="GET")
    ingest(conn, org, org.testbeds[1], all_series(org)[4:6])
    second = worker_for(dsn, emu, tmp_path / "second.log").start()
    with workers(second):
        wait_until(
            lambda: quiescent(conn) and second.log_events("subscription_unreadable"),
            30,
            "the outbox drained",
        )
        assert second.alive()
    emu.ctl.clear_faults()
    events = emu.events(cus)
    assert len(events) == posted and all(e["timestamp"] < canceled.ended_at for e in events)
    row = status(conn, org.id)
    assert row["stripe_value"] == 3 and row["period_usage"] == 6 and not row["parked"]


@pytest.mark.parametrize("activity", [True, False], ids=["a-change-after-it", "no-activity"])
def test_a_price_changed_mid_period_bills_the_period_count_on_the_new_price(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, activity: bool
):
    """Stripe bills only the usage reported after a metered price changed: the count is
    posted again after the change, seen by the next claim (a change after the price change)
    or by the recheck alone (no activity)."""
    emu = relay_emulator
    org = make_org(conn, "repriced")
    cus = emu.customer("repriced")
    sub = subscribe(emu, cus)
    bill(conn, org.id, cus)
    worker = worker_for(dsn, emu, tmp_path / "worker.log").start()
    with workers(worker):
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the usage posted")
        before = len(emu.events(cus))
        wait_until(
            lambda: emu.ctl.now() >= max(e["timestamp"] for e in emu.events(cus)) + 1,
            10,
            "a second after the post",
        )  # a post in the change's second is billed on the new price
        dearer = emu.metered_price(unit_amount=25)
        item = sub["items"]["data"][0]["id"]
        changed = emu.client.v1.subscription_items.update(item, params={"price": dearer.id})
        assert changed.price.id == dearer.id
        swapped = int(emu.ctl.now())
        count = 3
        if activity:
            time.sleep(1.0)  # longer than --subscription-recheck: the next claim reads it again
            ingest(conn, org, org.testbeds[1], all_series(org)[3:4])
            count = 4
        wait_until(lambda: worker.log_events("price_changed"), 30, "the change seen")
        wait_until(
            lambda: len(emu.events(cus)) > before and in_sync_on(conn, org.id, count),
            30,
            "the count posted again",
        )
        assert worker.alive()
    # the usage reported before the change is not billed on the new price; the count
    # posted after it (the whole period's, with last) is billed once, on the new price
    assert [e["value"] for e in emu.events(cus) if e["timestamp"] >= swapped][-1] == count
    current = next(p for p in emu.ctl.subscription_state(sub.id)["periods"] if p["current"])
    assert current["quantity"] == count and current["amount"] == 25 * count
    stored = conn.execute(
        "SELECT stripe_price_id FROM active_series._price WHERE organization_id = %s", (org.id,)
    ).fetchone()
    assert stored == (dearer.id,)


def finalized(conn: psycopg.Connection[Any], org: int, since: Any) -> list[tuple[Any, ...]]:
    """The finalized periods from ``since`` on: (start, billed value)."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT period_start, billed_value FROM active_series._relay_period"
            " WHERE organization_id = %s AND finalized_at IS NOT NULL AND period_start >= %s"
            " ORDER BY period_start",
            (org, since),
        )
    ]


@pytest.mark.parametrize("how", ["cancel-now", "cancel-at"])
def test_a_cancellation_without_activity_finalizes_the_period_at_the_end(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, how: str
):
    emu = relay_emulator
    org = make_org(conn, "canceled-quietly")
    cus = emu.customer("canceled-quietly")
    sub = subscribe(emu, cus)
    bill(conn, org.id, cus)
    worker = worker_for(dsn, emu, tmp_path / "worker.log").start()
    with workers(worker):
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the usage posted")
        wait_until(
            lambda: emu.ctl.now() >= max(e["timestamp"] for e in emu.events(cus)) + 1,
            10,
            "a second after the post",
        )
        if how == "cancel-now":
            ended = int(emu.client.v1.subscriptions.cancel(sub.id, params={"invoice_now": True})
                        .ended_at)  # fmt: skip
        else:
            ended = int(emu.ctl.now()) + 2
            emu.client.v1.subscriptions.update(sub.id, params={"cancel_at": ended})
        # no activity from here on: the period (an hour long) is finalized at the end, with
        # what Stripe held then, not at its own end
        start = status(conn, org.id)["period_start"]
        wait_until(lambda: finalized(conn, org.id, start), 30, "the period finalized")
        assert finalized(conn, org.id, start) == [(start, 3)]
        assert worker.log_events("parked") == []
        assert worker.alive()
    assert all(e["timestamp"] < ended for e in emu.events(cus))
    state = emu.ctl.subscription_state(sub.id)
    assert state["periods"][-1]["end"] == ended and state["periods"][-1]["quantity"] == 3
    [line] = [e for e in worker.log_events("period_finalized") if "subscription_ended" in e]
    assert int(line["subscription_ended"]) == ended and int(line["billed"]) == 3


def test_a_trial_is_live_unbilled_and_the_count_after_it_is_the_new_period_s(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn, "trialing")
    cus = emu.customer("trialing")
    price = emu.metered_price(unit_amount=10)
    trial_end = int(emu.ctl.now()) + 6
    sub = emu.client.v1.subscriptions.create(
        params={
            "customer": cus,
            "items": [{"price": price.id}],
            "trial_end": trial_end,
            "metadata": {"emulator_period_seconds": "3600"},
        }
    )
    assert sub.status == "trialing" and sub["items"]["data"][0]["current_period_end"] == trial_end
    bill(conn, org.id, cus)
    worker = worker_for(dsn, emu, tmp_path / "worker.log").start()
    with workers(worker):
        # in the trial: the subscription is live, its period the database's, its usage posted
        ingest(conn, org, org.testbeds[0], all_series(org)[:3])
        wait_until(lambda: in_sync_on(conn, org.id, 3), 30, "the trial's usage posted")
        row = status(conn, org.id)
        assert int(row["period_end"].timestamp()) == trial_end and not row["parked"]
        assert worker.log_events("subscription_ended") == []
        wait_until(lambda: emu.ctl.now() >= trial_end + 1, 15, "the trial's end")
        # after it: a new billing cycle, whose count is the series active since
        ingest(conn, org, org.testbeds[1], all_series(org)[2:4])
        wait_until(lambda: in_sync_on(conn, org.id, 2), 30, "the new period's count posted")
        assert int(status(conn, org.id)["period_start"].timestamp()) == trial_end
        wait_until(
            lambda: worker.log_events("trial_period_unbilled"), 30, "the trial period finalized"
        )
        assert worker.alive()
    trial = conn.execute(
        "SELECT finalized_at IS NOT NULL, billed_value,"
        " active_series.period_usage(organization_id, period_start)"
        " FROM active_series._period"
        " NATURAL LEFT JOIN active_series._relay_period"
        " WHERE organization_id = %s AND period_end = %s",
        (org.id, dt.datetime.fromtimestamp(trial_end, dt.UTC)),
    ).fetchone()
    assert trial == (True, None, 3)  # not billed: no drift either
    assert conn.execute(
        "SELECT count(*) FROM active_series.billing_drift WHERE organization_id = %s", (org.id,)
    ).fetchone() == (0,)
    state = emu.ctl.subscription_state(sub.id)
    assert state["subscription"]["status"] == "active"
    first, current = state["periods"][0], state["periods"][-1]
    assert (first["trial"], first["amount"], first["quantity"]) == (True, 0, 0)
    assert current["start"] == trial_end and current["quantity"] == 2
    assert current["amount"] == 20 and not current["trial"]
