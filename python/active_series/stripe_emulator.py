"""A local emulator of the parts of Stripe's API that active_series uses.

It answers the official ``stripe`` Python SDK (``StripeClient`` pointed at it with
``base_addresses={"api": base_url}``) for billing meters, meter events, meter event summaries,
customers, products, tiered metered prices, subscriptions with a current period and an invoice
preview.  Tests steer it through control endpoints under ``/_emulator/`` (never Stripe paths):
a settable clock, fault injection (500s, delays, dropped connections before or after the event is
recorded, 429s, a seeded random failure mix), a token-bucket rate limit, the full record of meter
events received and the per-customer concurrency of meter-event calls.

Run it with ``python -m active_series.stripe_emulator --port 12111`` or in-process with
:func:`run_in_thread`.  See ``docs/stripe-emulator.md`` for the control API and the deviations
from real Stripe.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import random
import re
import secrets
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "EmulatorControl",
    "EmulatorState",
    "StripeEmulatorServer",
    "main",
    "run_in_thread",
]

DEFAULT_RATE_LIMIT = 25.0
MAX_EVENT_AGE_SECONDS = 35 * 24 * 3600
MAX_EVENT_FUTURE_SECONDS = 5 * 60
MAX_IDENTIFIER_LENGTH = 100
PERIOD_SECONDS_METADATA_KEY = "emulator_period_seconds"
FAULT_KINDS = (
    "error",
    "delay",
    "delay_after",
    "drop_before",
    "drop_after",
    "rate_limit",
    "html",
    "truncated_json",
    "close_mid_response",
)
RANDOM_KINDS = (
    "error",
    "timeout",
    "timeout_after",
    "drop_before",
    "drop_after",
    "rate_limit",
    "html",
    "truncated_json",
    "close_mid_response",
)
#: What a proxy in front of an API answers when the API is down (fault kind "html").
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The upstream server did not answer.</p></body></html>\n"
)

Json = dict[str, Any]


# --------------------------------------------------------------------------------------------
# errors and small helpers
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A Stripe-style error answer: ``{"error": {type, message, code, param}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.should_retry = should_retry

    def body(self) -> Json:
        err: Json = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}

    def headers(self) -> dict[str, str]:
        if self.should_retry is None:
            return {}
        return {"Stripe-Should-Retry": "true" if self.should_retry else "false"}


def _missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def _invalid(param: str, message: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def _no_such(kind: str, ident: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{ident}'", code="resource_missing", param=param)


def _new_id(prefix: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "_" + "".join(secrets.choice(alphabet) for _ in range(24))


def parse_form(pairs: Iterable[tuple[str, str]]) -> Json:
    """Turn Stripe's bracketed form keys (``a[b][0][c]=v``) into nested dicts and lists."""
    root: Json = {}
    key_re = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
    for key, value in pairs:
        match = key_re.match(key)
        if match is None:
            root[key] = value
            continue
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node: Json = root
        for i, part in enumerate(path):
            name = str(len(node)) if part == "" else part
            if i == len(path) - 1:
                node[name] = value
            else:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = {}
                    node[name] = child
                node = child
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _as_int(
    params: Json, name: str, *, required: bool = False, label: str | None = None
) -> int | None:
    label = label or name
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise _missing(label)
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw.strip()):
        return int(raw)
    raise _invalid(label, f"Invalid integer: {raw}", "parameter_invalid_integer")


def _as_str(
    params: Json, name: str, *, required: bool = False, label: str | None = None
) -> str | None:
    label = label or name
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise _missing(label)
        return None
    if not isinstance(raw, str):
        raise _invalid(label, f"Invalid string: {raw!r}")
    return raw


def _as_dict(params: Json, name: str) -> Json:
    raw = params.get(name)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, list):
        return {str(i): v for i, v in enumerate(raw)}
    if not isinstance(raw, dict):
        raise _invalid(name, f"Invalid object: {name}")
    return raw


def _metadata(params: Json) -> dict[str, str]:
    return {k: str(v) for k, v in _as_dict(params, "metadata").items() if v != ""}


def _add_months(ts: int, months: int) -> int:
    moment = datetime.fromtimestamp(ts, UTC)
    total = moment.month - 1 + months
    year, month = moment.year + total // 12, total % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------


class TokenBucket:
    """Allows ``rate`` requests per second on average with bursts of ``burst`` requests."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class FaultRule:
    kind: str
    remaining: int
    path_prefix: str | None = None
    method: str | None = None
    status: int = 500
    seconds: float = 0.0
    id: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        return not (self.path_prefix and not path.startswith(self.path_prefix))

    def as_json(self) -> Json:
        return {
            "id": self.id,
            "kind": self.kind,
            "remaining": self.remaining,
            "path_prefix": self.path_prefix,
            "method": self.method,
            "status": self.status,
            "seconds": self.seconds,
        }


@dataclass
class RandomFaults:
    ratio: float
    seed: int
    kinds: dict[str, float]
    timeout_seconds: float
    path_prefix: str | None
    rng: random.Random = field(repr=False, default_factory=random.Random)

    def as_json(self) -> Json:
        return {
            "ratio": self.ratio,
            "seed": self.seed,
            "kinds": self.kinds,
            "timeout_seconds": self.timeout_seconds,
            "path_prefix": self.path_prefix,
        }


@dataclass
class Fault:
    """The fault chosen for one request."""

    kind: str
    status: int = 500
    seconds: float = 0.0


@dataclass
class Subscription:
    obj: Json
    anchor: int
    index: int
    period_seconds: int | None
    interval: str
    interval_count: int
    history: list[tuple[int, int]] = field(default_factory=list)

    def boundary(self, index: int) -> int:
        if self.period_seconds:
            return self.anchor + index * self.period_seconds
        step = index * self.interval_count
        if self.interval == "month":
            return _add_months(self.anchor, step)
        if self.interval == "year":
            return _add_months(self.anchor, 12 * step)
        if self.interval == "week":
            return self.anchor + step * 7 * 86400
        return self.anchor + step * 86400


class EmulatorState:
    """Every object the emulator holds, guarded by one lock."""

    def __init__(
        self,
        *,
        rate_limit: float | None = DEFAULT_RATE_LIMIT,
        rate_burst: float | None = None,
        require_known_customer: bool = True,
        minute_aligned_summaries: bool = True,
        auto_advance_periods: bool = True,
        enforce_customer_concurrency: bool = False,
        api_key: str | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.require_known_customer = require_known_customer
        self.minute_aligned_summaries = minute_aligned_summaries
        self.auto_advance_periods = auto_advance_periods
        self.enforce_customer_concurrency = enforce_customer_concurrency
        self.api_key = api_key
        self._rate_config = (rate_limit, rate_burst)
        self.reset()

    # ---- lifecycle -----------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            rate, burst = self._rate_config
            self.bucket: TokenBucket | None = TokenBucket(rate, burst) if rate else None
            self.clock_offset = 0.0
            self.meters: dict[str, Json] = {}
            self.customers: dict[str, Json] = {}
            self.products: dict[str, Json] = {}
            self.prices: dict[str, Json] = {}
            self.subscriptions: dict[str, Subscription] = {}
            self.events: list[Json] = []
            self.identifiers: set[str] = set()
            self.idempotency: dict[tuple[str, str], Json] = {}
            self.fault_rules: list[FaultRule] = []
            self.random_faults: RandomFaults | None = None
            self.fault_counts: dict[str, int] = {}
            self.next_rule_id = 1
            self.in_flight: dict[str, dict[object, Callable[[], bool]]] = {}
            self.max_in_flight: dict[str, int] = {}
            self.concurrency_violations = 0
            self.request_counts: dict[str, int] = {}

    def now(self) -> float:
        return time.time() + self.clock_offset

    def now_int(self) -> int:
        return int(self.now())

    # ---- faults and limits -------------------------------------------------------------------

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1

    def take_token(self) -> bool:
        with self.lock:
            return self.bucket.take() if self.bucket else True

    def choose_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for rule in self.fault_rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    return Fault(rule.kind, rule.status, rule.seconds)
            rf = self.random_faults
            if rf is None or rf.ratio <= 0:
                return None
            if rf.path_prefix and not path.startswith(rf.path_prefix):
                return None
            if rf.rng.random() >= rf.ratio:
                return None
            kinds = [k for k, w in rf.kinds.items() if w > 0]
            kind = rf.rng.choices(kinds, weights=[rf.kinds[k] for k in kinds])[0]
            if kind == "timeout":
                return Fault("delay", seconds=rf.timeout_seconds)
            if kind == "timeout_after":
                return Fault("delay_after", seconds=rf.timeout_seconds)
            if kind == "html":
                return Fault("html", status=502)
            return Fault(kind)

    def add_fault_rule(self, body: Json) -> Json:
        kind = str(body.get("kind", "error"))
        if kind not in FAULT_KINDS:
            raise ApiError(400, f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        with self.lock:
            rule = FaultRule(
                kind=kind,
                remaining=int(body.get("count", 1)),
                path_prefix=body.get("path_prefix") or None,
                method=body.get("method") or None,
                status=int(body.get("status", 500)),
                seconds=float(body.get("seconds", 0.0)),
                id=self.next_rule_id,
            )
            self.next_rule_id += 1
            self.fault_rules.append(rule)
            return rule.as_json()

    def set_random_faults(self, body: Json) -> Json:
        ratio = float(body.get("ratio", 0.0))
        kinds = body.get("kinds") or {k: 1.0 for k in RANDOM_KINDS}
        if isinstance(kinds, list):
            kinds = {k: 1.0 for k in kinds}
        unknown = set(kinds) - set(RANDOM_KINDS)
        if unknown:
            raise ApiError(400, f"unknown random fault kinds {sorted(unknown)}")
        seed = int(body.get("seed", 0))
        with self.lock:
            if ratio <= 0:
                self.random_faults = None
                return {"random": None}
            self.random_faults = RandomFaults(
                ratio=min(ratio, 1.0),
                seed=seed,
                kinds={k: float(v) for k, v in kinds.items()},
                timeout_seconds=float(body.get("timeout_seconds", 2.0)),
                path_prefix=body.get("path_prefix") or None,
                rng=random.Random(seed),
            )
            return {"random": self.random_faults.as_json()}

    def faults_json(self) -> Json:
        with self.lock:
            return {
                "rules": [r.as_json() for r in self.fault_rules if r.remaining > 0],
                "random": self.random_faults.as_json() if self.random_faults else None,
                "counts": dict(self.fault_counts),
            }

    def clear_faults(self) -> None:
        with self.lock:
            self.fault_rules = []
            self.random_faults = None

    def set_rate_limit(self, rate: float | None, burst: float | None) -> Json:
        with self.lock:
            self.bucket = TokenBucket(rate, burst) if rate else None
            return {"rate": rate, "burst": self.bucket.burst if self.bucket else None}

    def begin_call(self, customer: str, token: object, client_alive: Callable[[], bool]) -> bool:
        """Register an in-flight meter-event call; False if another one was already in flight.

        A call whose client has hung up (timed out, closed its connection) no longer counts: the
        client may already be sending its retry.
        """
        with self.lock:
            calls = self.in_flight.setdefault(customer, {})
            for other, alive in list(calls.items()):
                if not alive():
                    del calls[other]
            calls[token] = client_alive
            current = len(calls)
            if current > self.max_in_flight.get(customer, 0):
                self.max_in_flight[customer] = current
            if current > 1:
                self.concurrency_violations += 1
            return current == 1

    def end_call(self, customer: str, token: object) -> None:
        with self.lock:
            calls = self.in_flight.get(customer, {})
            calls.pop(token, None)
            if not calls:
                self.in_flight.pop(customer, None)

    def concurrency_json(self) -> Json:
        with self.lock:
            return {
                "in_flight": {c: len(calls) for c, calls in self.in_flight.items() if calls},
                "max_in_flight": dict(self.max_in_flight),
                "max_overall": max(self.max_in_flight.values(), default=0),
                "violations": self.concurrency_violations,
            }

    # ---- idempotency -------------------------------------------------------------------------

    def idempotency_begin(self, scope: str, key: str, fingerprint: str) -> Json | None:
        """Return a stored answer to replay, raise on conflicts, or mark the key in progress."""
        with self.lock:
            entry = self.idempotency.get((scope, key))
            if entry is None:
                self.idempotency[(scope, key)] = {"fingerprint": fingerprint, "response": None}
                return None
            if entry["fingerprint"] != fingerprint:
                raise ApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request.",
                    type_="idempotency_error",
                    should_retry=False,
                )
            if entry["response"] is None:
                raise ApiError(
                    409,
                    "There is currently another in-progress request using this Idempotent "
                    f"Key (that probably means you submitted twice, and the other request is "
                    f"still going through): {key}. Please try again later.",
                    type_="idempotency_error",
                    should_retry=True,
                )
            return dict(entry["response"])

    def idempotency_finish(self, scope: str, key: str, response: Json | None) -> None:
        """Store the answer (``None`` forgets the key, so that a retry executes again)."""
        with self.lock:
            if response is None:
                self.idempotency.pop((scope, key), None)
            else:
                self.idempotency[(scope, key)]["response"] = response

    # ---- customers ---------------------------------------------------------------------------

    def create_customer(self, p: Json) -> Json:
        with self.lock:
            cus: Json = {
                "id": _new_id("cus"),
                "object": "customer",
                "created": self.now_int(),
                "email": _as_str(p, "email"),
                "name": _as_str(p, "name"),
                "description": _as_str(p, "description"),
                "metadata": _metadata(p),
                "livemode": False,
                "currency": None,
                "balance": 0,
                "delinquent": False,
            }
            self.customers[cus["id"]] = cus
            return cus

    def _lookup(self, store: dict[str, Any], kind: str, ident: str) -> Any:
        """The object ``ident`` of ``store``, or Stripe's resource_missing error."""
        with self.lock:
            if ident not in store:
                raise _no_such(kind, ident)
            return store[ident]

    def get_customer(self, cid: str) -> Json:
        return self._lookup(self.customers, "customer", cid)

    def list_customers(self, p: Json) -> list[Json]:
        email = _as_str(p, "email")
        with self.lock:
            return [
                c for c in reversed(self.customers.values()) if not email or c["email"] == email
            ]

    # ---- meters ------------------------------------------------------------------------------

    def create_meter(self, p: Json) -> Json:
        display_name = _as_str(p, "display_name", required=True)
        event_name = _as_str(p, "event_name", required=True)
        assert event_name is not None
        agg = _as_dict(p, "default_aggregation")
        formula = _as_str(agg, "formula", required=True, label="default_aggregation[formula]")
        if formula not in ("sum", "count", "last"):
            raise _invalid(
                "default_aggregation[formula]",
                "Invalid default_aggregation[formula]: must be one of count, last, or sum",
            )
        if len(event_name) > 100:
            raise _invalid("event_name", "event_name must be at most 100 characters.")
        mapping = _as_dict(p, "customer_mapping")
        mapping_type = _as_str(mapping, "type") or "by_id"
        if mapping_type != "by_id":
            raise _invalid("customer_mapping[type]", "customer_mapping[type] must be by_id.")
        customer_key = _as_str(mapping, "event_payload_key") or "stripe_customer_id"
        value_key = _as_str(_as_dict(p, "value_settings"), "event_payload_key") or "value"
        window = _as_str(p, "event_time_window")
        if window not in (None, "day", "hour"):
            raise _invalid("event_time_window", "event_time_window must be day or hour.")
        with self.lock:
            self._check_event_name_free(event_name)
            now = self.now_int()
            meter: Json = {
                "id": _new_id("mtr"),
                "object": "billing.meter",
                "created": now,
                "updated": now,
                "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
                "default_aggregation": {"formula": formula},
                "display_name": display_name,
                "event_name": event_name,
                "event_time_window": window,
                "livemode": False,
                "status": "active",
                "status_transitions": {"deactivated_at": None},
                "value_settings": {"event_payload_key": value_key},
            }
            self.meters[meter["id"]] = meter
            return meter

    def _check_event_name_free(self, event_name: str) -> None:
        for other in self.meters.values():
            if other["event_name"] == event_name and other["status"] == "active":
                raise _invalid(
                    "event_name",
                    f"An active meter with event_name '{event_name}' already exists.",
                    "meter_event_name_in_use",
                )

    def get_meter(self, mid: str) -> Json:
        return self._lookup(self.meters, "billing.meter", mid)

    def list_meters(self, p: Json) -> list[Json]:
        status = _as_str(p, "status")
        with self.lock:
            return [
                m for m in reversed(self.meters.values()) if not status or m["status"] == status
            ]

    def set_meter_status(self, mid: str, active: bool) -> Json:
        with self.lock:
            meter = self.get_meter(mid)
            if active and meter["status"] != "active":
                self._check_event_name_free(meter["event_name"])
            now = self.now_int()
            meter["status"] = "active" if active else "inactive"
            meter["status_transitions"] = {"deactivated_at": None if active else now}
            meter["updated"] = now
            return meter

    # ---- meter events --------------------------------------------------------------------------

    def customer_of_event(self, p: Json) -> str:
        """The customer a meter-event call is for (used for concurrency tracking)."""
        payload = p.get("payload") if isinstance(p.get("payload"), dict) else {}
        assert isinstance(payload, dict)
        key = "stripe_customer_id"
        with self.lock:
            meter = self._meter_for_event(str(p.get("event_name", "")))
            if meter is not None:
                key = meter["customer_mapping"]["event_payload_key"]
        return str(payload.get(key) or "(none)")

    def _meter_for_event(self, event_name: str) -> Json | None:
        inactive = None
        for meter in self.meters.values():
            if meter["event_name"] == event_name:
                if meter["status"] == "active":
                    return meter
                inactive = meter
        return inactive

    def create_meter_event(self, p: Json, idempotency_key: str | None) -> Json:
        event_name = _as_str(p, "event_name", required=True)
        assert event_name is not None
        if len(event_name) > 100:
            raise _invalid("event_name", "event_name must be at most 100 characters.")
        payload = p.get("payload")
        if payload is None or payload == "" or payload == {}:
            raise _missing("payload")
        if not isinstance(payload, dict):
            raise _invalid("payload", "Invalid object: payload")
        identifier = _as_str(p, "identifier")
        if identifier is not None and len(identifier) > MAX_IDENTIFIER_LENGTH:
            raise _invalid(
                "identifier",
                f"Invalid identifier: must be at most {MAX_IDENTIFIER_LENGTH} characters",
                "parameter_invalid_string_too_long",
            )
        timestamp = _as_int(p, "timestamp")
        with self.lock:
            now = self.now()
            if identifier is not None and identifier in self.identifiers:
                raise ApiError(
                    400,
                    f"An event already exists with identifier {identifier}",
                    param="identifier",
                    should_retry=False,
                )
            meter = self._meter_for_event(event_name)
            if meter is None:
                raise ApiError(
                    400,
                    f"No active meter was found for event_name '{event_name}'.",
                    code="no_meter",
                    param="event_name",
                )
            if meter["status"] != "active":
                raise ApiError(
                    400,
                    f"The meter {meter['id']} for event_name '{event_name}' is inactive.",
                    code="archived_meter",
                    param="event_name",
                )
            customer_key = meter["customer_mapping"]["event_payload_key"]
            value_key = meter["value_settings"]["event_payload_key"]
            customer = payload.get(customer_key)
            if not isinstance(customer, str) or not customer:
                raise ApiError(
                    400,
                    f"The payload has no customer under '{customer_key}'.",
                    code="meter_event_no_customer_defined",
                    param=f"payload[{customer_key}]",
                )
            raw_value = payload.get(value_key)
            if not isinstance(raw_value, str) or not re.fullmatch(r"[0-9]{1,19}", raw_value):
                raise ApiError(
                    400,
                    f"The payload's '{value_key}' must be a whole number (got {raw_value!r}).",
                    code="meter_event_invalid_value",
                    param=f"payload[{value_key}]",
                )
            if timestamp is None:
                timestamp = int(now)
            if timestamp < now - MAX_EVENT_AGE_SECONDS:
                raise ApiError(
                    400,
                    "The timestamp must be within the past 35 calendar days.",
                    code="timestamp_too_far_in_past",
                    param="timestamp",
                )
            if timestamp > now + MAX_EVENT_FUTURE_SECONDS:
                raise ApiError(
                    400,
                    "The timestamp must be at most 5 minutes in the future.",
                    code="timestamp_in_future",
                    param="timestamp",
                )
            if self.require_known_customer and customer not in self.customers:
                raise ApiError(
                    400,
                    f"No such customer: '{customer}'",
                    code="meter_event_customer_not_found",
                    param=f"payload[{customer_key}]",
                )
            if identifier is None:
                identifier = str(uuid.uuid4())
            self.identifiers.add(identifier)
            record = {
                "seq": len(self.events) + 1,
                "received_at": now,
                "event_name": event_name,
                "meter": meter["id"],
                "identifier": identifier,
                "customer": customer,
                "value": int(raw_value),
                "timestamp": timestamp,
                "payload": {str(k): str(v) for k, v in payload.items()},
                "idempotency_key": idempotency_key,
                "canceled": False,
            }
            self.events.append(record)
            return {
                "object": "billing.meter_event",
                "created": int(now),
                "event_name": event_name,
                "identifier": identifier,
                "livemode": False,
                "payload": record["payload"],
                "timestamp": timestamp,
            }

    def adjust_meter_event(self, p: Json) -> Json:
        """Cancel one event by identifier (``type=cancel``), within 24 hours of its receipt."""
        event_name = _as_str(p, "event_name", required=True)
        kind = _as_str(p, "type") or "cancel"
        if kind != "cancel":
            raise _invalid("type", "type must be cancel.")
        cancel = _as_dict(p, "cancel")
        identifier = _as_str(cancel, "identifier", required=True, label="cancel[identifier]")
        with self.lock:
            now = self.now()
            found = [
                e
                for e in self.events
                if e["identifier"] == identifier and e["event_name"] == event_name
            ]
            if not found:
                raise ApiError(
                    400,
                    f"No meter event with identifier {identifier} for event_name '{event_name}'.",
                    code="resource_missing",
                    param="cancel[identifier]",
                )
            event = found[0]
            if now - event["received_at"] > 24 * 3600:
                raise _invalid(
                    "cancel[identifier]",
                    "Meter events can only be canceled within 24 hours of their receipt.",
                )
            event["canceled"] = True
            return {
                "object": "billing.meter_event_adjustment",
                "cancel": {"identifier": identifier},
                "event_name": event_name,
                "livemode": False,
                "status": "complete",
                "type": "cancel",
            }

    def aggregate(self, meter_id: str, customer: str, start: float, end: float) -> int:
        """The meter's formula over the customer's events with ``start <= timestamp < end``.

        ``last`` is the value of the event with the greatest timestamp; among events with the same
        timestamp the one that arrived last wins.
        """
        with self.lock:
            meter = self.get_meter(meter_id)
            formula = meter["default_aggregation"]["formula"]
            chosen = [
                e
                for e in self.events
                if e["meter"] == meter_id
                and e["customer"] == customer
                and start <= e["timestamp"] < end
                and not e["canceled"]
            ]
        if formula == "count":
            return len(chosen)
        if formula == "sum":
            return sum(e["value"] for e in chosen)
        if not chosen:
            return 0
        return max(chosen, key=lambda e: (e["timestamp"], e["seq"]))["value"]

    def event_summaries(self, mid: str, p: Json) -> list[Json]:
        customer = _as_str(p, "customer", required=True)
        start = _as_int(p, "start_time", required=True)
        end = _as_int(p, "end_time", required=True)
        assert customer is not None and start is not None and end is not None
        window = _as_str(p, "value_grouping_window")
        if window not in (None, "hour", "day"):
            raise _invalid("value_grouping_window", "value_grouping_window must be hour or day.")
        if end <= start:
            raise _invalid("end_time", "end_time must be after start_time.")
        if self.minute_aligned_summaries:
            for name, value in (("start_time", start), ("end_time", end)):
                if value % 60:
                    raise _invalid(name, f"{name} must be aligned with minute boundaries.")
        self.get_meter(mid)
        if window is None:
            buckets = [(start, end)]
        else:
            size = 3600 if window == "hour" else 86400
            buckets = []
            edge = start - start % size
            while edge < end:
                buckets.append((max(edge, start), min(edge + size, end)))
                edge += size
        with self.lock:
            has_events = {
                e["timestamp"]
                for e in self.events
                if e["meter"] == mid and e["customer"] == customer and not e["canceled"]
            }
        summaries = []
        for b_start, b_end in buckets:
            if window is not None and not any(b_start <= t < b_end for t in has_events):
                continue
            digest = hashlib.sha1(f"{mid}/{customer}/{b_start}/{b_end}".encode()).hexdigest()
            summaries.append(
                {
                    "id": "mtrusum_" + digest[:24],
                    "object": "billing.meter_event_summary",
                    "aggregated_value": self.aggregate(mid, customer, b_start, b_end),
                    "start_time": b_start,
                    "end_time": b_end,
                    "livemode": False,
                    "meter": mid,
                }
            )
        return summaries

    def meter_events_json(self, customer: str | None, event_name: str | None) -> Json:
        with self.lock:
            data = [
                dict(e)
                for e in self.events
                if (customer is None or e["customer"] == customer)
                and (event_name is None or e["event_name"] == event_name)
            ]
        return {"object": "list", "data": data}

    # ---- products and prices -------------------------------------------------------------------

    def create_product(self, p: Json) -> Json:
        name = _as_str(p, "name", required=True)
        with self.lock:
            return self._new_product(name, _metadata(p))

    def _new_product(self, name: str | None, metadata: dict[str, str]) -> Json:
        now = self.now_int()
        product: Json = {
            "id": _new_id("prod"),
            "object": "product",
            "active": True,
            "created": now,
            "updated": now,
            "name": name,
            "metadata": metadata,
            "livemode": False,
        }
        self.products[product["id"]] = product
        return product

    def get_product(self, pid: str) -> Json:
        return self._lookup(self.products, "product", pid)

    def create_price(self, p: Json) -> Json:
        currency = (_as_str(p, "currency", required=True) or "").lower()
        scheme = _as_str(p, "billing_scheme") or "per_unit"
        if scheme not in ("per_unit", "tiered"):
            raise _invalid("billing_scheme", "billing_scheme must be per_unit or tiered.")
        recurring_in = _as_dict(p, "recurring")
        recurring = None
        if recurring_in:
            interval = _as_str(recurring_in, "interval", required=True, label="recurring[interval]")
            if interval not in ("day", "week", "month", "year"):
                raise _invalid("recurring[interval]", "Invalid recurring[interval].")
            usage_type = _as_str(recurring_in, "usage_type") or "licensed"
            if usage_type not in ("licensed", "metered"):
                raise _invalid("recurring[usage_type]", "Invalid recurring[usage_type].")
            meter = _as_str(recurring_in, "meter")
            if usage_type == "metered" and meter is None:
                raise _missing("recurring[meter]")
            if meter is not None:
                self.get_meter(meter)
            recurring = {
                "interval": interval,
                "interval_count": _as_int(
                    recurring_in, "interval_count", label="recurring[interval_count]"
                )
                or 1,
                "usage_type": usage_type,
                "meter": meter,
                "aggregate_usage": None,
                "trial_period_days": None,
            }
        tiers_mode = None
        tiers = None
        unit_amount = None
        if scheme == "tiered":
            tiers_mode = _as_str(p, "tiers_mode", required=True)
            if tiers_mode not in ("graduated", "volume"):
                raise _invalid("tiers_mode", "tiers_mode must be graduated or volume.")
            tiers = self._parse_tiers(p.get("tiers"))
        else:
            unit_amount = _as_int(
                p, "unit_amount", required=_as_str(p, "unit_amount_decimal") is None
            )
        with self.lock:
            product_id = _as_str(p, "product")
            if product_id is not None:
                self.get_product(product_id)
            else:
                data = _as_dict(p, "product_data")
                if not data:
                    raise _missing("product")
                name = _as_str(data, "name", required=True, label="product_data[name]")
                product_id = self._new_product(name, _metadata(data))["id"]
            price: Json = {
                "id": _new_id("price"),
                "object": "price",
                "active": True,
                "billing_scheme": scheme,
                "created": self.now_int(),
                "currency": currency,
                "livemode": False,
                "lookup_key": _as_str(p, "lookup_key"),
                "metadata": _metadata(p),
                "nickname": _as_str(p, "nickname"),
                "product": product_id,
                "recurring": recurring,
                "tiers_mode": tiers_mode,
                "tiers": tiers,
                "type": "recurring" if recurring else "one_time",
                "unit_amount": unit_amount,
                "unit_amount_decimal": _as_str(p, "unit_amount_decimal")
                or (str(unit_amount) if unit_amount is not None else None),
            }
            self.prices[price["id"]] = price
            return price

    @staticmethod
    def _parse_tiers(raw: Any) -> list[Json]:
        if not raw:
            raise _missing("tiers")
        if not isinstance(raw, list):
            raise _invalid("tiers", "tiers must be an array.")
        tiers: list[Json] = []
        previous = 0
        for i, tier in enumerate(raw):
            if not isinstance(tier, dict):
                raise _invalid(f"tiers[{i}]", "Invalid tier.")
            up_raw = tier.get("up_to")
            if up_raw is None:
                raise _missing(f"tiers[{i}][up_to]")
            up_to = None if up_raw == "inf" else _as_int(tier, "up_to", label=f"tiers[{i}][up_to]")
            if up_to is not None and up_to <= previous:
                raise _invalid(f"tiers[{i}][up_to]", "Tiers must have increasing up_to values.")
            if up_to is None and i != len(raw) - 1:
                raise _invalid(f"tiers[{i}][up_to]", "Only the last tier may have up_to=inf.")
            unit = _as_int(tier, "unit_amount", label=f"tiers[{i}][unit_amount]")
            flat = _as_int(tier, "flat_amount", label=f"tiers[{i}][flat_amount]")
            unit_dec = tier.get("unit_amount_decimal") or (str(unit) if unit is not None else None)
            flat_dec = tier.get("flat_amount_decimal") or (str(flat) if flat is not None else None)
            if unit_dec is None and flat_dec is None:
                raise _missing(f"tiers[{i}][unit_amount]")
            tiers.append(
                {
                    "up_to": up_to,
                    "unit_amount": unit,
                    "unit_amount_decimal": unit_dec,
                    "flat_amount": flat,
                    "flat_amount_decimal": flat_dec,
                }
            )
            previous = up_to or previous
        if tiers[-1]["up_to"] is not None:
            raise _invalid(f"tiers[{len(tiers) - 1}][up_to]", "The last tier must have up_to=inf.")
        return tiers

    def get_price(self, pid: str) -> Json:
        return self._lookup(self.prices, "price", pid)

    # ---- subscriptions -------------------------------------------------------------------------

    def create_subscription(self, p: Json) -> Json:
        customer = _as_str(p, "customer", required=True)
        assert customer is not None
        items = p.get("items")
        if not items:
            raise _missing("items")
        if not isinstance(items, list):
            raise _invalid("items", "items must be an array.")
        metadata = _metadata(p)
        period_seconds = None
        if PERIOD_SECONDS_METADATA_KEY in metadata:
            period_seconds = int(metadata[PERIOD_SECONDS_METADATA_KEY])
            if period_seconds <= 0:
                raise _invalid("metadata", f"{PERIOD_SECONDS_METADATA_KEY} must be positive.")
        anchor_param = _as_int(p, "billing_cycle_anchor")
        with self.lock:
            self.get_customer(customer)
            prices = []
            for i, item in enumerate(items):
                pid = _as_str(item, "price", required=True, label=f"items[{i}][price]")
                assert pid is not None
                price = self.get_price(pid)
                if price["recurring"] is None:
                    raise _invalid(f"items[{i}][price]", "The price must be recurring.")
                qty = _as_int(item, "quantity", label=f"items[{i}][quantity]")
                if price["recurring"]["usage_type"] == "metered" and qty is not None:
                    raise _invalid(
                        f"items[{i}][quantity]", "Quantity cannot be set for a metered price."
                    )
                prices.append((price, qty))
            first = prices[0][0]["recurring"]
            now = self.now_int()
            sub_id = _new_id("sub")
            sub = Subscription(
                obj={},
                anchor=now,
                index=1,
                period_seconds=period_seconds,
                interval=first["interval"],
                interval_count=first["interval_count"],
            )
            if anchor_param is None:
                start, end = now, sub.boundary(1)
            elif anchor_param > now:
                sub.anchor, sub.index = anchor_param, 0
                start, end = now, anchor_param
            else:
                sub.anchor = anchor_param
                index = 1
                while sub.boundary(index) <= now:
                    index += 1
                sub.index = index
                start, end = sub.boundary(index - 1), sub.boundary(index)
            sub.obj = {
                "id": sub_id,
                "object": "subscription",
                "billing_cycle_anchor": sub.anchor,
                "cancel_at_period_end": False,
                "canceled_at": None,
                "collection_method": "charge_automatically",
                "created": now,
                "currency": prices[0][0]["currency"],
                "customer": customer,
                "ended_at": None,
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": _new_id("si"),
                            "object": "subscription_item",
                            "created": now,
                            "metadata": {},
                            "price": price,
                            "quantity": qty
                            if price["recurring"]["usage_type"] != "metered"
                            else None,
                            "subscription": sub_id,
                        }
                        for price, qty in prices
                    ],
                    "has_more": False,
                    "total_count": len(prices),
                    "url": f"/v1/subscription_items?subscription={sub_id}",
                },
                "latest_invoice": None,
                "livemode": False,
                "metadata": metadata,
                "start_date": now,
                "status": "active",
            }
            self._set_period(sub, start, end)
            self.subscriptions[sub_id] = sub
            return sub.obj

    @staticmethod
    def _set_period(sub: Subscription, start: int, end: int) -> None:
        sub.obj["current_period_start"] = start
        sub.obj["current_period_end"] = end
        for item in sub.obj["items"]["data"]:
            item["current_period_start"] = start
            item["current_period_end"] = end

    def _roll(self, sub: Subscription) -> None:
        if not self.auto_advance_periods or sub.obj["status"] != "active":
            return
        now = self.now()
        steps = 0
        while now >= sub.obj["current_period_end"] and steps < 100_000:
            self._next_period(sub)
            steps += 1

    def _next_period(self, sub: Subscription) -> None:
        start, end = sub.obj["current_period_start"], sub.obj["current_period_end"]
        sub.history.append((start, end))
        sub.index += 1
        self._set_period(sub, end, sub.boundary(sub.index))

    def get_subscription(self, sid: str) -> Subscription:
        with self.lock:
            sub = self._lookup(self.subscriptions, "subscription", sid)
            self._roll(sub)
            return sub

    def list_subscriptions(self, p: Json) -> list[Json]:
        customer = _as_str(p, "customer")
        status = _as_str(p, "status")
        with self.lock:
            result = []
            for sub in reversed(self.subscriptions.values()):
                self._roll(sub)
                if customer and sub.obj["customer"] != customer:
                    continue
                if status and status != "all" and sub.obj["status"] != status:
                    continue
                if not status and sub.obj["status"] == "canceled":
                    continue
                result.append(sub.obj)
            return result

    def cancel_subscription(self, sid: str) -> Json:
        with self.lock:
            sub = self.get_subscription(sid)
            now = self.now_int()
            sub.obj.update(status="canceled", canceled_at=now, ended_at=now)
            return sub.obj

    def advance_subscription(self, sid: str, at: str) -> Json:
        """Start the next period: at the current period's end (``at="end"``) or now."""
        with self.lock:
            sub = self.get_subscription(sid)
            if at == "end":
                self._next_period(sub)
            elif at == "now":
                now = self.now_int()
                start = sub.obj["current_period_start"]
                sub.history.append((start, max(now, start)))
                sub.anchor, sub.index = now, 1
                sub.obj["billing_cycle_anchor"] = now
                self._set_period(sub, now, sub.boundary(1))
            else:
                raise ApiError(400, "at must be 'now' or 'end'")
            return self.subscription_state(sid)

    def set_subscription_period(self, sid: str, body: Json) -> Json:
        with self.lock:
            sub = self.get_subscription(sid)
            start = int(body.get("start") or sub.obj["current_period_start"])
            end = int(body.get("end") or sub.obj["current_period_end"])
            if end <= start:
                raise ApiError(400, "end must be after start")
            if body.get("period_seconds") is not None:
                sub.period_seconds = int(body["period_seconds"])
            sub.anchor, sub.index = end, 0
            sub.obj["billing_cycle_anchor"] = end
            self._set_period(sub, start, end)
            return self.subscription_state(sid)

    def subscription_state(self, sid: str) -> Json:
        with self.lock:
            sub = self.get_subscription(sid)
            periods = [
                *sub.history,
                (sub.obj["current_period_start"], sub.obj["current_period_end"]),
            ]
            rows = []
            for start, end in periods:
                lines = self._invoice_lines(sub, start, end)
                rows.append(
                    {
                        "start": start,
                        "end": end,
                        "current": (start, end) == periods[-1],
                        "quantity": sum(line["quantity"] or 0 for line in lines),
                        "amount": sum(line["amount"] for line in lines),
                    }
                )
            return {"subscription": sub.obj, "periods": rows}

    # ---- invoices ------------------------------------------------------------------------------

    def _invoice_lines(self, sub: Subscription, start: int, end: int) -> list[Json]:
        lines = []
        for item in sub.obj["items"]["data"]:
            price = item["price"]
            meter = price["recurring"]["meter"]
            if price["recurring"]["usage_type"] == "metered" and meter:
                quantity = self.aggregate(meter, sub.obj["customer"], start, end)
            else:
                quantity = item["quantity"] or 1
            amount = price_amount(price, quantity)
            lines.append(
                {
                    "id": _new_id("il_tmp"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": price["currency"],
                    "description": f"{quantity} × {price['product']}",
                    "livemode": False,
                    "metadata": {},
                    "period": {"start": start, "end": end},
                    "price": price,
                    "pricing": {
                        "type": "price_details",
                        "price_details": {"price": price["id"], "product": price["product"]},
                        "unit_amount_decimal": price["unit_amount_decimal"],
                    },
                    "quantity": quantity,
                    "subscription": sub.obj["id"],
                    "subscription_item": item["id"],
                }
            )
        return lines

    def preview_invoice(self, p: Json) -> Json:
        customer = _as_str(p, "customer")
        sid = _as_str(p, "subscription")
        if customer is None and sid is None:
            raise _missing("customer")
        with self.lock:
            if sid is not None:
                sub = self.get_subscription(sid)
                if customer is not None and sub.obj["customer"] != customer:
                    raise _invalid("subscription", "The subscription belongs to another customer.")
            else:
                assert customer is not None
                self.get_customer(customer)
                subs = [
                    s
                    for s in self.subscriptions.values()
                    if s.obj["customer"] == customer and s.obj["status"] == "active"
                ]
                if not subs:
                    raise ApiError(
                        404,
                        f"No upcoming invoices for customer: {customer}",
                        code="invoice_upcoming_none",
                    )
                sub = subs[0]
                self._roll(sub)
            start, end = sub.obj["current_period_start"], sub.obj["current_period_end"]
            lines = self._invoice_lines(sub, start, end)
            total = sum(line["amount"] for line in lines)
            return {
                "id": f"upcoming_in_{sub.obj['id']}",
                "object": "invoice",
                "amount_due": total,
                "amount_paid": 0,
                "amount_remaining": total,
                "billing_reason": "upcoming",
                "created": self.now_int(),
                "currency": sub.obj["currency"],
                "customer": sub.obj["customer"],
                "lines": {
                    "object": "list",
                    "data": lines,
                    "has_more": False,
                    "total_count": len(lines),
                    "url": f"/v1/invoices/upcoming/lines?subscription={sub.obj['id']}",
                },
                "livemode": False,
                "parent": {
                    "type": "subscription_details",
                    "quote_details": None,
                    "subscription_details": {
                        "metadata": sub.obj["metadata"],
                        "subscription": sub.obj["id"],
                    },
                },
                "period_start": start,
                "period_end": end,
                "status": "draft",
                "subscription": sub.obj["id"],
                "subtotal": total,
                "total": total,
            }


def _dec(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)


def price_amount(price: Json, quantity: int) -> int:
    """The amount in the currency's minor unit for ``quantity`` units of ``price``.

    Graduated tiers charge each tier's units at that tier's unit amount plus the flat amount of
    every tier that holds at least one unit; volume tiers charge all units at the tier the total
    falls in plus that tier's flat amount.  A quantity of zero costs nothing.
    """
    if quantity <= 0:
        return 0
    if price["billing_scheme"] != "tiered":
        total = _dec(price["unit_amount_decimal"]) * quantity
    elif price["tiers_mode"] == "volume":
        tier = next(t for t in price["tiers"] if t["up_to"] is None or quantity <= t["up_to"])
        total = _dec(tier["unit_amount_decimal"]) * quantity + _dec(tier["flat_amount_decimal"])
    else:
        total = Decimal(0)
        lower = 0
        for tier in price["tiers"]:
            upper = tier["up_to"]
            units = quantity - lower if upper is None else min(quantity, upper) - lower
            if units <= 0:
                break
            total += _dec(tier["unit_amount_decimal"]) * units + _dec(tier["flat_amount_decimal"])
            if upper is None:
                break
            lower = upper
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)


def _expand_paths(params: Json) -> set[str]:
    """The ``expand[]`` paths of a request (``data.`` prefixed for lists, as Stripe's)."""
    raw = params.get("expand") or []
    if isinstance(raw, str):
        raw = [raw]
    return {str(x) for x in raw} if isinstance(raw, list) else set()


def _unexpanded(node: Any, expand: set[str], path: str = "") -> Any:
    """A copy of an answer without what Stripe includes only when expanded: a price's
    ``tiers`` (``expand[]=tiers`` on a price, ``items.data.price.tiers`` on a subscription,
    ``data.items.data.price.tiers`` on a list of them)."""
    if isinstance(node, list):
        return [_unexpanded(v, expand, path) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if key == "tiers" and node.get("object") == "price" and where not in expand:
            continue
        out[key] = _unexpanded(value, expand, where)
    return out


def _paginate(items: Sequence[Json], p: Json, url: str) -> Json:
    limit = _as_int(p, "limit") or 10
    if not 1 <= limit <= 100:
        raise _invalid("limit", "limit must be between 1 and 100.")
    ids = [i.get("id") for i in items]
    after = _as_str(p, "starting_after")
    before = _as_str(p, "ending_before")
    if after is not None:
        if after not in ids:
            raise _invalid("starting_after", f"No such object: '{after}'", "resource_missing")
        rest = items[ids.index(after) + 1 :]
        page, more = rest[:limit], len(rest) > limit
    elif before is not None:
        if before not in ids:
            raise _invalid("ending_before", f"No such object: '{before}'", "resource_missing")
        rest = items[: ids.index(before)]
        page, more = rest[-limit:], len(rest) > limit
    else:
        page, more = items[:limit], len(items) > limit
    return {"object": "list", "data": list(page), "has_more": more, "url": url}


Route = tuple[str, re.Pattern[str], Callable[..., Any]]


class StripeEmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: EmulatorState, quiet: bool = False):
        self.state = state
        self.quiet = quiet
        super().__init__(address, _Handler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"


class _ClientGone(Exception):
    """The client closed its connection while we were delaying the answer."""


class _Handler(BaseHTTPRequestHandler):
    server: StripeEmulatorServer
    protocol_version = "HTTP/1.0"
    server_version = "active-series-stripe-emulator"

    # ---- plumbing ---------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def _log(
        self, method: str, path: str, status: int | str, started: float, note: str = ""
    ) -> None:
        if self.server.quiet:
            return
        ms = (time.monotonic() - started) * 1000
        extra = f" [{note}]" if note else ""
        sys.stderr.write(f"stripe-emulator {method} {path} {status} {ms:.1f}ms{extra}\n")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, answer: Answer) -> None:
        data = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", _new_id("req"))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_raw(
        self, status: int, content_type: str, data: bytes, length: int | None = None
    ) -> None:
        """An answer with an arbitrary body (faults): ``length`` may promise more than sent."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.send_header("Request-Id", _new_id("req"))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _sleep(self, seconds: float) -> None:
        """Wait, but stop as soon as the client hangs up (the socket turns readable at EOF)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                readable, _, _ = select.select([self.connection], [], [], left)
            except (OSError, ValueError):
                raise _ClientGone from None
            if readable and self._client_gone():
                raise _ClientGone
            if readable:  # unexpected extra bytes from the client: keep waiting, politely
                time.sleep(min(0.01, left))

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        try:
            raw = self._read_body()
            if path.startswith("/_emulator"):
                answer = self._control(method, path, url.query, raw)
                self._send(answer)
                self._log(method, path, answer.status, started)
                return
            self._stripe(method, path, url.query, raw, started)
        except (BrokenPipeError, ConnectionResetError):
            self._log(method, path, "client-gone", started)

    # ---- Stripe API -------------------------------------------------------------------------

    def _stripe(self, method: str, path: str, query: str, raw: bytes, started: float) -> None:
        state = self.server.state
        with state.lock:
            state.request_counts[path] = state.request_counts.get(path, 0) + 1
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if method == "POST":
            pairs += urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        params = parse_form(pairs)
        is_event = method == "POST" and path == "/v1/billing/meter_events"
        customer = state.customer_of_event(params) if is_event else None
        if customer is not None:
            alone = state.begin_call(customer, self, lambda: not self._client_gone())
        try:
            if customer is not None and not alone and state.enforce_customer_concurrency:
                answer = Answer(
                    429,
                    ApiError(
                        429,
                        "Too many concurrent requests for this customer.",
                        code="rate_limit",
                    ).body(),
                )
                self._send(answer)
                self._log(method, path, 429, started, "concurrent")
                return
            self._stripe_inner(method, path, params, raw, started)
        finally:
            if customer is not None:
                state.end_call(customer, self)

    def _stripe_inner(
        self, method: str, path: str, params: Json, raw: bytes, started: float
    ) -> None:
        state = self.server.state
        auth = self.headers.get("Authorization", "")
        api_key = auth[7:] if auth.startswith("Bearer ") else ""
        if not api_key or (state.api_key is not None and api_key != state.api_key):
            err = ApiError(
                401,
                "You did not provide a valid API key. Provide it as a Bearer token.",
            )
            self._send(Answer(401, err.body()))
            self._log(method, path, 401, started)
            return
        if not state.take_token():
            state.count_fault("bucket_429")
            self._send(Answer(429, _rate_limit_error().body()))
            self._log(method, path, 429, started, "rate limited")
            return
        fault = state.choose_fault(method, path)
        if fault is not None:
            state.count_fault(fault.kind)
            if fault.kind == "drop_before":
                self._drop()
                self._log(method, path, "dropped", started, "fault drop_before")
                return
            if fault.kind == "error":
                err = ApiError(
                    fault.status,
                    "An unknown error occurred (injected by the emulator).",
                    type_="api_error",
                )
                self._send(Answer(fault.status, err.body()))
                self._log(method, path, fault.status, started, "fault error")
                return
            if fault.kind == "rate_limit":
                self._send(Answer(429, _rate_limit_error().body()))
                self._log(method, path, 429, started, "fault rate_limit")
                return
            if fault.kind == "html":
                # a proxy's error page, not executed; status from the rule (random: 502)
                self._send_raw(fault.status, "text/html; charset=utf-8", HTML_ERROR_PAGE)
                self._log(method, path, fault.status, started, "fault html")
                return
            if fault.kind == "delay":
                try:
                    self._sleep(fault.seconds)
                except _ClientGone:
                    state.count_fault("abandoned")
                    self._log(method, path, "abandoned", started, "client left during delay")
                    return
        answer = self._execute(method, path, params, raw, api_key)
        if fault is not None and fault.kind == "drop_after":
            self._drop()
            self._log(method, path, "dropped", started, f"fault drop_after ({answer.status})")
            return
        if fault is not None and fault.kind in ("truncated_json", "close_mid_response"):
            data = json.dumps(answer.body).encode()
            if fault.kind == "truncated_json":
                # a complete HTTP answer whose JSON body is cut in half
                self._send_raw(answer.status, "application/json", data[: len(data) // 2])
            else:
                # the headers announce the whole body; half of it comes, then the connection closes
                self._send_raw(
                    answer.status, "application/json", data[: len(data) // 2], length=len(data)
                )
                self._drop()
            self._log(method, path, answer.status, started, f"fault {fault.kind}")
            return
        if fault is not None and fault.kind == "delay_after":
            try:
                self._sleep(fault.seconds)
            except _ClientGone:
                self._log(method, path, "abandoned", started, "client left after processing")
                return
        self._send(answer)
        self._log(method, path, answer.status, started, "fault delay" if fault else "")

    def _execute(self, method: str, path: str, params: Json, raw: bytes, api_key: str) -> Answer:
        state = self.server.state
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        if key:
            fingerprint = hashlib.sha256(f"{method} {path} ".encode() + raw).hexdigest()
            try:
                stored = state.idempotency_begin(api_key, key, fingerprint)
            except ApiError as err:
                return Answer(err.status, err.body(), err.headers())
            if stored is not None:
                return Answer(
                    stored["status"],
                    stored["body"],
                    {**stored["headers"], "Idempotent-Replayed": "true"},
                )
        try:
            answer = self._route(method, path, params, key)
            if 200 <= answer.status < 300:
                answer.body = _unexpanded(answer.body, _expand_paths(params))
        except ApiError as err:
            answer = Answer(err.status, err.body(), err.headers())
        except Exception as exc:  # noqa: BLE001 - an emulator bug must still answer like Stripe
            answer = Answer(
                500, ApiError(500, f"emulator error: {exc!r}", type_="api_error").body()
            )
        if key:
            keep = 200 <= answer.status < 300
            state.idempotency_finish(
                api_key,
                key,
                {"status": answer.status, "body": answer.body, "headers": answer.headers}
                if keep
                else None,
            )
        if "Idempotency-Key" in self.headers:
            answer.headers.setdefault("Idempotency-Key", self.headers["Idempotency-Key"])
        return answer

    def _route(self, method: str, path: str, p: Json, key: str | None) -> Answer:
        st = self.server.state
        m = re.fullmatch
        if method == "POST" and path == "/v1/billing/meter_events":
            return Answer(200, st.create_meter_event(p, key))
        if method == "POST" and path == "/v1/billing/meter_event_adjustments":
            return Answer(200, st.adjust_meter_event(p))
        if path == "/v1/billing/meters":
            if method == "POST":
                return Answer(200, st.create_meter(p))
            if method == "GET":
                return Answer(200, _paginate(st.list_meters(p), p, path))
        if (hit := m(r"/v1/billing/meters/([^/]+)", path)) and method == "GET":
            return Answer(200, st.get_meter(hit.group(1)))
        if (hit := m(r"/v1/billing/meters/([^/]+)/(deactivate|reactivate)", path)) and (
            method == "POST"
        ):
            return Answer(200, st.set_meter_status(hit.group(1), hit.group(2) == "reactivate"))
        if (hit := m(r"/v1/billing/meters/([^/]+)/event_summaries", path)) and method == "GET":
            summaries = st.event_summaries(hit.group(1), p)
            return Answer(200, _paginate(summaries, p, path))
        if path == "/v1/customers":
            if method == "POST":
                return Answer(200, st.create_customer(p))
            if method == "GET":
                return Answer(200, _paginate(st.list_customers(p), p, path))
        if (hit := m(r"/v1/customers/([^/]+)", path)) and method == "GET":
            return Answer(200, st.get_customer(hit.group(1)))
        if path == "/v1/products" and method == "POST":
            return Answer(200, st.create_product(p))
        if (hit := m(r"/v1/products/([^/]+)", path)) and method == "GET":
            return Answer(200, st.get_product(hit.group(1)))
        if path == "/v1/prices" and method == "POST":
            return Answer(200, st.create_price(p))
        if (hit := m(r"/v1/prices/([^/]+)", path)) and method == "GET":
            return Answer(200, st.get_price(hit.group(1)))
        if path == "/v1/subscriptions":
            if method == "POST":
                return Answer(200, st.create_subscription(p))
            if method == "GET":
                return Answer(200, _paginate(st.list_subscriptions(p), p, path))
        if hit := m(r"/v1/subscriptions/([^/]+)", path):
            if method == "GET":
                return Answer(200, st.get_subscription(hit.group(1)).obj)
            if method == "DELETE":
                return Answer(200, st.cancel_subscription(hit.group(1)))
        if path == "/v1/invoices/create_preview" and method == "POST":
            return Answer(200, st.preview_invoice(p))
        if path == "/v1/invoices/upcoming" and method == "GET":
            return Answer(200, st.preview_invoice(p))
        raise ApiError(404, f"Unrecognized request URL ({method}: {path}).")

    # ---- control API ------------------------------------------------------------------------

    def _control(self, method: str, path: str, query: str, raw: bytes) -> Answer:
        state = self.server.state
        q = dict(urllib.parse.parse_qsl(query))
        try:
            body = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return Answer(400, {"error": {"message": "control bodies are JSON"}})
        if not isinstance(body, dict):
            return Answer(400, {"error": {"message": "control bodies are JSON objects"}})
        try:
            return Answer(200, self._control_route(state, method, path, q, body))
        except ApiError as err:
            return Answer(err.status, err.body())
        except (ValueError, TypeError, KeyError) as exc:
            return Answer(400, {"error": {"message": f"bad control request: {exc!r}"}})

    def _control_route(
        self, state: EmulatorState, method: str, path: str, q: dict[str, str], body: Json
    ) -> Json:
        m = re.fullmatch
        if path == "/_emulator/health":
            return {"ok": True}
        if path == "/_emulator/reset" and method == "POST":
            state.reset()
            return {"ok": True}
        if path == "/_emulator/clock":
            if method == "POST":
                with state.lock:
                    if "now" in body:
                        state.clock_offset = float(body["now"]) - time.time()
                    if "offset" in body:
                        state.clock_offset = float(body["offset"])
                    if "advance" in body:
                        state.clock_offset += float(body["advance"])
            return {"now": state.now(), "offset": state.clock_offset}
        if path == "/_emulator/faults":
            if method == "POST":
                return state.add_fault_rule(body)
            if method == "DELETE":
                state.clear_faults()
            return state.faults_json()
        if path == "/_emulator/faults/clear" and method == "POST":
            state.clear_faults()
            return state.faults_json()
        if path == "/_emulator/faults/random" and method == "POST":
            return state.set_random_faults(body)
        if path == "/_emulator/rate_limit" and method == "POST":
            rate = body.get("rate")
            burst = body.get("burst")
            return state.set_rate_limit(
                float(rate) if rate else None, float(burst) if burst else None
            )
        if path == "/_emulator/meter_events" and method == "GET":
            return state.meter_events_json(q.get("customer"), q.get("event_name"))
        if path == "/_emulator/concurrency":
            return state.concurrency_json()
        if path == "/_emulator/stats":
            with state.lock:
                return {
                    "requests": dict(state.request_counts),
                    "faults": dict(state.fault_counts),
                    "meter_events": len(state.events),
                }
        if path == "/_emulator/aggregate":
            start, end = float(q["start"]), float(q["end"])
            return {"value": state.aggregate(q["meter"], q["customer"], start, end)}
        if hit := m(r"/_emulator/subscriptions/([^/]+)", path):
            return state.subscription_state(hit.group(1))
        if (hit := m(r"/_emulator/subscriptions/([^/]+)/advance", path)) and method == "POST":
            return state.advance_subscription(hit.group(1), str(body.get("at", "now")))
        if (hit := m(r"/_emulator/subscriptions/([^/]+)/period", path)) and method == "POST":
            return state.set_subscription_period(hit.group(1), body)
        raise ApiError(404, f"Unknown control endpoint ({method}: {path})")


def _rate_limit_error() -> ApiError:
    return ApiError(
        429,
        "Request rate limit exceeded. You can learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
    )


# --------------------------------------------------------------------------------------------
# in-process start, control client, CLI
# --------------------------------------------------------------------------------------------


def make_server(
    host: str = "127.0.0.1", port: int = 0, *, quiet: bool = False, **opts: Any
) -> StripeEmulatorServer:
    """Create (but do not start) a server; ``opts`` go to :class:`EmulatorState`."""
    return StripeEmulatorServer((host, port), EmulatorState(**opts), quiet=quiet)


def run_in_thread(
    port: int = 0, host: str = "127.0.0.1", *, quiet: bool = True, **opts: Any
) -> tuple[StripeEmulatorServer, str]:
    """Start the emulator on a daemon thread; returns the server and its base URL.

    Stop it with ``server.shutdown(); server.server_close()``.
    """
    server = make_server(host, port, quiet=quiet, **opts)
    thread = threading.Thread(target=server.serve_forever, name="stripe-emulator", daemon=True)
    thread.start()
    return server, server.base_url


class EmulatorControl:
    """A small client for the ``/_emulator/`` control endpoints."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Json | None = None, **query: Any) -> Json:
        url = self.base_url + path
        params = {k: v for k, v in query.items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: {exc.code} {exc.read().decode()}") from exc

    # state
    def health(self) -> bool:
        return bool(self._call("GET", "/_emulator/health").get("ok"))

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset", {})

    # clock
    def now(self) -> float:
        return float(self._call("GET", "/_emulator/clock")["now"])

    def set_clock_offset(self, seconds: float) -> float:
        return float(self._call("POST", "/_emulator/clock", {"offset": seconds})["now"])

    def set_now(self, timestamp: float) -> float:
        return float(self._call("POST", "/_emulator/clock", {"now": timestamp})["now"])

    def advance_clock(self, seconds: float) -> float:
        return float(self._call("POST", "/_emulator/clock", {"advance": seconds})["now"])

    # faults
    def add_fault(
        self,
        kind: str,
        count: int = 1,
        *,
        path_prefix: str | None = None,
        method: str | None = None,
        status: int = 500,
        seconds: float = 0.0,
    ) -> Json:
        body = {
            "kind": kind,
            "count": count,
            "path_prefix": path_prefix,
            "method": method,
            "status": status,
            "seconds": seconds,
        }
        return self._call("POST", "/_emulator/faults", body)

    def fail_next(
        self, count: int = 1, *, status: int = 500, path_prefix: str | None = None
    ) -> Json:
        return self.add_fault("error", count, status=status, path_prefix=path_prefix)

    def delay_next(
        self, count: int, seconds: float, *, after: bool = False, path_prefix: str | None = None
    ) -> Json:
        kind = "delay_after" if after else "delay"
        return self.add_fault(kind, count, seconds=seconds, path_prefix=path_prefix)

    def drop_next(
        self, count: int = 1, *, after: bool = False, path_prefix: str | None = None
    ) -> Json:
        kind = "drop_after" if after else "drop_before"
        return self.add_fault(kind, count, path_prefix=path_prefix)

    def rate_limit_next(self, count: int = 1, *, path_prefix: str | None = None) -> Json:
        return self.add_fault("rate_limit", count, path_prefix=path_prefix)

    def random_failures(
        self,
        ratio: float,
        *,
        seed: int = 0,
        kinds: dict[str, float] | Sequence[str] | None = None,
        timeout_seconds: float = 2.0,
        path_prefix: str | None = None,
    ) -> Json:
        body = {
            "ratio": ratio,
            "seed": seed,
            "kinds": dict(kinds) if isinstance(kinds, dict) else list(kinds or RANDOM_KINDS),
            "timeout_seconds": timeout_seconds,
            "path_prefix": path_prefix,
        }
        return self._call("POST", "/_emulator/faults/random", body)

    def clear_faults(self) -> None:
        self._call("POST", "/_emulator/faults/clear", {})

    def faults(self) -> Json:
        return self._call("GET", "/_emulator/faults")

    def fault_counts(self) -> dict[str, int]:
        return dict(self.faults()["counts"])

    def set_rate_limit(self, rate: float | None, burst: float | None = None) -> Json:
        return self._call("POST", "/_emulator/rate_limit", {"rate": rate, "burst": burst})

    # observations
    def meter_events(
        self, customer: str | None = None, event_name: str | None = None
    ) -> list[Json]:
        return list(
            self._call("GET", "/_emulator/meter_events", customer=customer, event_name=event_name)[
                "data"
            ]
        )

    def concurrency(self) -> Json:
        return self._call("GET", "/_emulator/concurrency")

    def max_concurrency(self, customer: str | None = None) -> int:
        info = self.concurrency()
        if customer is None:
            return int(info["max_overall"])
        return int(info["max_in_flight"].get(customer, 0))

    def stats(self) -> Json:
        return self._call("GET", "/_emulator/stats")

    def aggregate(self, meter: str, customer: str, start: float, end: float) -> int:
        answer = self._call(
            "GET", "/_emulator/aggregate", meter=meter, customer=customer, start=start, end=end
        )
        return int(answer["value"])

    # subscriptions
    def subscription_state(self, subscription: str) -> Json:
        return self._call("GET", f"/_emulator/subscriptions/{subscription}")

    def advance_subscription(self, subscription: str, at: str = "now") -> Json:
        return self._call("POST", f"/_emulator/subscriptions/{subscription}/advance", {"at": at})

    def set_subscription_period(
        self,
        subscription: str,
        start: int,
        end: int,
        period_seconds: int | None = None,
    ) -> Json:
        body = {"start": start, "end": end, "period_seconds": period_seconds}
        return self._call("POST", f"/_emulator/subscriptions/{subscription}/period", body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="active-series stripe-emulator",
        description="Serve a local emulation of Stripe's billing-meter API for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=12111, help="port (default 12111; 0 = any)")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=DEFAULT_RATE_LIMIT,
        help="requests per second allowed by the token bucket; 0 disables it (default 25)",
    )
    parser.add_argument("--burst", type=float, default=None, help="bucket size (default = rate)")
    parser.add_argument(
        "--allow-unknown-customers",
        action="store_true",
        help="accept meter events for customers the emulator does not know",
    )
    parser.add_argument(
        "--unaligned-summaries",
        action="store_true",
        help="allow event summary windows that are not aligned to minutes",
    )
    parser.add_argument(
        "--enforce-customer-concurrency",
        action="store_true",
        help="answer 429 to a meter event while another for the same customer is in flight",
    )
    parser.add_argument("--api-key", default=None, help="accept only this API key")
    parser.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    args = parser.parse_args(argv)
    server = make_server(
        args.host,
        args.port,
        quiet=args.quiet,
        rate_limit=args.rate_limit or None,
        rate_burst=args.burst,
        require_known_customer=not args.allow_unknown_customers,
        minute_aligned_summaries=not args.unaligned_summaries,
        enforce_customer_concurrency=args.enforce_customer_concurrency,
        api_key=args.api_key,
    )
    sys.stderr.write(f"stripe emulator listening on {server.base_url}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
