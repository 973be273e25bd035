"""The worker's Stripe calls, many organizations at once: :class:`Poster`.

A claim (:mod:`.claim`) hands over the calls of a batch of organizations; the poster makes
each organization's calls one after the other, and those of different organizations at
once on a pool of ``concurrency`` threads (v1: one meter event per request), or packs them
into requests of up to 100 events sent at once (v2 meter event streams, whose refusals
come back later: :meth:`Poster.refusals`). Every call first waits for the worker's one
token bucket. A 429 or a refused key pauses every call of the worker for a while.

Threads rather than asyncio: the SDK's synchronous client and psycopg's synchronous
connections are what the rest of the relay uses, the work per call is a few
milliseconds of Python around a network wait, and all database work stays on the
claiming thread, so no connection is shared between threads.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import stripe

from active_series.ratelimit import backoff
from active_series.relay import queries as q
from active_series.relay.config import RelayConfig
from active_series.relay.observe import Log, Metrics
from active_series.relay.prices import LIVE, PriceKeeper
from active_series.relay.stripe_api import Outcome, StripeMeter, classify, current_period, plain

# v2 meter event streams take at most this many events per request
STREAM_BATCH = 100

T = TypeVar("T")


class Stopping(Exception):
    """Raised inside a drain once a stop was requested."""


@dataclass(frozen=True)
class Call:
    """One meter event to post for an organization (``period_start``: the period it is for,
    None for a resend of a pending post; ``deadline``: the ``time.monotonic()`` by which its
    call ends, as its ledger row promises)."""

    org: int
    customer: str
    value: int
    timestamp: int
    identifier: str
    deadline: float
    resend: bool = False
    period_start: datetime | None = None


Results = dict[str, tuple[Outcome, str]]


class Poster:
    """The Stripe side of one worker: the clients, the pool, the shared pause."""

    def __init__(self, cfg: RelayConfig, log: Log, metrics: Metrics) -> None:
        self.cfg = cfg
        self.log = log
        self.metrics = metrics
        self.meter = StripeMeter(cfg)
        self.stream: Any = None
        if cfg.api == "v2-stream":
            from active_series.relay.stripe_stream import MeterEventStream

            self.stream = MeterEventStream(cfg, self.meter.bucket)
        self.pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="relay-post")
        self.lock = threading.Lock()
        self.pause_until = 0.0
        self.rate_backoff = 0
        self.subscription_until: dict[int, float] = {}
        # organizations whose customer's subscriptions are all canceled: when the newest ended
        self.ended: dict[int, int] = {}
        self.prices = PriceKeeper(
            self.meter.client, cfg.meter_event_name, self.meter.bucket.acquire, log
        )

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ pausing
    def wait_pause(self, stop: threading.Event) -> None:
        while not stop.is_set():
            wait = self.pause_until - time.time()
            if wait <= 0:
                return
            stop.wait(min(wait, 1.0))
        raise Stopping

    def _outcome(self, outcome: Outcome, reason: str) -> None:
        """Keep the worker-wide pause and backoff in step with a call's outcome."""
        with self.lock:
            now = time.time()
            if outcome.accepted:
                self.rate_backoff = 0
            elif outcome == Outcome.RATE_LIMITED:
                self.rate_backoff = min(self.rate_backoff + 1, 6)
                self.pause_until = max(self.pause_until, now + backoff(self.rate_backoff, 0.5, 30))
                self.log("warning", "rate_limited", pause=self.pause_until - now)
            elif outcome == Outcome.GLOBAL:
                self.pause_until = now + 30.0
                self.log("error", "stripe_refused_credentials", reason=reason)

    # ------------------------------------------------------------------ posting
    def post(self, calls: list[Call]) -> Results:
        """Make the calls; returns each one's (outcome, reason) by identifier. An
        organization's calls stop at its first failure: the rest are NOT_SENT."""
        if not calls:
            return {}
        groups = list(by_org(calls, lambda call: call.org).values())
        if self.stream is None:
            jobs, work = groups, self._post_one_by_one
        else:
            jobs, work = pack(groups, STREAM_BATCH), self._post_stream
        # one job (a single organization changed): no hand-over to the pool
        parts = map(work, jobs) if len(jobs) == 1 else self.pool.map(work, jobs)
        return self._count(parts)

    def submit(self, request: list[Call]) -> Future[Results]:
        """Send one stream request (at most STREAM_BATCH events, whole organizations) on
        the pool; :meth:`collect` gathers the answers."""
        assert self.stream is not None and 0 < len(request) <= STREAM_BATCH
        return self.pool.submit(self._post_stream, request)

    def collect(self, requests: list[Future[Results]]) -> Results:
        """The outcomes of :meth:`submit`'s requests, once all are answered."""
        return self._count(f.result() for f in requests)

    def _count(self, parts: Iterable[Results]) -> Results:
        results: Results = {}
        for part in parts:
            results.update(part)
        for outcome, _ in results.values():
            self.metrics.posts.labels(str(outcome)).inc()
        return results

    def _paused(self) -> bool:
        return time.time() < self.pause_until

    def _post_one_by_one(self, calls: list[Call]) -> Results:
        """One organization's calls, in order (v1)."""
        results: Results = {}
        for call in calls:
            if self._paused():
                results[call.identifier] = (Outcome.NOT_SENT, "")
                continue
            outcome, reason = self.meter.post(
                call.customer, call.value, call.timestamp, call.identifier, call.deadline
            )
            self._outcome(outcome, reason)
            results[call.identifier] = (outcome, reason)
            if not outcome.accepted:
                self._log_failure(call, outcome, reason)
                for rest in calls[calls.index(call) + 1 :]:
                    results[rest.identifier] = (Outcome.NOT_SENT, "")
                break
        return results

    def _post_stream(self, calls: list[Call]) -> Results:
        """One v2 stream request: its events are accepted (validated later) or not, together."""
        from active_series.relay.stripe_stream import MeterEvent

        if self._paused():
            return {c.identifier: (Outcome.NOT_SENT, "") for c in calls}
        outcome, reason = self.stream.send(
            [MeterEvent(c.customer, c.value, c.timestamp, c.identifier) for c in calls],
            min(c.deadline for c in calls),
        )
        self._outcome(outcome, reason)
        if not outcome.accepted:
            for call in calls:
                self._log_failure(call, outcome, reason)
        return {c.identifier: (outcome, reason) for c in calls}

    def _log_failure(self, call: Call, outcome: Outcome, reason: str) -> None:
        self.log(
            "warning",
            "post_failed",
            org=call.org,
            customer=call.customer,
            value=call.value,
            timestamp=call.timestamp,
            kind=outcome,
            reason=reason,
            resend=call.resend,
        )

    def refusals(self) -> list[Any]:
        """Events Stripe refused after accepting their request (v2 streams only)."""
        if self.stream is None:
            return []
        try:
            return list(self.stream.refusals())
        except stripe.StripeError as exc:
            self.log("warning", "refusals_unreadable", reason=classify(exc)[1])
            return []

    # ------------------------------------------------------------------ subscriptions
    def sync_subscriptions(self, ledger: psycopg.Connection[Any], claims: list[Any]) -> None:
        """Align each organization's billing period with its Stripe subscription's current
        period, read again once the known one has ended (and every ``subscription_recheck``
        seconds within it), and keep its metered price (prices.py). The period is the
        metered item's (items may have periods of their own). No subscription: the
        database's periods stay (calendar months unless an admin set them).

        What Stripe bills is kept in step too: the periods that ended before the live
        subscription began are finalized without a post (no invoice bills them; unless
        ``post_before_subscription``), and a customer whose subscriptions are all canceled
        is billed up to the newest one's end only (:attr:`ended`: the claim posts nothing
        at or after it). The reads run on the pool; the writes on ``ledger``."""
        now = time.time()
        due = [c for c in claims if now >= self.subscription_until.get(c.org, 0.0)]
        if not due:
            return
        recheck = self.cfg.subscription_recheck
        prices: dict[str, dict[str, Any]] = {}  # price id -> with its tiers, read once a pass
        answers = self.pool.map(lambda claim: self._subscriptions(claim, prices), due)
        for claim, answer in zip(due, answers, strict=True):
            if isinstance(answer, stripe.StripeError):
                outcome, reason = classify(answer)
                self._outcome(outcome, reason)
                self.subscription_until[claim.org] = now + min(60.0, self.cfg.poll_interval)
                self.log("warning", "subscription_unreadable", org=claim.org, reason=reason)
                continue
            subscriptions, item = answer
            self.prices.keep(ledger, claim.org, item)
            self._note_ended(claim, subscriptions)
            bounds = current_period(subscriptions, item)
            if bounds is None:
                self.subscription_until[claim.org] = now + recheck
                continue
            start, end = bounds
            row = ledger.execute(q.CURRENT_BOUNDS, (claim.org,)).fetchone()
            differs = row is None or (int(row[0]), int(row[1])) != (start, end)
            if differs and start <= now < end:
                ledger.execute(q.SET_BILLING_PERIOD, (claim.org, start, end))
                self.log("info", "billing_period_set", org=claim.org, start=start, end=end)
            if not self.cfg.post_before_subscription:
                self._skip_before(ledger, claim.org, subscriptions)
            self.subscription_until[claim.org] = min(float(end), now + recheck)

    def _note_ended(self, claim: Any, subscriptions: list[Any]) -> None:
        """Keep :attr:`ended`: when the customer has no live subscription but a canceled
        one, the newest one's end (Stripe bills no usage after it)."""
        subs = [plain(s) for s in subscriptions]
        if any(s.get("status") in LIVE for s in subs):
            ended = None
        else:
            ends = [int(s["ended_at"]) for s in subs if s.get("ended_at") is not None]
            ended = max(ends) if ends else None
        if ended is None:
            self.ended.pop(claim.org, None)
        elif self.ended.get(claim.org) != ended:
            self.ended[claim.org] = ended
            self.log(
                "info", "subscription_ended", org=claim.org, customer=claim.customer, ended=ended
            )

    def _skip_before(
        self, ledger: psycopg.Connection[Any], org: int, subscriptions: list[Any]
    ) -> None:
        """Finalize, unposted (``billed_value`` NULL), the periods that ended at or before
        the live subscription's start and after the end of any earlier subscription of the
        customer: usage no invoice bills (a stub period of activity before the customer
        subscribed). A period an earlier subscription billed keeps the usual rules."""
        subs = [plain(s) for s in subscriptions]
        live = next((s for s in subs if s.get("status") in LIVE), None)
        if live is None or live.get("start_date") is None:
            return
        began = int(live["start_date"])
        earlier = [
            int(s["ended_at"]) for s in subs if s.get("ended_at") is not None
            and int(s["ended_at"]) <= began
        ]  # fmt: skip
        after = max(earlier) if earlier else None
        for start, end, usage in ledger.execute(q.SKIP_BEFORE_SUBSCRIPTION, (org, began, after)):
            self.log(
                "info",
                "period_before_subscription",
                org=org,
                period=start,
                end=end,
                usage=usage,
                subscription_start=began,
            )

    def _subscriptions(
        self, claim: Any, prices: dict[str, dict[str, Any]]
    ) -> tuple[list[Any], dict[str, Any] | None] | stripe.StripeError:
        """The customer's subscriptions and their metered item, its price with its tiers
        (each price read once per pass: ``prices``), or the error that stopped the reads."""
        try:
            subscriptions = self.meter.subscriptions(claim.customer)
            item = self.prices.metered(subscriptions)
            if item is not None and item.get("price"):
                price_id = str(item["price"]["id"])
                if price_id not in prices:
                    prices[price_id] = plain(self.meter.price(price_id))
                item = {**item, "price": prices[price_id]}
            return subscriptions, item
        except stripe.StripeError as exc:
            return exc


def by_org(items: Iterable[T], org: Callable[[T], int]) -> dict[int, list[T]]:
    """Calls or posts grouped by organization, each group in the order given."""
    groups: dict[int, list[T]] = defaultdict(list)
    for item in items:
        groups[org(item)].append(item)
    return groups


def pack(groups: list[list[T]], size: int) -> list[list[T]]:
    """Pack organizations' groups (calls or posts) into requests of at most ``size``
    events, each organization's whole group in one request (one call per customer in
    flight)."""
    requests: list[list[T]] = []
    current: list[T] = []
    for group in groups:
        if current and len(current) + len(group) > size:
            requests.append(current)
            current = []
        current.extend(group)
    if current:
        requests.append(current)
    return requests
