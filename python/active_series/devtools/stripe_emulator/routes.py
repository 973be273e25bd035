"""The route tables: which method and path each resource answers.

A Stripe route is ``(method, path pattern, handler)``; a handler gets the state, the path's
match, the request's parameters and its idempotency key, and returns the object to answer
with (status 200). A control route (``/_emulator/...``, never a Stripe path) is the same
with ``"*"`` for any method, and gets the query and the JSON body instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from .common import ApiError, Json
from .params import paginate
from .state import EmulatorState

StripeHandler = Callable[[EmulatorState, re.Match[str], Json, str | None], Json]
ControlHandler = Callable[[EmulatorState, re.Match[str], dict[str, str], Json, str], Any]


def _page(items: Callable[[EmulatorState, Json], list[Json]]) -> StripeHandler:
    """A list endpoint: the items, one page of them."""
    return lambda st, hit, p, key: paginate(items(st, p), p, hit.string)


STRIPE_ROUTES: list[tuple[str, re.Pattern[str], StripeHandler]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        # meters and meter events (meters.py)
        ("POST", r"/v1/billing/meter_events", lambda st, h, p, k: st.create_meter_event(p, k)),
        (
            "POST",
            r"/v1/billing/meter_event_adjustments",
            lambda st, h, p, k: st.adjust_meter_event(p),
        ),
        ("POST", r"/v1/billing/meters", lambda st, h, p, k: st.create_meter(p)),
        # meter event streams and their error reports, v2 (streams.py); the session is created
        # by the server, which knows the API key
        (
            "POST",
            r"/v2/billing/meter_event_stream",
            lambda st, h, p, k: st.stream_meter_events(p, k),
        ),
        ("GET", r"/v2/core/events", lambda st, h, p, k: st.list_thin_events(p, h.string)),
        ("GET", r"/v2/core/events/([^/]+)", lambda st, h, p, k: st.get_thin_event(h[1])),
        ("GET", r"/v1/billing/meters", _page(lambda st, p: st.list_meters(p))),
        ("GET", r"/v1/billing/meters/([^/]+)", lambda st, h, p, k: st.get_meter(h[1])),
        (
            "POST",
            r"/v1/billing/meters/([^/]+)/(deactivate|reactivate)",
            lambda st, h, p, k: st.set_meter_status(h[1], h[2] == "reactivate"),
        ),
        (
            "GET",
            r"/v1/billing/meters/([^/]+)/event_summaries",
            lambda st, h, p, k: paginate(st.event_summaries(h[1], p), p, h.string),
        ),
        # customers (customers.py)
        ("POST", r"/v1/customers", lambda st, h, p, k: st.create_customer(p)),
        ("GET", r"/v1/customers", _page(lambda st, p: st.list_customers(p))),
        ("GET", r"/v1/customers/search", lambda st, h, p, k: st.search_customers(p, h.string)),
        ("GET", r"/v1/customers/([^/]+)", lambda st, h, p, k: st.get_customer(h[1])),
        # products, prices, subscriptions, invoices (billing.py)
        ("POST", r"/v1/products", lambda st, h, p, k: st.create_product(p)),
        ("GET", r"/v1/products/([^/]+)", lambda st, h, p, k: st.get_product(h[1])),
        ("POST", r"/v1/prices", lambda st, h, p, k: st.create_price(p)),
        ("GET", r"/v1/prices", _page(lambda st, p: st.list_prices(p))),
        ("GET", r"/v1/prices/([^/]+)", lambda st, h, p, k: st.get_price(h[1])),
        ("POST", r"/v1/subscriptions", lambda st, h, p, k: st.create_subscription(p)),
        ("GET", r"/v1/subscriptions", _page(lambda st, p: st.list_subscriptions(p))),
        ("GET", r"/v1/subscriptions/([^/]+)", lambda st, h, p, k: st.get_subscription(h[1]).obj),
        ("POST", r"/v1/subscriptions/([^/]+)", lambda st, h, p, k: st.update_subscription(h[1], p)),
        (
            "DELETE",
            r"/v1/subscriptions/([^/]+)",
            lambda st, h, p, k: st.cancel_subscription(h[1], p),
        ),
        ("POST", r"/v1/subscription_items", lambda st, h, p, k: st.create_subscription_item(p)),
        (
            "POST",
            r"/v1/subscription_items/([^/]+)",
            lambda st, h, p, k: st.update_subscription_item(h[1], p),
        ),
        ("POST", r"/v1/invoices/create_preview", lambda st, h, p, k: st.preview_invoice(p)),
        ("GET", r"/v1/invoices/upcoming", lambda st, h, p, k: st.preview_invoice(p)),
    ]
]


def route_stripe(
    state: EmulatorState, method: str, path: str, params: Json, key: str | None
) -> Json:
    """The answer of the Stripe route for ``method`` and ``path``; ApiError 404 for none."""
    for verb, pattern, handler in STRIPE_ROUTES:
        if verb == method and (hit := pattern.fullmatch(path)):
            return handler(state, hit, params, key)
    raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")


# ---------------------------------------------------------------- control API


def _clock(state: EmulatorState, body: Json, method: str) -> Json:
    if method == "POST":
        with state.lock:
            if "now" in body:
                state.clock_offset = float(body["now"]) - time.time()
            if "offset" in body:
                state.clock_offset = float(body["offset"])
            if "advance" in body:
                state.clock_offset += float(body["advance"])
    return {"now": state.now(), "offset": state.clock_offset}


def _faults(state: EmulatorState, body: Json, method: str) -> Json:
    if method == "POST":
        return state.add_fault_rule(body)
    if method == "DELETE":
        state.clear_faults()
    return state.faults_json()


def _reset(state: EmulatorState) -> Json:
    state.reset()
    return {"ok": True}


def _clear_faults(state: EmulatorState) -> Json:
    state.clear_faults()
    return state.faults_json()


def _rate_limit(state: EmulatorState, body: Json) -> Json:
    rate, burst = body.get("rate"), body.get("burst")
    return state.set_rate_limit(float(rate) if rate else None, float(burst) if burst else None)


def _stats(state: EmulatorState) -> Json:
    with state.lock:
        return {
            "requests": dict(state.request_counts),
            "faults": dict(state.fault_counts),
            "meter_events": len(state.events),
            "stripe_versions": dict(state.stripe_versions),
        }


def _summaries(state: EmulatorState, body: Json) -> Json:
    """Event summaries' lag: events count in them only this many seconds after receipt."""
    with state.lock:
        if body.get("lag") is not None:
            state.summary_lag = max(0.0, float(body["lag"]))
        return {"lag": state.summary_lag}


def _aggregate(state: EmulatorState, q: dict[str, str]) -> Json:
    start, end = float(q["start"]), float(q["end"])
    return {"value": state.aggregate(q["meter"], q["customer"], start, end)}


CONTROL_ROUTES: list[tuple[str, re.Pattern[str], ControlHandler]] = [
    (method, re.compile("/_emulator" + pattern), handler)
    for method, pattern, handler in [
        ("*", r"/health", lambda st, h, q, b, m: {"ok": True}),
        ("POST", r"/reset", lambda st, h, q, b, m: _reset(st)),
        ("*", r"/clock", lambda st, h, q, b, m: _clock(st, b, m)),
        ("*", r"/faults", lambda st, h, q, b, m: _faults(st, b, m)),
        ("POST", r"/faults/clear", lambda st, h, q, b, m: _clear_faults(st)),
        ("POST", r"/faults/random", lambda st, h, q, b, m: st.set_random_faults(b)),
        ("POST", r"/rate_limit", lambda st, h, q, b, m: _rate_limit(st, b)),
        (
            "GET",
            r"/meter_events",
            lambda st, h, q, b, m: st.meter_events_json(q.get("customer"), q.get("event_name")),
        ),
        ("*", r"/concurrency", lambda st, h, q, b, m: st.concurrency_json()),
        ("GET", r"/calls", lambda st, h, q, b, m: st.calls_json(q.get("customer"))),
        ("*", r"/meter_event_stream", lambda st, h, q, b, m: st.configure_streams(b)),
        ("*", r"/stats", lambda st, h, q, b, m: _stats(st)),
        ("*", r"/aggregate", lambda st, h, q, b, m: _aggregate(st, q)),
        ("POST", r"/event_summaries", lambda st, h, q, b, m: _summaries(st, b)),
        ("*", r"/subscriptions/([^/]+)", lambda st, h, q, b, m: st.subscription_state(h[1])),
        (
            "POST",
            r"/subscriptions/([^/]+)/advance",
            lambda st, h, q, b, m: st.advance_subscription(h[1], str(b.get("at", "now"))),
        ),
        (
            "POST",
            r"/subscriptions/([^/]+)/period",
            lambda st, h, q, b, m: st.set_subscription_period(h[1], b),
        ),
    ]
]


def route_control(
    state: EmulatorState, method: str, path: str, q: dict[str, str], body: Json
) -> Json:
    """The answer of the control route for ``method`` and ``path``; ApiError 404 for none."""
    for verb, pattern, handler in CONTROL_ROUTES:
        if verb in ("*", method) and (hit := pattern.fullmatch(path)):
            return handler(state, hit, q, body, method)  # type: ignore[no-any-return]
    raise ApiError(404, f"Unknown control endpoint ({method}: {path})")
