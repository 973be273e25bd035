"""The emulator's state: objects, clock, faults, limits, idempotency, concurrency."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from active_series.ratelimit import TokenBucket

from .common import (
    DEFAULT_RATE_LIMIT,
    FAULT_KINDS,
    IDEMPOTENCY_KEY_SECONDS,
    RANDOM_KINDS,
    ApiError,
    Json,
    add_months,
)
from .faults import Fault, FaultRule, RandomFaults


@dataclass
class Subscription:
    obj: Json
    anchor: int
    index: int
    period_seconds: int | None
    interval: str
    interval_count: int
    history: list[tuple[int, int]] = field(default_factory=list)
    invoice_now: bool = False  # canceled with its partial period invoiced
    # when a cancellation took effect, to the sub-second (ended_at is whole seconds): the
    # final invoice holds the events received before then
    ended_exactly: float | None = None
    # subscription item -> when it began billing usage (added, or its price changed, after the
    # subscription began): the usage reported before is not billed on it
    billed_from: dict[str, int] = field(default_factory=dict)

    def boundary(self, index: int) -> int:
        if self.period_seconds:
            return self.anchor + index * self.period_seconds
        step = index * self.interval_count
        if self.interval == "month":
            return add_months(self.anchor, step)
        if self.interval == "year":
            return add_months(self.anchor, 12 * step)
        if self.interval == "week":
            return self.anchor + step * 7 * 86400
        return self.anchor + step * 86400


class Store:
    """Every object the emulator holds, guarded by one lock; the clock, faults, limits,
    idempotency and per-customer concurrency. The resources build on it."""

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
            self.stripe_versions: dict[str, int] = {}  # Stripe-Version header -> requests
            self.summary_lag = 0.0  # seconds before an event counts in event summaries

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
            return self.bucket.try_take() if self.bucket else True

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
        """Return a stored answer to replay, raise on conflicts, or mark the key in progress.

        A key is forgotten 24 hours (emulator clock) after its first request, as Stripe may
        prune it then: the same key afterwards is a new request."""
        with self.lock:
            now = self.now()
            entry = self.idempotency.get((scope, key))
            if entry is not None and now - entry["at"] >= IDEMPOTENCY_KEY_SECONDS:
                entry = None
            if entry is None:
                self.idempotency[(scope, key)] = {
                    "fingerprint": fingerprint,
                    "response": None,
                    "at": now,
                }
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
            elif (scope, key) in self.idempotency:
                self.idempotency[(scope, key)]["response"] = response

    def count_version(self, version: str | None) -> None:
        """Count a request's ``Stripe-Version`` header (``""``: none sent)."""
        with self.lock:
            name = version or ""
            self.stripe_versions[name] = self.stripe_versions.get(name, 0) + 1
