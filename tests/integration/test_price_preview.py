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
import stripe
from oracle import Org, ingest, make_org, one
from psycopg.types.json import Jsonb
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
    (
        "per_unit_transform_up",
        {"unit_amount": 250, "transform_quantity": {"divide_by": 4, "round": "up"}},
        [1, 4, 5, 9],
    ),
    (
        "per_unit_transform_down",
        {"unit_amount_decimal": "12.5", "transform_quantity": {"divide_by": 3, "round": "down"}},
        [1, 2, 3, 7],
    ),
]

#: (case, count) -> the amount Stripe bills, worked out by hand from its documentation:
#: transform_quantity divides the quantity and rounds it before the unit amount applies
#: (docs.stripe.com/billing/subscriptions/usage-based/transform-quantities)
BILLED = {
    ("per_unit_transform_up", 1): 250,
    ("per_unit_transform_up", 4): 250,
    ("per_unit_transform_up", 5): 500,
    ("per_unit_transform_up", 9): 750,
    ("per_unit_transform_down", 1): 0,
    ("per_unit_transform_down", 2): 0,
    ("per_unit_transform_down", 3): 13,
    ("per_unit_transform_down", 7): 25,
}

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
            assert sum(t["units"] for t in tiers) == billed_units(params, count)
            if (name, count) in BILLED:
                assert invoice.amount_due == BILLED[name, count], f"{name} at {count} series"
    assert "price_unreadable" not in worker.log()


def billed_units(params: dict, count: int) -> int:
    """The units a price charges for ``count``: after its transform_quantity, if any."""
    transform = params.get("transform_quantity")
    if transform is None:
        return count
    whole, rest = divmod(count, transform["divide_by"])
    return whole + (1 if rest and transform["round"] == "up" else 0)


#: (name, price parameters, the amount at a count of 0). Stripe: "If quantity is 0, the
#: total amount is [the first tier's flat rate] regardless of the tiered pricing model
#: used. Stripe always bills the first flat rate tier when quantity=0."
#: (docs.stripe.com/subscriptions/pricing-models/tiered-pricing, "Add a flat rate")
ZERO = [
    ("graduated_flat_first", CASES[0][1], 1000),
    ("volume_flat_first", CASES[1][1], 1000),
    ("flat_only_volume", CASES[3][1], 500),
    ("unit_only_graduated", CASES[4][1], 0),
    ("unit_only_volume", CASES[5][1], 0),
    ("decimal_graduated_flat_first", CASES[6][1], 100),
    ("decimal_volume_flat_second", CASES[7][1], 0),
    ("per_unit_transform_up", CASES[9][1], 0),
]


@pytest.mark.parametrize(("name", "params", "amount"), ZERO, ids=[c[0] for c in ZERO])
def test_at_zero_usage_the_price_preview_equals_the_stripe_invoice(
    conn, relay_emulator: Emulator, tmp_path: Path, name: str, params: dict, amount: int
) -> None:
    """No activity in the period: the first tier's flat amount is billed all the same, in
    both tier modes, and price_preview says so."""
    emu = relay_emulator
    org, customer, price_id = billed_org(conn, emu, name, params)
    worker = WorkerProcess(
        conn.info.dsn, emu.url, tmp_path / "worker.log", "--poll-interval", "0.2", "--grace", "1"
    )
    query = (
        "SELECT active_series, amount, currency, stripe_price_id,"
        " extract(EPOCH FROM period_start)::bigint, extract(EPOCH FROM period_end)::bigint"
        " FROM active_series.price_preview(%s)"
    )
    with workers(worker.start()):
        invoice = emu.client.v1.invoices.create_preview(params={"customer": customer})
        expected = (0, amount, "eur", price_id, invoice.period_start, invoice.period_end)
        wait_until(
            lambda: conn.execute(query, (org.id,)).fetchone() == expected,
            30,
            f"the stored price and period of {name}",
        )
        invoice = emu.client.v1.invoices.create_preview(params={"customer": customer})
    [line] = invoice.lines.data
    assert (line.quantity, invoice.amount_due) == (0, amount)
    assert conn.execute(query, (org.id,)).fetchone() == (
        line.quantity,
        invoice.amount_due,
        invoice.currency,
        price_id,
        invoice.period_start,
        invoice.period_end,
    )
    assert "price_unreadable" not in worker.log()


def test_stripe_refuses_transform_quantity_on_a_tiered_price(relay_emulator: Emulator) -> None:
    """transform_quantity "Cannot be combined with `tiers`" (the price's API reference)."""
    with pytest.raises(stripe.InvalidRequestError) as refused:
        relay_emulator.client.v1.prices.create(
            params={
                "currency": "eur",
                "product_data": {"name": "tiered and transformed"},
                "recurring": {
                    "interval": "month",
                    "usage_type": "metered",
                    "meter": relay_emulator.meter,
                },
                **CASES[0][1],
                "transform_quantity": {"divide_by": 10, "round": "up"},
            }
        )
    assert refused.value.param == "transform_quantity"


def test_the_worker_refuses_a_price_billed_in_one_of_its_currency_options(
    conn, relay_emulator: Emulator, tmp_path: Path
) -> None:
    """A subscription in another currency than its price's is billed at the price's
    currency_options amounts, which price_preview does not hold: the worker stores no
    price (so price_preview gives no amount rather than a wrong one) and says why."""
    emu = relay_emulator
    org = make_org(conn, "usd", testbeds=1, benchmarks=1, measures=MEASURES)
    customer = emu.customer("usd")
    price = emu.client.v1.prices.create(
        params={
            "currency": "eur",
            "product_data": {"name": "active series in two currencies"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": emu.meter},
            **CASES[0][1],
            "currency_options": {
                "usd": {
                    "tiers": [
                        {"up_to": 5, "flat_amount": 1100},
                        {"up_to": "inf", "unit_amount": 160},
                    ]
                }
            },
        }
    )
    emu.client.v1.subscriptions.create(
        params={
            "customer": customer,
            "currency": "usd",
            "items": [{"price": price.id}],
            "metadata": {"emulator_period_seconds": "3600"},
        }
    )
    conn.execute("SELECT active_series.set_stripe_customer(%s, %s, 'pro')", (org.id, customer))
    bill(conn, org, 7)
    worker = WorkerProcess(
        conn.info.dsn, emu.url, tmp_path / "worker.log", "--poll-interval", "0.2", "--grace", "1"
    )
    with workers(worker.start()):
        wait_until(lambda: in_sync(conn, org.id, 7), 30, "Stripe holding 7")
        wait_until(lambda: worker.log_events("price_refused"), 30, "the price refused")
    invoice = emu.client.v1.invoices.create_preview(params={"customer": customer})
    assert (invoice.currency, invoice.amount_due) == ("usd", 1100 + 2 * 160)
    [refusal] = worker.log_events("price_refused")
    assert price.id in refusal["reason"]
    assert "currency_options" in refusal["reason"]
    assert conn.execute(
        "SELECT active_series, amount, currency, stripe_price_id"
        " FROM active_series.price_preview(%s)",
        (org.id,),
    ).fetchone() == (7, None, None, None)


TIERED = {
    "id": "price_tiered",
    "currency": "eur",
    "billing_scheme": "tiered",
    "tiers_mode": "graduated",
    "tiers": [{"up_to": "inf", "unit_amount": 5}],
}


@pytest.mark.parametrize(
    "price",
    [
        {**TIERED, "transform_quantity": {"divide_by": 10, "round": "up"}},
        {"id": "p", "currency": "eur", "unit_amount": 5, "transform_quantity": {"round": "up"}},
        {
            "id": "p",
            "currency": "eur",
            "unit_amount": 5,
            "transform_quantity": {"divide_by": 0, "round": "up"},
        },
        {"id": "p", "currency": "eur", "unit_amount": 5, "transform_quantity": {"divide_by": 2}},
        {
            "id": "p",
            "currency": "eur",
            "unit_amount": 5,
            "transform_quantity": {"divide_by": 2, "round": "half"},
        },
    ],
    ids=["tiered", "no_divide_by", "divide_by_0", "no_round", "round_half"],
)
def test_a_malformed_transform_quantity_is_refused_and_the_previous_price_kept(
    conn, price: dict
) -> None:
    org = make_org(conn, "transform", testbeds=1, benchmarks=1, measures=MEASURES)
    bill(conn, org, 7)
    conn.execute(
        "SELECT active_series._store_price(%s, %s, 'si_1')",
        (org.id, Jsonb({"id": "price_0", "currency": "usd", "unit_amount": 7})),
    )
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT active_series._store_price(%s, %s)", (org.id, Jsonb(price)))
    assert refused.value.sqlstate == "22023"
    assert price["id"] in str(refused.value)
    assert one(conn, "SELECT amount FROM active_series.price_preview(%s)", (org.id,)) == 49


def test_a_stored_transform_quantity_divides_the_count_before_pricing(conn) -> None:
    """7 series at 5 per started package of 3: 3 packages (up), 2 (down)."""
    org = make_org(conn, "packages", testbeds=1, benchmarks=1, measures=MEASURES)
    bill(conn, org, 7)
    amounts = []
    for rounding in ("up", "down"):
        price = {
            "id": f"price_{rounding}",
            "currency": "eur",
            "billing_scheme": "per_unit",
            "unit_amount": 5,
            "unit_amount_decimal": "5",
            "transform_quantity": {"divide_by": 3, "round": rounding},
        }
        conn.execute("SELECT active_series._store_price(%s, %s)", (org.id, Jsonb(price)))
        amounts.append(
            conn.execute(
                "SELECT active_series, amount, tiers -> 0 -> 'units'"
                " FROM active_series.price_preview(%s)",
                (org.id,),
            ).fetchone()
        )
    assert amounts == [(7, 15, 3), (7, 10, 2)]
