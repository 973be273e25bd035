"""price_preview and usage_summary against Stripe's own computation (the emulator's invoice).

A real worker (``active-series worker``) reads each customer's subscription, keeps the
metered price, and posts the count; then ``price_preview`` must equal the upcoming invoice
of the subscription: its amount, currency and quantity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from oracle import Org, ingest, make_org, one
from relay_harness import Emulator, WorkerProcess, quiescent, wait_until, workers

GRADUATED = [
    {"up_to": 5, "flat_amount": 1000, "unit_amount": 0},
    {"up_to": 10, "unit_amount": 150},
    {"up_to": "inf", "unit_amount": 99, "flat_amount": 7},
]

#: (name, price parameters beyond currency/product/recurring, counts to bill one after the
#: other; each the count of the period at that moment, so never lower than the previous)
CASES = [
    (
        "graduated",
        {"billing_scheme": "tiered", "tiers_mode": "graduated", "tiers": GRADUATED},
        [3, 5, 6, 10, 11, 17],
    ),
    (
        "volume",
        {"billing_scheme": "tiered", "tiers_mode": "volume", "tiers": GRADUATED},
        [4, 5, 6, 10, 11, 16],
    ),
    (
        "flat_only_graduated",
        {
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 2, "flat_amount": 500},
                {"up_to": 4, "flat_amount": 300},
                {"up_to": "inf", "flat_amount": 100},
            ],
        },
        [1, 2, 3, 4, 5],
    ),
    (
        "flat_only_volume",
        {
            "billing_scheme": "tiered",
            "tiers_mode": "volume",
            "tiers": [
                {"up_to": 2, "flat_amount": 500},
                {"up_to": 4, "flat_amount": 900},
                {"up_to": "inf", "flat_amount": 1200},
            ],
        },
        [1, 2, 3, 4, 5],
    ),
    (
        "unit_only_graduated",
        {
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 3, "unit_amount": 200},
                {"up_to": 6, "unit_amount": 100},
                {"up_to": "inf", "unit_amount": 50},
            ],
        },
        [2, 3, 4, 6, 7, 9],
    ),
    (
        "unit_only_volume",
        {
            "billing_scheme": "tiered",
            "tiers_mode": "volume",
            "tiers": [
                {"up_to": 3, "unit_amount": 200},
                {"up_to": 6, "unit_amount": 100},
                {"up_to": "inf", "unit_amount": 50},
            ],
        },
        [2, 3, 4, 6, 7],
    ),
    (
        "decimal_graduated",
        {
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 3, "unit_amount_decimal": "0.5", "flat_amount_decimal": "100.25"},
                {"up_to": 7, "unit_amount_decimal": "33.333333333333"},
                {"up_to": "inf", "unit_amount_decimal": "12.125"},
            ],
        },
        [1, 3, 4, 7, 8, 9, 12],
    ),
    (
        "decimal_volume",
        {
            "billing_scheme": "tiered",
            "tiers_mode": "volume",
            "tiers": [
                {"up_to": 3, "unit_amount_decimal": "0.5"},
                {"up_to": 7, "unit_amount_decimal": "2.25", "flat_amount_decimal": "0.5"},
                {"up_to": "inf", "unit_amount_decimal": "1.125"},
            ],
        },
        [1, 2, 3, 4, 7, 8, 12],
    ),
    ("per_unit_decimal", {"unit_amount_decimal": "2.5"}, [1, 2, 3, 5]),
]

MEASURES = 20


def billed_org(conn: psycopg.Connection[Any], emu: Emulator, name: str, params: dict) -> tuple:
    """An organization with a customer subscribed to a metered price on the meter."""
    org = make_org(conn, name, testbeds=1, benchmarks=1, measures=MEASURES)
    customer = emu.customer(name)
    price = emu.client.v1.prices.create(
        params={
            "currency": "eur",
            "product_data": {"name": f"active series {name}"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": emu.meter},
            **params,
        }
    )
    emu.client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": price.id}],
            "metadata": {"emulator_period_seconds": "3600"},
        }
    )
    conn.execute("SELECT active_series.set_stripe_customer(%s, %s, 'pro')", (org.id, customer))
    return org, customer, price.id


def bill(conn: psycopg.Connection[Any], org: Org, count: int) -> None:
    """Make the current period's count ``count`` (one report of the first ``count`` measures)."""
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], m) for m in org.measures[:count]])


def in_sync(conn: psycopg.Connection[Any], org: int, count: int) -> bool:
    row = conn.execute(
        "SELECT period_usage, stripe_value, in_sync FROM active_series.relay_status"
        " WHERE organization_id = %s",
        (org,),
    ).fetchone()
    return quiescent(conn) and row == (count, count, True)


@pytest.mark.parametrize(("name", "params", "counts"), CASES, ids=[c[0] for c in CASES])
def test_the_price_preview_equals_the_stripe_invoice(
    conn, relay_emulator: Emulator, tmp_path: Path, name: str, params: dict, counts: list[int]
) -> None:
    emu = relay_emulator
    org, customer, price_id = billed_org(conn, emu, name, params)
    worker = WorkerProcess(
        conn.info.dsn, emu.url, tmp_path / "worker.log", "--poll-interval", "0.2", "--grace", "1"
    )
    with workers(worker.start()):
        for count in counts:
            bill(conn, org, count)
            wait_until(lambda c=count: in_sync(conn, org.id, c), 30, f"Stripe holding {count}")
            invoice = emu.client.v1.invoices.create_preview(params={"customer": customer})
            [line] = invoice.lines.data
            preview = conn.execute(
                "SELECT active_series, amount, currency, stripe_price_id,"
                " extract(EPOCH FROM period_start)::bigint, extract(EPOCH FROM period_end)::bigint"
                " FROM active_series.price_preview(%s)",
                (org.id,),
            ).fetchone()
            assert preview == (
                line.quantity,
                invoice.amount_due,
                invoice.currency,
                price_id,
                invoice.period_start,
                invoice.period_end,
            ), f"{name} at {count} series"
            assert line.quantity == count
            tiers = one(conn, "SELECT tiers FROM active_series.price_preview(%s)", (org.id,))
            assert sum(float(t["amount"]) for t in tiers) == pytest.approx(
                invoice.amount_due, abs=0.5
            )
            assert sum(t["units"] for t in tiers) == count
    assert "price_unreadable" not in worker.log()
