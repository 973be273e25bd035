"""The relay's v2 meter event stream client against the emulator, through the real stripe SDK:
sessions and their renewal, asynchronous refusals, duplicates, faults, and the record of
meter-event calls with its per-customer checks."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest
import stripe
from active_series.ratelimit import TokenBucket
from active_series.relay.config import RelayConfig
from active_series.relay.stripe_api import Outcome, StripeMeter
from active_series.relay.stripe_stream import MAX_BATCH, MeterEvent, MeterEventStream
from oracle import ingest, make_org
from relay_harness import (
    API_KEY,
    EVENT_NAME,
    Emulator,
    assert_increasing_timestamps,
    assert_one_call_per_customer,
    bill,
    billing_periods,
    periods,
    short_periods,
    wait_until,
)

STREAM = "/v2/billing/meter_event_stream"
SESSION = "/v2/billing/meter_event_session"
DAY = 86400


@pytest.fixture(autouse=True)
def fast_sdk_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK waits at least 0.5 s before a retry; shrink it so retry tests stay quick.
    monkeypatch.setattr(stripe._http_client.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe._http_client.HTTPClient, "MAX_DELAY", 0.02)


class FakeClock:
    """The stream's clock, moved by the test (the emulator's clock is moved apart)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(emu: Emulator, **overrides: Any) -> RelayConfig:
    return RelayConfig(dsn="", api_key=API_KEY, api_base=emu.url, **overrides)


def stream(
    emu: Emulator, *, clock: Callable[[], float] | None = None, **overrides: Any
) -> MeterEventStream:
    cfg = config(emu, **overrides)
    if clock is None:
        return MeterEventStream(cfg, TokenBucket(0))
    return MeterEventStream(cfg, TokenBucket(0), clock=clock)


def now(emu: Emulator) -> int:
    return int(emu.ctl.now())


def events_of(emu: Emulator) -> list[tuple[str, str, int, int]]:
    return [(e["identifier"], e["customer"], e["value"], e["timestamp"]) for e in emu.events()]


def sessions_created(emu: Emulator) -> int:
    return int(emu.ctl.configure_stream()["sessions"])


def statuses(emu: Emulator, path: str = STREAM) -> list[Any]:
    return [c["status"] for c in emu.ctl.calls() if c["path"] == path]


# ---- sending and recording ---------------------------------------------------------------------


def test_a_batch_is_recorded_like_v1_events(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    a, b = emu.customer("a"), emu.customer("b")
    t = now(emu)
    s = stream(emu)
    batch = [
        MeterEvent(a, 3, t - 20, "a-1"),
        MeterEvent(b, 7, t - 15, "b-1"),
        MeterEvent(a, 5, t - 10, "a-2"),
    ]
    assert s.send(batch) == (Outcome.OK, "")
    assert events_of(emu) == [
        ("a-1", a, 3, t - 20),
        ("b-1", b, 7, t - 15),
        ("a-2", a, 5, t - 10),
    ]
    start = dt.datetime.fromtimestamp(t - DAY, dt.UTC)
    end = dt.datetime.fromtimestamp(t + 60, dt.UTC)
    assert emu.last_value(a, start, end) == 5
    assert emu.last_value(b, start, end) == 7
    # the v1 client and the stream record the same thing
    StripeMeter(config(emu)).post(a, 9, t - 5, "a-3")
    assert emu.last_value(a, start, end) == 9
    assert [e["payload"] for e in emu.events(a)][-2:] == [
        {"stripe_customer_id": a, "value": "5"},
        {"stripe_customer_id": a, "value": "9"},
    ]
    assert s.refusals() == []
    assert_increasing_timestamps(emu)


def test_a_batch_of_more_than_100_events_is_refused_whole(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    cus = emu.customer()
    t = now(emu)
    s = stream(emu)
    with pytest.raises(AssertionError):
        s.send([MeterEvent(cus, i, t - 200 + i, f"x-{i}") for i in range(MAX_BATCH + 1)])
    # through the SDK directly, as Stripe would: 400, nothing recorded
    token = emu.client.v2.billing.meter_event_session.create().authentication_token
    client = stripe.StripeClient(token, base_addresses={"api": emu.url, "meter_events": emu.url})
    events: Any = [
        {
            "event_name": EVENT_NAME,
            "payload": {"stripe_customer_id": cus, "value": str(i)},
            "identifier": f"x-{i}",
        }
        for i in range(MAX_BATCH + 1)
    ]
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v2.billing.meter_event_stream.create(params={"events": events})
    assert refused.value.http_status == 400
    assert emu.events() == []
    assert s.send([MeterEvent(cus, i, t - 200 + i, f"x-{i}") for i in range(MAX_BATCH)]) == (
        Outcome.OK,
        "",
    )
    assert len(emu.events()) == MAX_BATCH


def test_a_resent_batch_and_duplicate_identifiers_are_recorded_once(
    relay_emulator: Emulator,
) -> None:
    emu = relay_emulator
    cus = emu.customer()
    t = now(emu)
    s = stream(emu)
    batch = [MeterEvent(cus, 1, t - 30, "d-1"), MeterEvent(cus, 2, t - 20, "d-2")]
    assert s.send(batch) == (Outcome.OK, "")
    assert s.send(batch) == (Outcome.OK, "")
    # a duplicate within one request, and one already recorded through v1
    StripeMeter(config(emu)).post(cus, 4, t - 5, "d-4")
    again = [MeterEvent(cus, 3, t - 10, "d-3"), MeterEvent(cus, 99, t - 9, "d-3")]
    assert s.send([*again, MeterEvent(cus, 98, t - 1, "d-4")]) == (Outcome.OK, "")
    assert [(e["identifier"], e["value"]) for e in emu.events()] == [
        ("d-1", 1),
        ("d-2", 2),
        ("d-4", 4),
        ("d-3", 3),
    ]
    assert s.refusals() == []  # duplicates are ignored, not reported


# ---- sessions ------------------------------------------------------------------------------------


def test_sends_keep_succeeding_across_short_sessions(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    emu.ctl.configure_stream(session_ttl=1.0)
    cus = emu.customer()
    s = stream(emu)
    sent: list[MeterEvent] = []

    def send_one() -> bool:
        event = MeterEvent(cus, len(sent), now(emu) - 100 + len(sent), f"s-{len(sent)}")
        assert s.send([event]) == (Outcome.OK, "")
        sent.append(event)
        return sessions_created(emu) >= 3

    wait_until(send_one, 30, "three sessions used")
    assert [e["identifier"] for e in emu.events()] == [e.identifier for e in sent]
    assert all(status == 200 for status in statuses(emu, SESSION))


def test_a_session_due_for_renewal_is_renewed_before_use(relay_emulator: Emulator) -> None:
    emu = relay_emulator  # sessions last 15 minutes (emulator default)
    cus = emu.customer()
    clock = FakeClock()
    s = stream(emu, clock=clock, stream_session_margin=60)
    t = now(emu)
    assert s.send([MeterEvent(cus, 1, t - 3, "r-1")]) == (Outcome.OK, "")
    clock.now += 900 - 60 - 1
    assert s.send([MeterEvent(cus, 2, t - 2, "r-2")]) == (Outcome.OK, "")
    assert sessions_created(emu) == 1
    clock.now += 2  # inside the margin: renewed first, never refused
    assert s.send([MeterEvent(cus, 3, t - 1, "r-3")]) == (Outcome.OK, "")
    assert sessions_created(emu) == 2
    assert statuses(emu) == [200, 200, 200]
    assert [e["value"] for e in emu.events()] == [1, 2, 3]


def test_an_expired_session_is_renewed_and_the_batch_sent_again(
    relay_emulator: Emulator,
) -> None:
    emu = relay_emulator
    cus = emu.customer()
    s = stream(emu)
    t = now(emu)
    assert s.send([MeterEvent(cus, 1, t - 2, "e-1")]) == (Outcome.OK, "")
    emu.ctl.advance_clock(15 * 60 + 1)  # the token expires; the client cannot know
    assert s.send([MeterEvent(cus, 2, t - 1, "e-2")]) == (Outcome.OK, "")
    assert statuses(emu) == [200, 401, 200]
    assert sessions_created(emu) == 2
    assert [e["value"] for e in emu.events()] == [1, 2]


def test_threads_share_one_session_and_renew_it_once(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    customers = [emu.customer(f"c{i}") for i in range(6)]
    s = stream(emu)
    t = now(emu)
    outcomes: list[tuple[Outcome, str]] = []

    def run(round_: int) -> None:
        threads = [
            threading.Thread(
                target=lambda c=c: outcomes.append(
                    s.send([MeterEvent(c, round_, t - 10 + round_, f"{c}-{round_}")])
                )
            )
            for c in customers
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    run(1)
    assert sessions_created(emu) == 1
    emu.ctl.advance_clock(15 * 60 + 1)
    # threads refused with the old token (at least the first; the others may already find the
    # new one) renew it once between them
    run(2)
    assert sessions_created(emu) == 2
    assert outcomes == [(Outcome.OK, "")] * 12
    assert 1 <= statuses(emu).count(401) <= len(customers)
    assert len(emu.events()) == 12
    assert_one_call_per_customer(emu)


# ---- asynchronous refusals -----------------------------------------------------------------------


def test_refused_events_are_reported_under_their_requests_key_and_not_recorded(
    relay_emulator: Emulator,
) -> None:
    emu = relay_emulator
    cus = emu.customer()
    t = now(emu)
    s = stream(emu)
    batch = [
        MeterEvent(cus, 1, t - 10, "ok-1"),
        MeterEvent("cus_unknown", 5, t - 9, "bad-customer"),
        MeterEvent(cus, 6, t - 36 * DAY, "bad-old"),
        MeterEvent(cus, 7, t + 3600, "bad-future"),
        MeterEvent(cus, -1, t - 8, "bad-value"),
        MeterEvent(cus, 2, t - 7, "ok-2"),
    ]
    assert s.send(batch, key="batch-1") == (Outcome.OK, "")  # validation comes later
    assert [e["identifier"] for e in emu.events()] == ["ok-1", "ok-2"]
    refused = s.refusals()
    # one report (one meter, one request): each sample names the request, not the event
    assert sorted((r.key, r.code) for r in refused) == [
        ("batch-1", "meter_event_customer_not_found"),
        ("batch-1", "meter_event_invalid_value"),
        ("batch-1", "timestamp_in_future"),
        ("batch-1", "timestamp_too_far_in_past"),
    ]
    assert {(r.error_count, r.sampled, r.unsampled) for r in refused} == {(4, 4, 0)}
    assert all(r.message for r in refused)
    assert s.refusals() == []  # reported once per process
    assert s.send([MeterEvent("cus_other", 1, t - 5, "bad-2")], key="batch-2") == (Outcome.OK, "")
    [again] = s.refusals()
    assert (again.key, again.code) == ("batch-2", "meter_event_customer_not_found")
    assert again.message == "No such customer: 'cus_other'"
    # a new process reads every report the Events API holds
    assert sorted({r.key for r in stream(emu).refusals()}) == ["batch-1", "batch-2"]


def test_a_request_without_a_key_gets_a_fresh_one_per_request(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    s = stream(emu)
    t = now(emu)
    for i in range(2):
        assert s.send([MeterEvent("cus_unknown", 1, t - 1, f"n-{i}")]) == (Outcome.OK, "")
    keys = [r.key for r in s.refusals()]
    assert len(set(keys)) == 2
    assert all(k.startswith("stream:") for k in keys)


def test_a_report_with_fewer_samples_than_errors_says_so(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    emu.ctl.configure_stream(error_report_samples=2)
    s = stream(emu)
    t = now(emu)
    batch = [MeterEvent(f"cus_gone{i}", 1, t - 1, f"u-{i}") for i in range(5)]
    assert s.send(batch, key="few") == (Outcome.OK, "")
    refused = s.refusals()
    assert [(r.key, r.error_count, r.sampled, r.unsampled) for r in refused] == [
        ("few", 5, 2, 3)
    ] * 2


def test_late_error_reports_are_read_when_they_appear(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    emu.ctl.configure_stream(error_report_delay=30)
    s = stream(emu)
    t = now(emu)
    assert s.send([MeterEvent("cus_unknown", 1, t - 1, "late-1")], key="late") == (Outcome.OK, "")
    assert s.refusals() == []
    emu.ctl.advance_clock(31)
    assert [r.key for r in s.refusals()] == ["late"]
    assert emu.events() == []


def test_v1_refusals_are_read_from_the_same_reports(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    s = stream(emu)
    t = now(emu)
    meter = StripeMeter(config(emu))
    assert meter.post("cus_unknown", 1, t - 1, "v1-1", key="v1-key") == (Outcome.OK, "")
    assert meter.post(emu.customer(), 1, t - 36 * DAY, "v1-2", key="v1-old") == (Outcome.OK, "")
    assert emu.events() == []
    assert sorted((r.key, r.code) for r in s.refusals()) == [
        ("v1-key", "meter_event_customer_not_found"),
        ("v1-old", "timestamp_too_far_in_past"),
    ]


def test_error_reports_through_the_sdk_events_api(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    s = stream(emu)
    t = now(emu)
    assert s.send([MeterEvent("cus_nobody", 1, t - 1, "sdk-1")], key="sdk-key") == (
        Outcome.OK,
        "",
    )
    listed = emu.client.v2.core.events.list(params={"object_id": emu.meter})
    assert len(listed.data) == 1
    event: Any = emu.client.v2.core.events.retrieve(listed.data[0].id)
    assert event.type == "v1.billing.meter.error_report_triggered"
    assert event.related_object.id == emu.meter
    kind = event.data.reason.error_types[0]
    assert (kind.code, kind.error_count) == ("meter_event_customer_not_found", 1)
    assert kind.sample_errors[0].request.identifier == "sdk-key"
    # events of an unknown event name: no meter, a no_meter_found event
    token = emu.client.v2.billing.meter_event_session.create().authentication_token
    client = stripe.StripeClient(token, base_addresses={"api": emu.url, "meter_events": emu.url})
    params: Any = {
        "events": [{"event_name": "nope", "payload": {"stripe_customer_id": "c", "value": "1"}}]
    }
    client.v2.billing.meter_event_stream.create(params=params)
    found: Any = emu.client.v2.core.events.list(
        params={"types": ["v1.billing.meter.no_meter_found"]}
    )
    assert [e.data.reason.error_types[0].code for e in found.data] == ["no_meter"]


def test_refusals_read_every_page(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    s = stream(emu)
    t = now(emu)
    for i in range(105):  # one report per request: more than a page of 100
        batch = [MeterEvent("cus_unknown", 1, t - 1, f"p-{i}")]
        assert s.send(batch, key=f"k-{i}") == (Outcome.OK, "")
    assert sorted(r.key for r in s.refusals()) == sorted(f"k-{i}" for i in range(105))


# ---- faults and limits ---------------------------------------------------------------------------


def test_a_5xx_then_success_records_the_batch_once(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    cus = emu.customer()
    t = now(emu)
    s = stream(emu, max_network_retries=2)
    emu.ctl.fail_next(1, status=500, path_prefix=STREAM)
    assert s.send([MeterEvent(cus, 1, t - 3, "f-1")]) == (Outcome.OK, "")
    assert statuses(emu) == [500, 200]
    # recorded, then the connection drops: the SDK's retry is answered from idempotency
    emu.ctl.drop_next(1, after=True, path_prefix=STREAM)
    assert s.send([MeterEvent(cus, 2, t - 2, "f-2")]) == (Outcome.OK, "")
    assert statuses(emu)[2:] == ["dropped", 200]
    assert [e["identifier"] for e in emu.events()] == ["f-1", "f-2"]


def test_failures_without_retries_map_to_outcomes(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    cus = emu.customer()
    t = now(emu)
    s = stream(emu, max_network_retries=0)
    batch = [MeterEvent(cus, 1, t - 3, "g-1")]
    emu.ctl.fail_next(1, status=503, path_prefix=STREAM)
    assert s.send(batch)[0] == Outcome.TRANSIENT
    emu.ctl.rate_limit_next(1, path_prefix=STREAM)
    assert s.send(batch)[0] == Outcome.RATE_LIMITED
    emu.ctl.fail_next(1, status=500, path_prefix=SESSION)
    emu.ctl.advance_clock(15 * 60 + 1)  # the renewal fails: the batch waits
    assert s.send(batch)[0] == Outcome.TRANSIENT
    assert emu.events() == []
    assert s.send(batch) == (Outcome.OK, "")
    assert s.send(batch) == (Outcome.OK, "")  # resent after success: still once
    assert [e["identifier"] for e in emu.events()] == ["g-1"]


def test_the_rate_limit_counts_stream_requests(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    cus = emu.customer()
    s = stream(emu, max_network_retries=0)
    s.send([MeterEvent(cus, 1, now(emu) - 1, "l-1")])  # the session exists from now on
    emu.ctl.set_rate_limit(0.001, burst=1)
    t = now(emu)
    assert s.send([MeterEvent(cus, 2, t - 1, "l-2")]) == (Outcome.OK, "")
    assert s.send([MeterEvent(cus, 3, t, "l-3")])[0] == Outcome.RATE_LIMITED
    assert emu.ctl.fault_counts().get("bucket_429") == 1


def test_a_bad_api_key_is_global(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    emu.server.state.api_key = API_KEY
    cfg = RelayConfig(dsn="", api_key="sk_test_wrong", api_base=emu.url)
    outcome, reason = MeterEventStream(cfg, TokenBucket(0)).send(
        [MeterEvent("cus_x", 1, now(emu), "k-1")]
    )
    assert outcome == Outcome.GLOBAL, reason


# ---- the call record -----------------------------------------------------------------------------


def test_the_call_record_holds_every_meter_event_call(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    a, b = emu.customer("a"), emu.customer("b")
    t = now(emu)
    s = stream(emu)
    StripeMeter(config(emu)).post(a, 1, t - 5, "c-1")
    assert s.send([MeterEvent(a, 2, t - 4, "c-2"), MeterEvent(b, 3, t - 4, "c-3")])[0] == (
        Outcome.OK
    )
    emu.ctl.advance_clock(15 * 60 + 1)
    s.send([MeterEvent(b, 4, t - 3, "c-4")])
    calls = emu.ctl.calls()
    assert [(c["path"], c["customers"], c["events"], c["status"]) for c in calls] == [
        ("/v1/billing/meter_events", [a], 1, 200),
        (STREAM, sorted([a, b]), 2, 200),
        (STREAM, [b], 1, 401),
        (STREAM, [b], 1, 200),
    ]
    assert all(c["start"] <= c["finish"] for c in calls)
    assert [c["seq"] for c in emu.ctl.calls(customer=a)] == [1, 2]
    assert_one_call_per_customer(emu)


def test_overlapping_calls_for_one_customer_fail_the_check(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    a, b = emu.customer("a"), emu.customer("b")
    t = now(emu)
    s = stream(emu)
    s.send([MeterEvent(b, 1, t - 9, "o-0")])
    emu.ctl.delay_next(1, 1.0, path_prefix=STREAM)
    slow = threading.Thread(target=lambda: s.send([MeterEvent(a, 1, t - 8, "o-1")]))
    slow.start()
    wait_until(
        lambda: any(c["finish"] is None for c in emu.ctl.calls(customer=a)), 10, "a call in flight"
    )
    # another customer meanwhile is fine
    assert s.send([MeterEvent(b, 2, t - 7, "o-2")])[0] == Outcome.OK
    assert_one_call_per_customer(emu)
    # the same customer meanwhile (here through v1) is an overlap
    StripeMeter(config(emu)).post(a, 2, t - 6, "o-3")
    with pytest.raises(AssertionError, match="in flight"):
        assert_one_call_per_customer(emu)
    slow.join()
    with pytest.raises(AssertionError, match="in flight"):
        assert_one_call_per_customer(emu)


def test_timestamps_may_restart_in_a_new_period_only(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    cus = emu.customer()
    t = now(emu) - 1000
    s = stream(emu)
    first = (dt.datetime.fromtimestamp(t, dt.UTC), dt.datetime.fromtimestamp(t + 100, dt.UTC))
    second = (first[1], dt.datetime.fromtimestamp(t + 200, dt.UTC))
    periods = {cus: [first, second]}
    # the new period's first value, then the old period's final one
    s.send([MeterEvent(cus, 5, t + 150, "t-1"), MeterEvent(cus, 4, t + 90, "t-2")])
    assert_increasing_timestamps(emu, periods)
    with pytest.raises(AssertionError):
        assert_increasing_timestamps(emu)
    # within a period, never back
    s.send([MeterEvent(cus, 6, t + 160, "t-3"), MeterEvent(cus, 7, t + 155, "t-4")])
    with pytest.raises(AssertionError, match="period 1"):
        assert_increasing_timestamps(emu, periods)


def test_billing_periods_are_read_from_the_database(conn: Any, relay_emulator: Emulator) -> None:
    emu = relay_emulator
    org = make_org(conn, "periods")
    cus = emu.customer()
    bill(conn, org.id, cus)
    start = short_periods(conn, org.id, 60)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    got = billing_periods(conn, {org.id: cus})
    assert list(got) == [cus]
    assert got[cus] == [(s, e) for s, e, _ in periods(conn, org.id)]
    assert got[cus][0][0] >= start
    t = int(got[cus][-1][0].timestamp())
    s = stream(emu)
    s.send([MeterEvent(cus, 2, t + 1, "db-1"), MeterEvent(cus, 1, t - 1, "db-2")])
    assert_increasing_timestamps(emu, got)  # the second event is in the previous period
    s.send([MeterEvent(cus, 3, t, "db-3")])
    with pytest.raises(AssertionError, match=cus):
        assert_increasing_timestamps(emu, got)


def test_a_token_refused_twice_is_transient(relay_emulator: Emulator) -> None:
    emu = relay_emulator
    emu.ctl.configure_stream(session_ttl=0)  # every token is born expired
    cus = emu.customer()
    outcome, reason = stream(emu).send([MeterEvent(cus, 1, now(emu), "z-1")])
    assert outcome == Outcome.TRANSIENT
    assert "billing_meter_event_session_expired" in reason
    assert statuses(emu) == [401, 401]
    assert sessions_created(emu) == 2
    assert emu.events() == []
