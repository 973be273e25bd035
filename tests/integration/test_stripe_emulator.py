"""The Stripe emulator, driven only through the official ``stripe`` SDK and its control API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from calendar import timegm
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

stripe = pytest.importorskip("stripe")

from active_series.devtools.stripe_emulator import (  # noqa: E402
    EmulatorControl,
    StripeEmulatorServer,
    run_in_thread,
)
from active_series.devtools.stripe_emulator.streams import parse_iso  # noqa: E402

EVENTS = "/v1/billing/meter_events"
DAY = 86400


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[StripeEmulatorServer, str]]:
    server, url = run_in_thread(rate_limit=None)
    yield server, url
    server.shutdown()
    server.server_close()


@pytest.fixture()
def ctl(emulator: tuple[StripeEmulatorServer, str]) -> EmulatorControl:
    control = EmulatorControl(emulator[1])
    control.reset()
    control.set_rate_limit(None)
    return control


@pytest.fixture(autouse=True)
def fast_sdk_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK waits at least 0.5 s before a retry; shrink it so retry tests stay quick.
    monkeypatch.setattr(stripe._http_client.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe._http_client.HTTPClient, "MAX_DELAY", 0.02)


def make_client(url: str, retries: int = 0, timeout: float | None = None) -> Any:
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs["http_client"] = stripe.RequestsClient(timeout=timeout)
    return stripe.StripeClient(
        "sk_test_emulator", base_addresses={"api": url}, max_network_retries=retries, **kwargs
    )


@pytest.fixture()
def client(emulator: tuple[StripeEmulatorServer, str], ctl: EmulatorControl) -> Any:
    return make_client(emulator[1])


def new_meter(
    client: Any, event_name: str = "api_calls", formula: str = "last", **extra: Any
) -> Any:
    params = {
        "display_name": f"{event_name} meter",
        "event_name": event_name,
        "default_aggregation": {"formula": formula},
        **extra,
    }
    return client.v1.billing.meters.create(params=params)


def new_customer(client: Any, email: str = "org@example.com") -> Any:
    return client.v1.customers.create(params={"email": email, "name": "Org"})


def send(
    client: Any,
    customer: str,
    value: Any,
    event_name: str = "api_calls",
    key: str | None = None,
    **extra: Any,
) -> Any:
    params = {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": str(value)},
        **extra,
    }
    options = {"idempotency_key": key} if key else None
    return client.v1.billing.meter_events.create(params=params, options=options)


def expect_error(exc_type: type, call: Any) -> Any:
    with pytest.raises(exc_type) as info:
        call()
    return info.value


def reports(client: Any) -> list[Any]:
    """Every error report the Events API shows, newest first (through the SDK)."""
    return list(client.v2.core.events.list(params={"limit": 100}).data)


def report_of(client: Any, key: str) -> tuple[str, str, Any]:
    """(event type, error code, sample) of the error report sample naming the request
    idempotency key ``key``."""
    for event in reports(client):
        for kind in event.data.reason.error_types:
            for sample in kind.sample_errors:
                if sample.request.identifier == key:
                    return event.type, kind.code, sample
    raise AssertionError(f"no error report names the request {key}")


def expect_reported(client: Any, ctl: EmulatorControl, call: Any) -> tuple[str, str, Any]:
    """Make ``call(key)`` (a meter event sent with the idempotency key ``key``): Stripe
    accepts it (200), the meter does not record it, and an error report names the request.
    Returns (event type, code, sample)."""
    key = f"test-{time.monotonic_ns()}"
    before = ctl.meter_events()
    answer = call(key)
    assert answer.object == "billing.meter_event"
    assert ctl.meter_events() == before
    return report_of(client, key)


TIERS = [
    {"up_to": 100, "unit_amount": 10, "flat_amount": 500},
    {"up_to": 1000, "unit_amount": 5, "flat_amount": 200},
    {"up_to": "inf", "unit_amount": 1},
]


def metered_subscription(
    client: Any, meter: Any, customer: Any, mode: str, period_seconds: int | None = None
) -> Any:
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": mode,
            "tiers": TIERS,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "product_data": {"name": "Active series"},
        }
    )
    params: dict[str, Any] = {"customer": customer.id, "items": [{"price": price.id}]}
    if period_seconds is not None:
        params["metadata"] = {"emulator_period_seconds": str(period_seconds)}
    return client.v1.subscriptions.create(params=params)


# ---------------------------------------------------------------------------------------------
# meters
# ---------------------------------------------------------------------------------------------


def test_meter_create_applies_default_payload_keys_and_can_be_retrieved_and_listed(
    client: Any,
) -> None:
    meter = new_meter(client, formula="last")
    assert meter.id.startswith("mtr_")
    assert meter.object == "billing.meter"
    assert meter.status == "active"
    assert meter.default_aggregation.formula == "last"
    assert meter.customer_mapping.to_dict() == {
        "event_payload_key": "stripe_customer_id",
        "type": "by_id",
    }
    assert meter.value_settings.event_payload_key == "value"
    assert client.v1.billing.meters.retrieve(meter.id).event_name == "api_calls"
    other = new_meter(client, event_name="other", formula="sum")
    listed = client.v1.billing.meters.list(params={"limit": 1})
    assert [m.id for m in listed.data] == [other.id]
    assert listed.has_more is True
    page2 = client.v1.billing.meters.list(params={"limit": 1, "starting_after": other.id})
    assert [m.id for m in page2.data] == [meter.id]


def test_meter_create_rejects_unknown_formula_and_missing_event_name(client: Any) -> None:
    err = expect_error(stripe.InvalidRequestError, lambda: new_meter(client, formula="max"))
    assert err.param == "default_aggregation[formula]"
    err = expect_error(
        stripe.InvalidRequestError,
        lambda: client.v1.billing.meters.create(
            params={"display_name": "x", "default_aggregation": {"formula": "sum"}}
        ),
    )
    assert err.code == "parameter_missing"
    assert err.param == "event_name"


def test_retrieving_an_unknown_meter_is_resource_missing(client: Any) -> None:
    err = expect_error(
        stripe.InvalidRequestError, lambda: client.v1.billing.meters.retrieve("mtr_nope")
    )
    assert err.http_status == 404
    assert err.code == "resource_missing"


def test_deactivated_meter_rejects_events_as_archived_until_reactivated(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    off = client.v1.billing.meters.deactivate(meter.id)
    assert off.status == "inactive"
    assert off.status_transitions.deactivated_at is not None
    _, code, sample = expect_reported(client, ctl, lambda key: send(client, cus.id, 1, key=key))
    assert code == "archived_meter"
    assert meter.id in sample.error_message
    [report] = reports(client)
    assert report.related_object.id == meter.id
    on = client.v1.billing.meters.reactivate(meter.id)
    assert on.status == "active"
    assert send(client, cus.id, 1).payload["value"] == "1"


# ---------------------------------------------------------------------------------------------
# meter event validation
# ---------------------------------------------------------------------------------------------


def test_meter_event_for_unknown_event_name_is_no_meter(client: Any, ctl: EmulatorControl) -> None:
    cus = new_customer(client)
    kind, code, _ = expect_reported(
        client, ctl, lambda key: send(client, cus.id, 1, event_name="ghost", key=key)
    )
    assert (kind, code) == ("v1.billing.meter.no_meter_found", "no_meter")


def test_meter_event_without_customer_key_or_value_key_is_rejected(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    events = client.v1.billing.meter_events

    def create(payload: dict[str, str]) -> Any:
        return lambda key: events.create(
            params={"event_name": "api_calls", "payload": payload},
            options={"idempotency_key": key},
        )

    _, code, _ = expect_reported(client, ctl, create({"value": "3"}))
    assert code == "meter_event_no_customer_defined"
    _, code, sample = expect_reported(client, ctl, create({"stripe_customer_id": cus.id}))
    assert code == "meter_event_invalid_value"
    assert "'value'" in sample.error_message


@pytest.mark.parametrize("value", ["1.5", "-3", "abc", " 4", "1e3"])
def test_meter_event_value_must_be_a_non_negative_whole_number(
    client: Any, ctl: EmulatorControl, value: str
) -> None:
    new_meter(client)
    cus = new_customer(client)
    _, code, _ = expect_reported(client, ctl, lambda key: send(client, cus.id, value, key=key))
    assert code == "meter_event_invalid_value"


def test_meter_event_timestamp_window_is_35_days_back_and_5_minutes_ahead(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    now = int(ctl.now())
    _, code, _ = expect_reported(
        client, ctl, lambda key: send(client, cus.id, 1, timestamp=now - 35 * DAY - 5, key=key)
    )
    assert code == "timestamp_too_far_in_past"
    _, code, _ = expect_reported(
        client, ctl, lambda key: send(client, cus.id, 1, timestamp=now + 310, key=key)
    )
    assert code == "timestamp_in_future"
    assert send(client, cus.id, 1, timestamp=now - 35 * DAY + 60).timestamp == now - 35 * DAY + 60
    assert send(client, cus.id, 2, timestamp=now + 290).timestamp == now + 290


def test_clock_offset_moves_the_timestamp_window(client: Any, ctl: EmulatorControl) -> None:
    new_meter(client)
    cus = new_customer(client)
    real_now = int(time.time())
    ctl.set_clock_offset(-40 * DAY)
    accepted = send(client, cus.id, 5, timestamp=real_now - 40 * DAY)
    assert accepted.timestamp == real_now - 40 * DAY
    _, code, _ = expect_reported(
        client, ctl, lambda key: send(client, cus.id, 6, timestamp=real_now, key=key)
    )
    assert code == "timestamp_in_future"
    ctl.set_clock_offset(0)
    assert abs(ctl.now() - time.time()) < 5


def test_meter_event_for_unknown_customer_is_accepted_then_reported(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    answer = send(client, "cus_missing", 1, key="k-missing", identifier="ev-missing")
    assert (answer.identifier, answer.payload["value"]) == ("ev-missing", "1")
    assert ctl.meter_events() == []
    kind, code, sample = report_of(client, "k-missing")
    assert (kind, code) == (
        "v1.billing.meter.error_report_triggered",
        "meter_event_customer_not_found",
    )
    assert "cus_missing" in sample.error_message
    [report] = reports(client)
    assert report.related_object.id == meter.id
    assert report.data.reason.error_count == 1
    # the refused event's identifier stays free: the fixed event is recorded
    cus = new_customer(client)
    assert send(client, cus.id, 1, identifier="ev-missing").identifier == "ev-missing"
    assert [e["identifier"] for e in ctl.meter_events()] == ["ev-missing"]
    # a retry of the refused request (same key) is its first answer replayed: reported once
    again = send(client, "cus_missing", 1, key="k-missing", identifier="ev-missing")
    assert again.identifier == "ev-missing"
    assert len(reports(client)) == 1


def test_error_reports_aggregate_a_window_per_meter_with_bounded_samples(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    ctl.configure_stream(error_report_window=60, error_report_delay=30, error_report_samples=2)
    now = int(ctl.now())
    for i in range(3):
        send(client, f"cus_gone{i}", 1, key=f"w-{i}")
    send(client, cus.id, 1, key="w-old", timestamp=now - 40 * DAY)
    send(client, cus.id, 4, key="w-ok")
    assert [e["value"] for e in ctl.meter_events()] == [4]
    assert reports(client) == []  # the window is open
    ctl.advance_clock(60)
    assert reports(client) == []  # closed, not visible yet
    ctl.advance_clock(31)
    [report] = reports(client)
    assert report.type == "v1.billing.meter.error_report_triggered"
    assert report.related_object.id == meter.id
    reason = report.data.reason
    assert reason.error_count == 4
    kinds = {k.code: k for k in reason.error_types}
    assert {c: k.error_count for c, k in kinds.items()} == {
        "meter_event_customer_not_found": 3,
        "timestamp_too_far_in_past": 1,
    }
    sampled = kinds["meter_event_customer_not_found"].sample_errors
    assert [x.request.identifier for x in sampled] == ["w-0", "w-1"]  # two of three
    assert [x.request.identifier for x in kinds["timestamp_too_far_in_past"].sample_errors] == [
        "w-old"
    ]
    start, end = report.data.validation_start, report.data.validation_end
    assert (parse_iso(end) - parse_iso(start)) == pytest.approx(60, abs=1)
    # the next refusal opens a new window
    send(client, "cus_gone9", 1, key="w-9")
    ctl.advance_clock(91)
    assert [r.data.reason.error_count for r in reports(client)] == [1, 4]


def test_a_stream_requests_refusals_are_sampled_under_its_idempotency_key(
    client: Any, ctl: EmulatorControl, emulator: tuple[StripeEmulatorServer, str]
) -> None:
    new_meter(client)
    cus = new_customer(client)
    token = client.v2.billing.meter_event_session.create().authentication_token
    streamer = stripe.StripeClient(
        token, base_addresses={"api": emulator[1], "meter_events": emulator[1]}
    )
    events: Any = [
        {"event_name": "api_calls", "payload": {"stripe_customer_id": c, "value": "1"}}
        for c in (cus.id, "cus_nobody", "cus_none")
    ]
    streamer.v2.billing.meter_event_stream.create(
        params={"events": events}, options={"idempotency_key": "batch-1"}
    )
    assert [e["customer"] for e in ctl.meter_events()] == [cus.id]
    [report] = reports(client)
    [kind] = report.data.reason.error_types
    assert (kind.code, kind.error_count) == ("meter_event_customer_not_found", 2)
    assert [x.request.identifier for x in kind.sample_errors] == ["batch-1", "batch-1"]


def test_meter_event_identifier_longer_than_100_characters_is_rejected(client: Any) -> None:
    new_meter(client)
    cus = new_customer(client)
    assert send(client, cus.id, 1, identifier="i" * 100).identifier == "i" * 100
    err = expect_error(
        stripe.InvalidRequestError, lambda: send(client, cus.id, 1, identifier="i" * 101)
    )
    assert err.param == "identifier"


def test_duplicate_identifier_is_a_400_with_should_retry_false_and_records_once(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    send(client, cus.id, 7, identifier="org1-period1-7")
    err = expect_error(
        stripe.InvalidRequestError, lambda: send(client, cus.id, 8, identifier="org1-period1-7")
    )
    assert err.http_status == 400
    assert err.error.type == "invalid_request_error"
    assert err.user_message == "An event already exists with identifier org1-period1-7"
    assert err.headers["stripe-should-retry"] == "false"
    assert [e["value"] for e in ctl.meter_events()] == [7]


def test_meter_event_without_identifier_gets_a_generated_unique_one(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    first = send(client, cus.id, 1)
    second = send(client, cus.id, 1)
    assert first.identifier and second.identifier
    assert first.identifier != second.identifier
    assert [e["identifier"] for e in ctl.meter_events()] == [first.identifier, second.identifier]


def test_meter_with_custom_payload_keys_reads_those_keys(client: Any, ctl: EmulatorControl) -> None:
    new_meter(
        client,
        event_name="custom",
        customer_mapping={"type": "by_id", "event_payload_key": "cust"},
        value_settings={"event_payload_key": "n"},
    )
    cus = new_customer(client)
    client.v1.billing.meter_events.create(
        params={"event_name": "custom", "payload": {"cust": cus.id, "n": "42"}}
    )
    _, code, _ = expect_reported(client, ctl, lambda key: send(client, cus.id, 1, "custom", key))
    assert code == "meter_event_no_customer_defined"
    assert [(e["customer"], e["value"]) for e in ctl.meter_events()] == [(cus.id, 42)]


def test_record_of_meter_events_keeps_arrival_order_and_fields(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    a, b = new_customer(client, "a@x"), new_customer(client, "b@x")
    now = int(ctl.now())
    send(client, a.id, 3, identifier="a-1", timestamp=now - 10)
    send(client, b.id, 4, identifier="b-1", timestamp=now - 20)
    send(client, a.id, 5, identifier="a-2", timestamp=now - 5)
    record = ctl.meter_events()
    assert [(e["identifier"], e["customer"], e["value"], e["timestamp"]) for e in record] == [
        ("a-1", a.id, 3, now - 10),
        ("b-1", b.id, 4, now - 20),
        ("a-2", a.id, 5, now - 5),
    ]
    assert [e["seq"] for e in record] == [1, 2, 3]
    assert [e["identifier"] for e in ctl.meter_events(customer=b.id)] == ["b-1"]


def test_meter_event_adjustment_cancels_an_event_out_of_the_aggregate(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client, formula="sum")
    cus = new_customer(client)
    start, end = _window(ctl)
    send(client, cus.id, 5, identifier="keep", timestamp=start + 60)
    send(client, cus.id, 7, identifier="oops", timestamp=start + 120)
    adjustment = client.v1.billing.meter_event_adjustments.create(
        params={"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "oops"}}
    )
    assert adjustment.object == "billing.meter_event_adjustment"
    assert _summaries(client, meter, cus, start, end).data[0].aggregated_value == 5
    assert [e["canceled"] for e in ctl.meter_events()] == [False, True]
    err = expect_error(
        stripe.InvalidRequestError,
        lambda: client.v1.billing.meter_event_adjustments.create(
            params={"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "no"}}
        ),
    )
    assert err.param == "cancel[identifier]"


# ---------------------------------------------------------------------------------------------
# idempotency
# ---------------------------------------------------------------------------------------------


def test_replayed_idempotency_key_returns_the_stored_response_without_a_second_event(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    params = {"event_name": "api_calls", "payload": {"stripe_customer_id": cus.id, "value": "9"}}
    first = client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "k1"})
    again = client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "k1"})
    assert again.identifier == first.identifier  # generated once, replayed
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert len(ctl.meter_events()) == 1
    changed = dict(params, payload={"stripe_customer_id": cus.id, "value": "10"})
    err = expect_error(
        stripe.IdempotencyError,
        lambda: client.v1.billing.meter_events.create(
            params=changed, options={"idempotency_key": "k1"}
        ),
    )
    assert err.http_status == 400


# ---------------------------------------------------------------------------------------------
# event summaries
# ---------------------------------------------------------------------------------------------


def _window(ctl: EmulatorControl) -> tuple[int, int]:
    now = int(ctl.now())
    start = now - now % 3600 - 2 * 3600  # two whole hours ago, hour-aligned
    return start, start + 2 * 3600


def _summaries(client: Any, meter: Any, cus: Any, start: int, end: int, **extra: Any) -> Any:
    params = {"customer": cus.id, "start_time": start, "end_time": end, **extra}
    return client.v1.billing.meters.event_summaries.list(meter.id, params=params)


@pytest.mark.parametrize(("formula", "expected"), [("sum", 3 + 9 + 4), ("count", 3), ("last", 4)])
def test_event_summary_aggregates_with_the_meter_formula_over_start_inclusive_end_exclusive(
    client: Any, ctl: EmulatorControl, formula: str, expected: int
) -> None:
    meter = new_meter(client, formula=formula)
    cus = new_customer(client)
    start, end = _window(ctl)
    send(client, cus.id, 100, timestamp=start - 1)  # before the window
    send(client, cus.id, 3, timestamp=start)  # inclusive start
    send(client, cus.id, 4, timestamp=end - 1)  # greatest timestamp, though not last to arrive
    send(client, cus.id, 9, timestamp=start + 60)
    send(client, cus.id, 200, timestamp=end)  # exclusive end
    result = _summaries(client, meter, cus, start, end)
    assert result.object == "list"
    [summary] = result.data
    assert summary.object == "billing.meter_event_summary"
    assert (summary.start_time, summary.end_time, summary.meter) == (start, end, meter.id)
    assert summary.aggregated_value == expected


def test_last_formula_breaks_timestamp_ties_by_arrival_order(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client, formula="last")
    cus = new_customer(client)
    start, end = _window(ctl)
    send(client, cus.id, 11, timestamp=start + 120)
    send(client, cus.id, 12, timestamp=start + 120)
    assert _summaries(client, meter, cus, start, end).data[0].aggregated_value == 12


def test_event_summary_hour_grouping_returns_one_summary_per_hour_with_events(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client, formula="sum")
    cus = new_customer(client)
    other = new_customer(client, "other@x")
    start, end = _window(ctl)
    send(client, cus.id, 1, timestamp=start + 10)
    send(client, cus.id, 2, timestamp=start + 3600 + 10)
    send(client, cus.id, 5, timestamp=start + 3600 + 20)
    send(client, other.id, 50, timestamp=start + 3600 + 20)
    result = _summaries(client, meter, cus, start, end, value_grouping_window="hour")
    got = sorted((s.start_time, s.end_time, s.aggregated_value) for s in result.data)
    assert got == [(start, start + 3600, 1), (start + 3600, end, 7)]


def test_event_summary_requires_customer_and_minute_aligned_times(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    start, end = _window(ctl)
    summaries = client.v1.billing.meters.event_summaries
    err = expect_error(
        stripe.InvalidRequestError,
        lambda: summaries.list(meter.id, params={"start_time": start, "end_time": end}),
    )
    assert (err.code, err.param) == ("parameter_missing", "customer")
    err = expect_error(
        stripe.InvalidRequestError,
        lambda: summaries.list(meter.id, params={"customer": cus.id, "start_time": start}),
    )
    assert err.param == "end_time"
    err = expect_error(
        stripe.InvalidRequestError, lambda: _summaries(client, meter, cus, start + 1, end)
    )
    assert err.param == "start_time"


# ---------------------------------------------------------------------------------------------
# customers, prices, subscriptions, invoices
# ---------------------------------------------------------------------------------------------


def test_customers_create_retrieve_and_list(client: Any) -> None:
    cus = client.v1.customers.create(
        params={"email": "a@example.com", "name": "A", "metadata": {"org_id": "17"}}
    )
    assert cus.id.startswith("cus_")
    assert (cus.object, cus.livemode, cus.metadata["org_id"]) == ("customer", False, "17")
    assert isinstance(cus.created, int)
    assert client.v1.customers.retrieve(cus.id).email == "a@example.com"
    new_customer(client, "b@example.com")
    listed = client.v1.customers.list(params={"email": "a@example.com"})
    assert [c.id for c in listed.data] == [cus.id]
    err = expect_error(stripe.InvalidRequestError, lambda: client.v1.customers.retrieve("cus_x"))
    assert err.http_status == 404


def test_tiered_metered_price_accepts_inline_product_or_product_id(client: Any) -> None:
    meter = new_meter(client)
    product = client.v1.products.create(params={"name": "Series"})
    common = {
        "currency": "eur",
        "billing_scheme": "tiered",
        "tiers_mode": "volume",
        "tiers": TIERS,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
    }
    by_id = client.v1.prices.create(params={**common, "product": product.id, "expand": ["tiers"]})
    inline = client.v1.prices.create(params={**common, "product_data": {"name": "Inline"}})
    assert by_id.product == product.id
    assert inline.product.startswith("prod_") and inline.product != product.id
    assert by_id.recurring.meter == meter.id
    assert by_id.recurring.usage_type == "metered"
    assert [t.up_to for t in by_id.tiers] == [100, 1000, None]
    # Stripe leaves the tiers out unless they are expanded
    assert "tiers" not in inline
    assert "tiers" not in client.v1.prices.retrieve(by_id.id)
    again = client.v1.prices.retrieve(by_id.id, params={"expand": ["tiers"]})
    assert [t.up_to for t in again.tiers] == [100, 1000, None]
    bad = {**common, "tiers": TIERS[:2], "product": product.id}
    err = expect_error(stripe.InvalidRequestError, lambda: client.v1.prices.create(params=bad))
    assert err.param == "tiers[1][up_to]"


def test_subscription_default_period_is_one_calendar_month_on_item_and_subscription(
    client: Any, ctl: EmulatorControl
) -> None:
    jan31 = timegm((2031, 1, 31, 12, 0, 0))
    ctl.set_now(jan31)
    meter = new_meter(client)
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, "graduated")
    item = sub["items"]["data"][0]
    assert item["current_period_start"] == sub.current_period_start
    assert abs(sub.current_period_start - jan31) <= 2
    # one month after January 31 is clamped to February 28 (2031 is no leap year)
    assert sub.current_period_end == timegm((2031, 2, 28, 12, 0, 0)) + (
        sub.current_period_start - jan31
    )
    assert item["current_period_end"] == sub.current_period_end
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_subscription_prices_carry_their_tiers_only_when_expanded(client: Any) -> None:
    meter = new_meter(client, formula="last")
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, "graduated")
    assert "tiers" not in sub["items"]["data"][0]["price"]
    plain = client.v1.subscriptions.list(params={"customer": cus.id})
    assert "tiers" not in plain.data[0]["items"]["data"][0]["price"]
    one = client.v1.subscriptions.retrieve(sub.id, params={"expand": ["items.data.price.tiers"]})
    tiers = one["items"]["data"][0]["price"]["tiers"]
    assert [t["up_to"] for t in tiers] == [100, 1000, None]
    price = client.v1.prices.retrieve(sub["items"]["data"][0]["price"]["id"])
    assert "tiers" not in price
    price = client.v1.prices.retrieve(price.id, params={"expand": ["tiers"]})
    assert len(price["tiers"]) == 3


def test_currency_options_come_only_when_expanded_and_fix_a_subscription_currency(
    client: Any,
) -> None:
    meter = new_meter(client, formula="last")
    cus = new_customer(client)
    price = client.v1.prices.create(
        params={
            "currency": "eur",
            "unit_amount": 10,
            "currency_options": {"usd": {"unit_amount": 12}},
            "product_data": {"name": "two currencies"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    assert "currency_options" not in price
    price = client.v1.prices.retrieve(price.id, params={"expand": ["currency_options"]})
    assert price["currency_options"]["usd"]["unit_amount"] == 12
    err = expect_error(
        stripe.InvalidRequestError,
        lambda: client.v1.subscriptions.create(
            params={"customer": cus.id, "currency": "gbp", "items": [{"price": price.id}]}
        ),
    )
    assert err.param == "items[0][price]"
    sub = client.v1.subscriptions.create(
        params={"customer": cus.id, "currency": "usd", "items": [{"price": price.id}]}
    )
    send(client, cus.id, 5, timestamp=sub.current_period_start)
    invoice = client.v1.invoices.create_preview(params={"subscription": sub.id})
    assert (sub.currency, invoice.currency, invoice.amount_due) == ("usd", "usd", 60)


def test_expansions_deeper_than_four_levels_are_refused_as_stripe_does(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client, formula="last")
    cus = new_customer(client)
    metered_subscription(client, meter, cus, "graduated")
    # a list's leading "data" counts: five levels
    err = expect_error(
        stripe.InvalidRequestError,
        lambda: client.v1.subscriptions.list(
            params={"customer": cus.id, "expand": ["data.items.data.price.tiers"]}
        ),
    )
    assert err.http_status == 400
    assert err.user_message == "You cannot expand more than 4 levels of a property."
    # four levels are accepted
    listed = client.v1.subscriptions.list(
        params={"customer": cus.id, "expand": ["data.items.data.price"]}
    )
    assert listed.data[0]["items"]["data"][0]["price"]["recurring"]["meter"] == meter.id
    # a POST too, before it executes: nothing is created
    before = len(client.v1.customers.list(params={"limit": 100}).data)
    expect_error(
        stripe.InvalidRequestError,
        lambda: client.v1.customers.create(params={"name": "x", "expand": ["a.b.c.d.e"]}),
    )
    assert len(client.v1.customers.list(params={"limit": 100}).data) == before


def test_one_item_period_can_differ_from_the_subscription(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, "graduated")
    item = sub["items"]["data"][0]["id"]
    start = sub.current_period_start
    ctl.set_subscription_period(sub.id, start - 100, start + 100, item=item)
    again = client.v1.subscriptions.retrieve(sub.id)
    assert again["items"]["data"][0]["current_period_start"] == start - 100
    assert again["items"]["data"][0]["current_period_end"] == start + 100
    assert again.current_period_start == start


def test_subscription_with_short_period_advances_to_the_next_period_on_request(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, "graduated", period_seconds=3600)
    start, end = sub.current_period_start, sub.current_period_end
    assert end - start == 3600
    state = ctl.advance_subscription(sub.id, at="end")
    assert [(p["start"], p["end"], p["current"]) for p in state["periods"]] == [
        (start, end, False),
        (end, end + 3600, True),
    ]
    fresh = client.v1.subscriptions.retrieve(sub.id)
    assert (fresh.current_period_start, fresh.current_period_end) == (end, end + 3600)
    assert fresh["items"]["data"][0]["current_period_start"] == end
    now_state = ctl.advance_subscription(sub.id, at="now")
    current = now_state["periods"][-1]
    assert abs(current["start"] - ctl.now()) <= 2
    assert current["end"] - current["start"] == 3600


def test_subscription_rolls_over_by_itself_when_the_clock_passes_the_period_end(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, "graduated", period_seconds=600)
    ctl.advance_clock(1500)
    fresh = client.v1.subscriptions.retrieve(sub.id)
    assert fresh.current_period_start == sub.current_period_start + 1200
    assert fresh.current_period_end == sub.current_period_start + 1800
    listed = client.v1.subscriptions.list(params={"customer": cus.id})
    assert [s.id for s in listed.data] == [sub.id]
    assert listed.data[0].current_period_start == fresh.current_period_start


def test_future_billing_cycle_anchor_makes_a_short_first_period(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 3,
            "recurring": {"interval": "day", "usage_type": "metered", "meter": meter.id},
            "product_data": {"name": "Daily"},
        }
    )
    anchor = int(ctl.now()) + 300
    sub = client.v1.subscriptions.create(
        params={"customer": cus.id, "items": [{"price": price.id}], "billing_cycle_anchor": anchor}
    )
    assert sub.current_period_end == anchor
    assert sub.billing_cycle_anchor == anchor
    state = ctl.advance_subscription(sub.id, at="end")
    assert (state["periods"][-1]["start"], state["periods"][-1]["end"]) == (anchor, anchor + DAY)


@pytest.mark.parametrize(
    ("mode", "usage", "expected"),
    [
        # graduated: 100×10+500 | 900×5+200 | 500×1
        ("graduated", 1500, 1000 + 500 + 4500 + 200 + 500),
        ("graduated", 100, 1000 + 500),
        ("graduated", 101, 1000 + 500 + 5 + 200),
        # volume: every unit at the tier the total falls in, plus that tier's flat amount
        ("volume", 1500, 1500 * 1),
        ("volume", 500, 500 * 5 + 200),
        ("volume", 100, 100 * 10 + 500),
        # 0 falls in the first tier, whose flat amount Stripe bills (Set up tiered pricing)
        ("graduated", 0, 500),
        ("volume", 0, 500),
    ],
)
def test_invoice_preview_prices_the_last_value_of_the_current_period_with_the_tiers(
    client: Any, ctl: EmulatorControl, mode: str, usage: int, expected: int
) -> None:
    meter = new_meter(client, formula="last")
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, mode, period_seconds=3600)
    start = sub.current_period_start
    send(client, cus.id, 999_999, timestamp=start - 1)  # previous period: not billed here
    if usage:
        send(client, cus.id, usage + 7, timestamp=start)
        send(client, cus.id, usage, timestamp=start + 1)
    invoice = client.v1.invoices.create_preview(params={"customer": cus.id, "subscription": sub.id})
    assert invoice.object == "invoice"
    assert invoice.amount_due == expected
    assert invoice.total == expected
    [line] = invoice.lines.data
    assert line.quantity == usage
    assert (line.period.start, line.period.end) == (start, sub.current_period_end)


def test_invoice_preview_follows_the_subscription_into_its_next_period(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client, formula="last")
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, "volume", period_seconds=3600)
    send(client, cus.id, 50, timestamp=sub.current_period_start)
    ctl.advance_clock(60)
    state = ctl.advance_subscription(sub.id, at="now")
    assert state["periods"][0]["end"] - state["periods"][0]["start"] in (60, 61)
    assert state["periods"][0]["amount"] == 50 * 10 + 500
    new_start = state["periods"][-1]["start"]
    send(client, cus.id, 2000, timestamp=new_start)
    invoice = client.v1.invoices.create_preview(params={"customer": cus.id})
    assert invoice.amount_due == 2000
    assert invoice.parent.subscription_details.subscription == sub.id


def test_upcoming_invoice_get_matches_create_preview(client: Any) -> None:
    meter = new_meter(client, formula="sum")
    cus = new_customer(client)
    sub = metered_subscription(client, meter, cus, "graduated", period_seconds=3600)
    send(client, cus.id, 60, timestamp=sub.current_period_start)
    send(client, cus.id, 60, timestamp=sub.current_period_start + 5)
    raw = client.raw_request("get", "/v1/invoices/upcoming", customer=cus.id)
    upcoming = client.deserialize(raw, api_mode="V1")
    assert upcoming.amount_due == 1000 + 500 + 20 * 5 + 200


def test_invoice_preview_for_customer_without_subscription_is_an_error(client: Any) -> None:
    cus = new_customer(client)
    err = expect_error(
        stripe.InvalidRequestError,
        lambda: client.v1.invoices.create_preview(params={"customer": cus.id}),
    )
    assert err.code == "invoice_upcoming_none"


# ---------------------------------------------------------------------------------------------
# faults, rate limits, concurrency
# ---------------------------------------------------------------------------------------------


def test_injected_500_is_the_stored_answer_of_its_idempotency_key(
    emulator: tuple[StripeEmulatorServer, str], client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.fail_next(1, path_prefix=EVENTS)
    retrying = make_client(emulator[1], retries=2)
    params = {
        "event_name": "api_calls",
        "payload": {"stripe_customer_id": cus.id, "value": "5"},
        "identifier": "r-1",
    }
    # the SDK retries the 500 with the same key: Stripe replays the stored 500 each time
    err = expect_error(
        stripe.APIError,
        lambda: retrying.v1.billing.meter_events.create(
            params=params, options={"idempotency_key": "key-1"}
        ),
    )
    assert err.http_status == 500
    assert err.headers.get("Idempotent-Replayed") == "true"
    assert ctl.stats()["requests"][EVENTS] == 3
    assert ctl.fault_counts() == {"error": 1}
    assert ctl.meter_events() == []
    # later, the same key still gets the 500; a new key executes
    expect_error(
        stripe.APIError,
        lambda: client.v1.billing.meter_events.create(
            params=params, options={"idempotency_key": "key-1"}
        ),
    )
    event = client.v1.billing.meter_events.create(
        params=params, options={"idempotency_key": "key-2"}
    )
    assert event.identifier == "r-1"
    assert len(ctl.meter_events()) == 1


def test_idempotency_keys_are_forgotten_after_24_hours(client: Any, ctl: EmulatorControl) -> None:
    new_meter(client)
    cus = new_customer(client)
    params = {"event_name": "api_calls", "payload": {"stripe_customer_id": cus.id, "value": "2"}}
    client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "old"})
    ctl.advance_clock(23 * 3600)
    client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "old"})
    assert len(ctl.meter_events()) == 1
    ctl.advance_clock(3600)
    client.v1.billing.meter_events.create(params=params, options={"idempotency_key": "old"})
    assert len(ctl.meter_events()) == 2


def test_a_request_refused_for_its_parameters_stores_no_answer(
    client: Any, ctl: EmulatorControl
) -> None:
    params = {
        "display_name": "m",
        "event_name": "m",
        "default_aggregation": {"formula": "median"},
    }
    opts = {"idempotency_key": "refused"}
    for _ in range(2):  # executed again, not replayed
        err = expect_error(
            stripe.InvalidRequestError,
            lambda: client.v1.billing.meters.create(params=params, options=opts),
        )
        assert "Idempotent-Replayed" not in (err.headers or {})


def test_the_stripe_version_header_of_each_request_is_counted(
    emulator: tuple[StripeEmulatorServer, str], ctl: EmulatorControl
) -> None:
    pinned = stripe.StripeClient(
        "sk_test_emulator", base_addresses={"api": emulator[1]}, stripe_version="2099-01-01.x"
    )
    pinned.v1.customers.create(params={"name": "v"})
    pinned.v1.customers.list()
    assert ctl.stats()["stripe_versions"] == {"2099-01-01.x": 2}


def test_injected_500_without_retries_raises_api_error_and_records_nothing(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.fail_next(1, status=503)
    err = expect_error(stripe.APIError, lambda: send(client, cus.id, 5))
    assert err.http_status == 503
    assert ctl.meter_events() == []


def test_fault_with_path_prefix_leaves_other_paths_alone(client: Any, ctl: EmulatorControl) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.fail_next(1, path_prefix=EVENTS)
    assert client.v1.customers.retrieve(cus.id).id == cus.id
    expect_error(stripe.APIError, lambda: send(client, cus.id, 1))
    assert send(client, cus.id, 1).payload["value"] == "1"
    assert ctl.faults()["rules"] == []


def test_drop_before_processing_records_nothing(client: Any, ctl: EmulatorControl) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.drop_next(1, path_prefix=EVENTS)
    expect_error(stripe.APIConnectionError, lambda: send(client, cus.id, 3, identifier="d-1"))
    assert ctl.meter_events() == []
    assert send(client, cus.id, 3, identifier="d-1").identifier == "d-1"
    assert ctl.fault_counts() == {"drop_before": 1}


def test_drop_after_processing_records_the_event_and_a_new_call_gets_the_duplicate_400(
    client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.drop_next(1, after=True, path_prefix=EVENTS)
    expect_error(stripe.APIConnectionError, lambda: send(client, cus.id, 3, identifier="d-2"))
    assert [(e["identifier"], e["value"]) for e in ctl.meter_events()] == [("d-2", 3)]
    err = expect_error(
        stripe.InvalidRequestError, lambda: send(client, cus.id, 3, identifier="d-2")
    )
    assert err.user_message == "An event already exists with identifier d-2"
    assert err.headers["stripe-should-retry"] == "false"
    assert len(ctl.meter_events()) == 1


def test_drop_after_processing_is_healed_by_an_sdk_retry_with_the_same_idempotency_key(
    emulator: tuple[StripeEmulatorServer, str], client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.drop_next(1, after=True, path_prefix=EVENTS)
    event = send(make_client(emulator[1], retries=2), cus.id, 3, identifier="d-3")
    assert event.identifier == "d-3"
    assert event.last_response.headers.get("Idempotent-Replayed") == "true"
    assert len(ctl.meter_events()) == 1


def test_delay_longer_than_the_client_timeout_is_abandoned_and_records_nothing(
    emulator: tuple[StripeEmulatorServer, str], client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.delay_next(1, 3.0, path_prefix=EVENTS)
    impatient = make_client(emulator[1], timeout=0.3)
    expect_error(stripe.APIConnectionError, lambda: send(impatient, cus.id, 3))
    deadline = time.monotonic() + 2
    while "abandoned" not in ctl.fault_counts() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ctl.fault_counts() == {"delay": 1, "abandoned": 1}
    assert ctl.meter_events() == []


def test_delay_after_processing_records_the_event_although_the_client_timed_out(
    emulator: tuple[StripeEmulatorServer, str], client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.delay_next(1, 2.0, after=True, path_prefix=EVENTS)
    impatient = make_client(emulator[1], timeout=0.3)
    expect_error(stripe.APIConnectionError, lambda: send(impatient, cus.id, 3, identifier="t-1"))
    assert [e["identifier"] for e in ctl.meter_events()] == ["t-1"]


def test_short_delay_is_served_late_but_successfully(client: Any, ctl: EmulatorControl) -> None:
    cus = new_customer(client)
    ctl.delay_next(1, 0.3)
    started = time.monotonic()
    assert client.v1.customers.retrieve(cus.id).id == cus.id
    assert time.monotonic() - started >= 0.3


def test_injected_429_raises_rate_limit_error_and_is_not_retried(
    emulator: tuple[StripeEmulatorServer, str], client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.rate_limit_next(1, path_prefix=EVENTS)
    err = expect_error(
        stripe.RateLimitError, lambda: send(make_client(emulator[1], retries=3), cus.id, 1)
    )
    assert err.http_status == 429
    assert err.error.code == "rate_limit"
    assert ctl.stats()["requests"][EVENTS] == 1
    assert ctl.meter_events() == []


def test_token_bucket_answers_429_beyond_the_configured_rate(
    client: Any, ctl: EmulatorControl
) -> None:
    cus = new_customer(client)
    ctl.set_rate_limit(5, burst=5)
    outcomes = []
    for _ in range(12):
        try:
            client.v1.customers.retrieve(cus.id)
            outcomes.append("ok")
        except stripe.RateLimitError:
            outcomes.append("429")
    assert outcomes[:5] == ["ok"] * 5
    assert outcomes.count("429") >= 5
    assert ctl.fault_counts()["bucket_429"] == outcomes.count("429")
    time.sleep(0.45)  # refills at 5 tokens per second
    assert client.v1.customers.retrieve(cus.id).id == cus.id
    ctl.set_rate_limit(None)
    for _ in range(30):
        client.v1.customers.retrieve(cus.id)


def _outcomes(client: Any, customer: str, calls: int) -> list[str]:
    result = []
    for _ in range(calls):
        try:
            client.v1.customers.retrieve(customer)
            result.append("ok")
        except stripe.RateLimitError:
            result.append("429")
        except stripe.APIError:
            result.append("500")
        except stripe.APIConnectionError:
            result.append("drop")
    return result


def test_seeded_random_failures_fail_about_the_ratio_and_repeat_with_the_seed(
    client: Any, ctl: EmulatorControl
) -> None:
    cus = new_customer(client)
    kinds = ["error", "rate_limit", "drop_before"]
    ctl.random_failures(0.5, seed=11, kinds=kinds)
    first = _outcomes(client, cus.id, 60)
    ctl.random_failures(0.5, seed=11, kinds=kinds)
    second = _outcomes(client, cus.id, 60)
    assert first == second
    failures = 60 - first.count("ok")
    assert 15 <= failures <= 45
    assert {"429", "500", "drop"} <= set(first)
    ctl.random_failures(0)
    assert _outcomes(client, cus.id, 10) == ["ok"] * 10


def test_concurrency_tracker_sees_two_overlapping_calls_for_one_customer(
    emulator: tuple[StripeEmulatorServer, str], client: Any, ctl: EmulatorControl
) -> None:
    new_meter(client)
    a, b = new_customer(client, "a@x"), new_customer(client, "b@x")
    ctl.delay_next(3, 0.4, path_prefix=EVENTS)
    errors: list[BaseException] = []

    def post(customer: str) -> None:
        try:
            send(make_client(emulator[1]), customer, 1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(c,)) for c in (a.id, a.id, b.id)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    info = ctl.concurrency()
    assert info["max_in_flight"] == {a.id: 2, b.id: 1}
    assert info["in_flight"] == {}
    assert ctl.max_concurrency(a.id) == 2
    assert ctl.max_concurrency(b.id) == 1
    assert ctl.max_concurrency() == 2


@pytest.mark.parametrize("after", [False, True])
def test_a_call_whose_client_timed_out_is_not_concurrent_with_the_retry(
    emulator: tuple[StripeEmulatorServer, str], client: Any, ctl: EmulatorControl, after: bool
) -> None:
    new_meter(client)
    cus = new_customer(client)
    ctl.delay_next(1, 1.5, after=after, path_prefix=EVENTS)
    retrying = make_client(emulator[1], retries=2, timeout=0.25)
    started = time.monotonic()
    assert send(retrying, cus.id, 4, identifier="slow").identifier == "slow"
    assert time.monotonic() - started < 1.2  # the retry did not wait for the stalled call
    assert [e["identifier"] for e in ctl.meter_events()] == ["slow"]
    assert ctl.max_concurrency(cus.id) == 1


def test_sequential_calls_never_count_as_concurrent(client: Any, ctl: EmulatorControl) -> None:
    new_meter(client)
    cus = new_customer(client)
    for i in range(5):
        send(client, cus.id, i)
    assert ctl.max_concurrency(cus.id) == 1
    assert ctl.concurrency()["violations"] == 0


def test_enforced_customer_concurrency_answers_429_to_the_overlapping_call() -> None:
    server, url = run_in_thread(rate_limit=None, enforce_customer_concurrency=True)
    try:
        client, ctl = make_client(url), EmulatorControl(url)
        new_meter(client)
        cus = new_customer(client)
        ctl.delay_next(1, 0.5, path_prefix=EVENTS)
        first = threading.Thread(target=send, args=(client, cus.id, 1))
        first.start()
        time.sleep(0.15)
        expect_error(stripe.RateLimitError, lambda: send(client, cus.id, 2))
        first.join()
        assert [e["value"] for e in ctl.meter_events()] == [1]
    finally:
        server.shutdown()
        server.server_close()


def test_configured_api_key_rejects_other_keys_with_authentication_error() -> None:
    server, url = run_in_thread(rate_limit=None, api_key="sk_test_right")
    try:
        wrong = stripe.StripeClient("sk_test_wrong", base_addresses={"api": url})
        expect_error(stripe.AuthenticationError, lambda: wrong.v1.customers.list())
        right = stripe.StripeClient("sk_test_right", base_addresses={"api": url})
        assert right.v1.customers.list().data == []
    finally:
        server.shutdown()
        server.server_close()


def test_reset_forgets_objects_events_and_faults_and_restores_the_rate_limit(
    client: Any, ctl: EmulatorControl
) -> None:
    meter = new_meter(client)
    cus = new_customer(client)
    send(client, cus.id, 1, identifier="x")
    ctl.fail_next(5)
    ctl.set_rate_limit(1, burst=1)
    ctl.reset()
    for _ in range(5):  # the module's emulator was started without a rate limit
        client.v1.customers.list()
    assert ctl.meter_events() == []
    assert ctl.faults() == {"rules": [], "random": None, "counts": {}}
    err = expect_error(
        stripe.InvalidRequestError, lambda: client.v1.billing.meters.retrieve(meter.id)
    )
    assert err.http_status == 404


def test_module_entry_point_serves_on_the_requested_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = str(Path(__file__).resolve().parents[2] / "python")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "active_series.devtools.stripe_emulator",
            "--port",
            str(port),
            "--quiet",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                if EmulatorControl(url, timeout=1).health():
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        assert make_client(url).v1.customers.create(params={"name": "n"}).id.startswith("cus_")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
