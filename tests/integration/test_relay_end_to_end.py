"""Ingest → worker → Stripe emulator: Stripe's `last` value equals period_usage."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from oracle import allow_explicit_created, ingest, make_org
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    bill,
    billing_periods,
    mismatches,
    periods,
    quiescent,
    short_periods,
    wait_until,
    workers,
)


def all_series(org: Any) -> list[tuple[int, int]]:
    return [(b, m) for b in org.benchmarks for m in org.measures]


def test_every_customer_period_ends_equal_to_period_usage(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    a, b, free = make_org(conn, "a"), make_org(conn, "b"), make_org(conn, "free")
    billed = {a.id: emu.customer("a"), b.id: emu.customer("b")}
    for org, cus in billed.items():
        bill(conn, org, cus)
    # b: 4-second periods, with activity in periods that have already ended
    start = short_periods(conn, b.id, 4)
    allow_explicit_created(conn)
    for k in (2, 3, 5):
        at = start + dt.timedelta(seconds=4 * k + 1)
        ingest(conn, b, b.testbeds[0], all_series(b)[: k + 1], created=at)
    conn.execute("RESET active_series.allow_explicit_created")

    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "worker.log", "--grace", "1", "--poll-interval", "0.5"
    ).start()
    with workers(worker):
        for i in range(6):
            ingest(conn, a, a.testbeds[i % 2], all_series(a)[: 2 + i])
            ingest(conn, free, free.testbeds[0], all_series(free)[: 1 + i])
            ingest(conn, b, b.testbeds[1], all_series(b)[i : i + 2])
            time.sleep(0.3)
        wait_until(
            lambda: quiescent(conn) and not mismatches(conn, emu, billed),
            60,
            "Stripe to hold every period's usage",
        )
        assert mismatches(conn, emu, billed) == []
        assert worker.alive()
    # the free organization's changes were discarded, never posted
    assert conn.execute("SELECT count(*) FROM active_series._outbox").fetchone()[0] == 0
    customers = {e["customer"] for e in emu.events()}
    assert customers <= set(billed.values())
    # past periods of b are closed, and their final values arrived
    closed = conn.execute(
        "SELECT count(*) FROM active_series._relay_period WHERE organization_id = %s"
        " AND closed_at IS NOT NULL",
        (b.id,),
    ).fetchone()[0]
    assert closed >= 3
    assert len(periods(conn, b.id)) >= 4
    assert_increasing_timestamps(emu, billing_periods(conn, billed))
    assert "sk_test_relay_secret" not in worker.log()


def test_billing_periods_follow_the_stripe_subscription(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = make_org(conn, "subscribed")
    cus = emu.customer("subscribed")
    price = emu.graduated_price(
        [{"up_to": 10, "flat_amount": 1000, "unit_amount": 0}, {"up_to": "inf", "unit_amount": 50}]
    )
    sub = emu.client.v1.subscriptions.create(
        params={
            "customer": cus,
            "items": [{"price": price.id}],
            "metadata": {"emulator_period_seconds": "3600"},
        }
    )
    item = sub["items"]["data"][0]
    bill(conn, org.id, cus)
    ingest(conn, org, org.testbeds[0], all_series(org)[:4])
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "worker.log", "--poll-interval", "0.5", "--grace", "1"
    )
    with workers(worker.start()):
        wait_until(lambda: quiescent(conn) and emu.events(cus), 30, "the first post")
    got = conn.execute(
        "SELECT extract(EPOCH FROM period_start)::bigint, extract(EPOCH FROM period_end)::bigint"
        " FROM active_series.current_period(%s)",
        (org.id,),
    ).fetchone()
    assert got == (item["current_period_start"], item["current_period_end"])
    assert mismatches(conn, emu, {org.id: cus}) == []
    state = emu.ctl.subscription_state(sub.id)
    current = [p for p in state["periods"] if p["current"]][0]
    assert current["quantity"] == 4


def test_the_period_and_price_come_from_the_metered_item_not_the_first(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    """A subscription whose first item is a licensed seat price and whose second is the
    metered one, each item with a period of its own: the worker reads the metered item's
    period and its price with the tiers (within Stripe's four-level expansion limit)."""
    emu = relay_emulator
    org = make_org(conn, "two-items")
    cus = emu.customer("two-items")
    seats = emu.client.v1.prices.create(
        params={
            "currency": "usd",
            "product_data": {"name": "seats"},
            "unit_amount": 900,
            "recurring": {"interval": "month"},
        }
    )
    metered = emu.graduated_price(
        [{"up_to": 2, "flat_amount": 1000, "unit_amount": 0}, {"up_to": "inf", "unit_amount": 50}]
    )
    sub = emu.client.v1.subscriptions.create(
        params={
            "customer": cus,
            "items": [{"price": seats.id, "quantity": 3}, {"price": metered.id}],
            "metadata": {"emulator_period_seconds": "7200"},
        }
    )
    first, second = sub["items"]["data"]
    assert second["price"]["id"] == metered.id
    # the seats item on a period of its own, ending earlier than the metered item's
    start = second["current_period_start"]
    emu.ctl.set_subscription_period(sub.id, start - 600, start + 1200, item=first["id"])
    bill(conn, org.id, cus)
    ingest(conn, org, org.testbeds[0], all_series(org)[:4])
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "worker.log", "--poll-interval", "0.5", "--grace", "1"
    )
    with workers(worker.start()):
        wait_until(lambda: quiescent(conn) and emu.events(cus), 30, "the first post")
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT amount FROM active_series.price_preview(%s)", (org.id,)
                ).fetchone()[0]
                is not None
            ),
            30,
            "the stored price",
        )
    got = conn.execute(
        "SELECT extract(EPOCH FROM period_start)::bigint, extract(EPOCH FROM period_end)::bigint"
        " FROM active_series.current_period(%s)",
        (org.id,),
    ).fetchone()
    assert got == (second["current_period_start"], second["current_period_end"])
    preview = conn.execute(
        "SELECT active_series, amount, stripe_price_id, tiers_mode"
        " FROM active_series.price_preview(%s)",
        (org.id,),
    ).fetchone()
    # 4 series: 2 in the first tier (flat 1000), 2 at 50
    assert preview == (4, 1100, metered.id, "graduated")
    assert "subscription_unreadable" not in worker.log()
