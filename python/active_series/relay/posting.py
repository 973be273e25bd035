"""The worker's Stripe calls, many organizations at once: :class:`Poster`.

A claim (:mod:`.claim`) hands over the calls of a batch of organizations; the poster makes
each organization's calls one after the other, and those of different organizations at
once on a pool of ``concurrency`` threads (v1: one meter event per request), or packs them
into requests of up to 100 events sent at once (v2 meter event streams). Every request gets
a fresh idempotency key, and the posts each key carried are handed to ``note_attempts``
before the request is made: Stripe validates meter events after answering, in both APIs,
and its error reports name a refused event by that key (:meth:`Poster.refusals`). Every
call first waits for the worker's one token bucket. A 429 or a refused key pauses every
call of the worker for a while.

Threads rather than asyncio: the SDK's synchronous client and psycopg's synchronous
connections are what the rest of the relay uses, the work per call is a few
milliseconds of Python around a network wait, and all database work stays on the
claiming thread, so no connection is shared between threads.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Container, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import stripe
from psycopg.rows import class_row, dict_row

from active_series.ratelimit import backoff
from active_series.relay import queries as q
from active_series.relay.config import RelayConfig
from active_series.relay.observe import Log, Metrics
from active_series.relay.prices import LIVE, PriceKeeper
from active_series.relay.rows import Bounds, HeldPost, NextTimestamp, Unbilled
from active_series.relay.stripe_api import (
    Outcome,
    StripeMeter,
    attempt_key,
    classify,
    current_period,
    plain,
)
from active_series.relay.stripe_stream import (
    ErrorReports,
    MeterEvent,
    MeterEventStream,
    Refusal,
    stream_key,
)

# v2 meter event streams take at most this many events per request
STREAM_BATCH = 100
# Stripe's range for an event's timestamp, from the moment it receives the event
STRIPE_MAX_AGE = 35 * 86400
STRIPE_MAX_AHEAD = 5 * 60

T = TypeVar("T")


class Stopping(Exception):
    """Raised inside a drain once a stop was requested."""


@dataclass(frozen=True)
class Call:
    """One meter event to post for an organization (``period_start``: the period it is for,
    None for a resend of a pending post; ``deadline``: the ``time.monotonic()`` by which its
    call ends, as its ledger row promises; ``key``: the idempotency key of the request that
    carries it, given by :meth:`Poster.post`)."""

    org: int
    customer: str
    value: int
    timestamp: int
    identifier: str
    deadline: float
    resend: bool = False
    period_start: datetime | None = None
    key: str = ""


Results = dict[str, tuple[Outcome, str]]


@dataclass(frozen=True)
class SentPost:
    """A post a request carried (``_post_attempt``): the request's idempotency key, the
    post's organization, identifier, customer and event timestamp, and when the request was
    made (Unix seconds)."""

    key: str
    org: int
    identifier: str
    customer: str
    timestamp: int
    sent_at: float


@dataclass(frozen=True)
class Edges:
    """When a customer's subscriptions let Stripe bill usage, as the last read of them saw
    it (Unix seconds; kept in ``_relay_subscription``): ``ended``, no subscription is live
    and the newest canceled one ended then; ``cancel_at``, the live one's scheduled
    cancellation; ``since``, the metered item bills usage from then on (it was added to the
    subscription, or its price changed, after the subscription began); ``price``, the
    metered item's price; ``started``, the live subscription's start (its metered item's,
    when that was added later) and ``prior_end``, the end of an earlier subscription of the
    customer before it: the periods that ended at or before ``started`` and began at or
    after ``prior_end`` are billed by no invoice (:meth:`Poster.finalize_before_start`)."""

    ended: int | None = None
    cancel_at: int | None = None
    since: int | None = None
    price: str | None = None
    started: int | None = None
    prior_end: int | None = None


class Poster:
    """The Stripe side of one worker: the clients, the pool, the shared pause."""

    def __init__(
        self,
        cfg: RelayConfig,
        log: Log,
        metrics: Metrics,
        note_attempts: Callable[[list[Call]], None] = lambda calls: None,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.metrics = metrics
        self.meter = StripeMeter(cfg)
        self.note_attempts = note_attempts
        self.stream: Any = None
        if cfg.api == "v2-stream":
            self.stream = MeterEventStream(cfg, self.meter.bucket)
            self.reports: ErrorReports = self.stream.reports
        else:
            self.reports = ErrorReports(self.meter.client, self.meter.bucket)
        self.pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="relay-post")
        self.lock = threading.Lock()
        self.pause_until = 0.0
        self.rate_backoff = 0
        self.subscription_until: dict[int, float] = {}
        # the claimed organizations' recorded edges (:meth:`load_edges`), and those whose
        # customer's subscriptions are all canceled (or whose cancel_at passed): when it ended
        self.edges: dict[int, Edges] = {}
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
            jobs = [[replace(c, key=attempt_key(c.identifier)) for c in g] for g in groups]
            work = self._post_one_by_one
        else:
            jobs = [self._keyed(request) for request in pack(groups, STREAM_BATCH)]
            work = self._post_stream
        self.note_attempts([call for job in jobs for call in job])
        # one job (a single organization changed): no hand-over to the pool
        parts = map(work, jobs) if len(jobs) == 1 else self.pool.map(work, jobs)
        return self._count(parts)

    def submit(self, request: list[Call]) -> Future[Results]:
        """Send one stream request (at most STREAM_BATCH events, whole organizations) on
        the pool, under a fresh idempotency key (noted first); :meth:`collect` gathers the
        answers."""
        assert self.stream is not None and 0 < len(request) <= STREAM_BATCH
        request = self._keyed(request)
        self.note_attempts(request)
        return self.pool.submit(self._post_stream, request)

    @staticmethod
    def _keyed(request: list[Call]) -> list[Call]:
        """The calls of one stream request, under its one fresh idempotency key."""
        key = stream_key()
        return [replace(call, key=key) for call in request]

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
                call.customer,
                call.value,
                call.timestamp,
                call.identifier,
                call.deadline,
                key=call.key or None,
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
        if self._paused():
            return {c.identifier: (Outcome.NOT_SENT, "") for c in calls}
        outcome, reason = self.stream.send(
            [MeterEvent(c.customer, c.value, c.timestamp, c.identifier) for c in calls],
            min(c.deadline for c in calls),
            calls[0].key or None,
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

    def refusals(self) -> list[Refusal]:
        """The samples of the error reports Stripe published since the last read: events it
        refused after accepting their request (v1 and v2). A report that counts more refused
        events than it samples is logged (``refusals_unsampled``): the others are named
        nowhere."""
        try:
            refusals = self.reports.refusals()
        except stripe.StripeError as exc:
            self.log("warning", "refusals_unreadable", reason=classify(exc)[1])
            return []
        reports = {r.report: r for r in refusals}
        for r in reports.values():
            if r.unsampled:
                self.log(
                    "warning",
                    "refusals_unsampled",
                    report=r.report,
                    error_count=r.error_count,
                    sampled=r.sampled,
                )
        return refusals

    def refused_posts(
        self, refusals: list[Refusal], posts: list[SentPost]
    ) -> list[tuple[str, str]]:
        """The posts the samples of error reports refuse, as (identifier, reason) pairs.

        A sample names a request: a v1 post is one event, but a stream request carries up to
        100, of several organizations. Among those, a sample refuses the posts it can be
        pinned on: for a timestamp code, those whose timestamp was out of Stripe's range when
        the request was made; for an unknown customer, those of customers Stripe does not
        know (each read once); otherwise, or when that leaves none, every post the request
        carried (the reason says so when they are several organizations'). The reason says
        too when the report counts refused events it does not sample: those are matched to
        no post here."""
        carried: dict[str, list[SentPost]] = defaultdict(list)
        for post in posts:
            carried[post.key].append(post)
        samples: dict[tuple[str, str], Refusal] = {}
        for r in refusals:
            if r.key:
                samples.setdefault((r.key, r.code), r)
        known: dict[str, bool | None] = {}
        out: dict[str, str] = {}
        for (key, code), sample in samples.items():
            rows = carried.get(key, [])
            if not rows:
                continue
            orgs = {p.org for p in rows}
            chosen = rows
            if len(orgs) > 1 or code.startswith("timestamp_"):
                chosen = self._pinned(code, rows, known) or rows
            reason = f"{code}: {sample.message}"
            if len({p.org for p in chosen}) > 1:
                reason += (
                    f" (sampled for a stream request carrying the posts of {len(orgs)} "
                    "organizations: whose event Stripe refused is not known)"
                )
            if sample.unsampled:
                reason += (
                    f" (error report {sample.report} counts {sample.error_count} refused "
                    f"events and samples {sample.sampled}: the others are matched to no post)"
                )
            for post in chosen:
                out.setdefault(post.identifier, reason[:500])
        return list(out.items())

    def _pinned(
        self, code: str, rows: list[SentPost], known: dict[str, bool | None]
    ) -> list[SentPost]:
        """The posts of a request an error ``code`` can be pinned on (none: it cannot)."""
        if code == "timestamp_too_far_in_past":
            return [p for p in rows if p.timestamp < p.sent_at - STRIPE_MAX_AGE]
        if code == "timestamp_in_future":
            return [p for p in rows if p.timestamp > p.sent_at + STRIPE_MAX_AHEAD]
        if code == "meter_event_customer_not_found":
            for customer in {p.customer for p in rows} - set(known):
                known[customer] = self._customer_exists(customer)
            if any(known[p.customer] is None for p in rows):
                return []  # a customer could not be read
            return [p for p in rows if known[p.customer] is False]
        return []

    def _customer_exists(self, customer: str) -> bool | None:
        """Whether Stripe knows the customer (a deleted one it does not); None: unknown (the
        read failed)."""
        self.meter.bucket.acquire()
        try:
            found = self.meter.client.v1.customers.retrieve(customer)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return False
            return None
        except stripe.StripeError:
            return None
        return not getattr(found, "deleted", False)

    # ------------------------------------------------------------------ subscriptions
    def sync_subscriptions(self, ledger: psycopg.Connection[Any], claims: list[Any]) -> None:
        """Align each organization's billing period with its Stripe subscription's current
        period, read again once the known one has ended (and every ``subscription_recheck``
        seconds within it), and keep its metered price (prices.py). The period is the
        metered item's (items may have periods of their own). No subscription: the
        database's periods stay (calendar months unless an admin set them).

        What Stripe bills is kept in step too, in ``_relay_subscription`` (:class:`Edges`,
        read by every claim: :meth:`load_edges`): the periods that ended before the live
        subscription (or its metered item) began are finalized without a post (no invoice
        bills them; unless ``post_before_subscription``); a known ``cancel_at`` is where the
        posts end (:meth:`bill_windows`); a customer whose subscriptions are all canceled
        is billed up to the newest one's end only (the claim posts nothing at or after it);
        an item added, or its price changed, mid-period bills the posts made since. The
        reads run on the pool; the writes on ``ledger``."""
        now = time.time()
        due = [c for c in claims if now >= self.subscription_until.get(c.org, 0.0)]
        if not due:
            return
        recheck = self.cfg.subscription_recheck
        prices: dict[str, dict[str, Any]] = {}  # price id -> with its tiers, read once a pass
        answers = self.pool.map(lambda claim: self._subscriptions(claim, prices), due)
        recorded = self._recorded(ledger, due)
        for claim, answer in zip(due, answers, strict=True):
            if isinstance(answer, stripe.StripeError):
                outcome, reason = classify(answer)
                self._outcome(outcome, reason)
                self.subscription_until[claim.org] = now + min(60.0, self.cfg.poll_interval)
                self.log("warning", "subscription_unreadable", org=claim.org, reason=reason)
                continue
            subscriptions, item = answer
            self.prices.keep(ledger, claim.org, item)
            began = self._note_edges(ledger, claim, subscriptions, item, recorded.get(claim.org))
            bounds = current_period(subscriptions, item)
            if bounds is None:
                self.subscription_until[claim.org] = now + recheck
                continue
            start, end = bounds
            row = (
                ledger.cursor(row_factory=class_row(Bounds))
                .execute(q.CURRENT_BOUNDS, (claim.org,))
                .fetchone()
            )
            differs = row is None or (int(row.start), int(row.end)) != (start, end)
            if differs and start <= now < end:
                ledger.execute(q.SET_BILLING_PERIOD, (claim.org, start, end))
                self.log("info", "billing_period_set", org=claim.org, start=start, end=end)
            if not self.cfg.post_before_subscription:
                self._skip_before(ledger, claim.org, subscriptions, began)
            self._trial_unbilled(ledger, claim.org, subscriptions, now)
            self.subscription_until[claim.org] = min(float(end), now + recheck)

    def rechecks(self, ledger: psycopg.Connection[Any], limit: int) -> list[int]:
        """Up to ``limit`` billed organizations to claim without a change: no worker has read
        their customer's subscriptions for ``subscription_recheck`` seconds (``read_at`` in
        ``_relay_subscription``; or ever), nor this one since its last attempt (a read that
        failed is retried after :meth:`sync_subscriptions`' pause, not at once). Without
        them a price changed, or a subscription canceled, while the organization has no
        activity is seen only at its next change or at its period's end."""
        if not self.cfg.sync_subscriptions or limit <= 0:
            return []
        now = time.time()
        rows = ledger.execute(q.RECHECK_DUE, (self.cfg.subscription_recheck, limit)).fetchall()
        return [org for (org,) in rows if now >= self.subscription_until.get(org, 0.0)]

    def _recorded(self, ledger: psycopg.Connection[Any], claims: list[Any]) -> dict[int, Edges]:
        """The edges recorded for the claimed organizations (of the claim's customer)."""
        rows = ledger.cursor(row_factory=dict_row).execute(
            q.SUBSCRIPTION_EDGES, ([c.org for c in claims], [c.customer or "" for c in claims])
        )
        return {int(row.pop("org")): Edges(**row) for row in rows}

    def load_edges(self, ledger: psycopg.Connection[Any], claims: Iterable[Any]) -> None:
        """Read the recorded edges of the claimed organizations into :attr:`edges` and
        :attr:`ended`: what every claim respects, whether or not this worker has read the
        subscription since it started. A ``cancel_at`` that has passed is an end (Stripe
        ended the subscription then; the next read of it says so)."""
        claims = [c for c in claims if c.customer is not None]
        for claim in claims:
            self.edges.pop(claim.org, None)
            self.ended.pop(claim.org, None)
        if not claims:
            return
        now = int(time.time())
        for org, edges in self._recorded(ledger, claims).items():
            self.edges[org] = edges
            if edges.ended is not None:
                self.ended[org] = int(edges.ended)
            elif edges.cancel_at is not None and now >= edges.cancel_at:
                self.ended[org] = int(edges.cancel_at)

    def _note_edges(
        self,
        ledger: psycopg.Connection[Any],
        claim: Any,
        subscriptions: list[Any],
        item: dict[str, Any] | None,
        recorded: Edges | None,
    ) -> int | None:
        """Record the customer's :class:`Edges` after a read of its subscriptions; returns
        when the metered item began billing if later than its subscription's start (an item
        added since), for :meth:`_skip_before`."""
        subs = [plain(s) for s in subscriptions]
        live = next((s for s in subs if s.get("status") in LIVE), None)
        ended = cancel_at = added = None
        if live is None:
            ends = [int(s["ended_at"]) for s in subs if s.get("ended_at") is not None]
            ended = max(ends) if ends else None
        else:
            cancel_at = None if live.get("cancel_at") is None else int(live["cancel_at"])
            created = item.get("created") if item is not None else None
            if created is not None and int(created) > int(live.get("created") or created):
                added = int(created)
        price = str(item["price"]["id"]) if item is not None and item.get("price") else None
        # a price changed on the same item: Stripe bills the usage reported since the change
        # (not before it) on the new price; the change is seen at this read, no later
        swapped = None
        if recorded is not None and recorded.price and price and recorded.price != price:
            swapped = int(time.time())
            self.log(
                "info", "price_changed", org=claim.org, old=recorded.price, new=price,
                since=swapped,
            )  # fmt: skip
        kept = recorded.since if recorded is not None and recorded.price == price else None
        since = max((t for t in (added, kept, swapped) if t is not None), default=None)
        started, prior_end = unbilled_before(subs, added)
        # written at every read, changed or not: its read_at says when the subscriptions
        # were last read (:meth:`rechecks`)
        ledger.execute(
            q.SUBSCRIPTION_EDGES_SET,
            (claim.org, claim.customer, ended, cancel_at, since, price, started, prior_end),
        )
        if ended is not None and (recorded is None or recorded.ended != ended):
            self.log(
                "info", "subscription_ended", org=claim.org, customer=claim.customer, ended=ended
            )
        if cancel_at is not None and (recorded is None or recorded.cancel_at != cancel_at):
            self.log(
                "info",
                "subscription_cancel_at",
                org=claim.org,
                customer=claim.customer,
                cancel_at=cancel_at,
            )
        return added

    def bill_windows(
        self, ledger: psycopg.Connection[Any], claims: dict[int, Any], plan: dict[int, list[Any]]
    ) -> None:
        """Fit the claim's plan (``_relay_plan``'s periods) to what the subscription bills,
        for the organizations whose recorded edges cut a period: a known future
        ``cancel_at`` inside it ends it there (Stripe invoices at the cancellation: every
        change is posted at once, timestamped before it, nothing is kept for posts after
        it), and an item that began billing inside it (``since``) bills the posts from then
        on only (what Stripe holds for the period is the newest post since; the next one is
        timestamped no earlier)."""
        for org, periods in plan.items():
            edges = self.edges.get(org)
            customer = claims[org].customer if org in claims else None
            if edges is None or customer is None:
                continue
            periods[:] = [self._window(ledger, customer, edges, p) for p in periods]

    def finalize_at_end(
        self,
        conn: psycopg.Connection[Any],
        claims: dict[int, Any],
        plan: dict[int, list[Any]],
        skip: Container[int],
    ) -> None:
        """Finalize at once, and take out of the claim's plan, each period a subscription's
        end cuts (the customer's subscriptions all ended, or a ``cancel_at`` passed, inside
        it or at its end): Stripe made the period's final invoice when the subscription
        ended, and it bills what Stripe held then, the newest post timestamped before the
        end (since the metered item began billing, if later), whatever the period's usage
        becomes (billing_drift shows the difference). Waits while that post's outcome is
        unknown (pending: resent by a claim first). Organizations in ``skip`` are left to
        the rest of the claim."""
        for org, periods in plan.items():
            ended = self.ended.get(org)
            claim = claims.get(org)
            if ended is None or claim is None or claim.customer is None or org in skip:
                continue
            if not claim.billed:
                continue
            edges = self.edges.get(org)
            since = edges.since if edges is not None else None
            kept = []
            for p in periods:
                if not p.first_second < ended <= p.last_second + 1:
                    kept.append(p)
                    continue
                lo = int(since) if since is not None and p.first_second < since < ended else None
                row = (
                    conn.cursor(row_factory=class_row(HeldPost))
                    .execute(q.HELD_WITHIN, (claim.customer, lo or p.first_second, ended - 1))
                    .fetchone()
                )
                value, status = (int(row.value), row.status) if row is not None else (0, None)
                if status == "pending":
                    kept.append(p)
                    continue
                conn.execute(q.FINALIZE_PERIOD, {"billed": value, "org": org, "start": p.start})
                self.log(
                    "info",
                    "period_finalized",
                    org=org,
                    period=p.start,
                    billed=value,
                    usage=p.usage,
                    subscription_ended=ended,
                )
            periods[:] = kept

    def finalize_before_start(
        self,
        conn: psycopg.Connection[Any],
        claims: dict[int, Any],
        plan: dict[int, list[Any]],
    ) -> None:
        """Finalize unbilled (``billed_value`` NULL), and take out of the claim's plan, each
        period that ended at or before the live subscription's recorded start (and began at
        or after the end of an earlier one): a stub of activity before the customer
        subscribed, which no invoice bills. :meth:`sync_subscriptions` does so for the
        periods there are at its read; this covers the ones that appear, or change, between
        reads (a late change), and a worker that has not read the subscription since it
        started, or cannot: nothing is posted for them. Unless
        ``post_before_subscription``."""
        if self.cfg.post_before_subscription:
            return
        for org, periods in plan.items():
            edges = self.edges.get(org)
            claim = claims.get(org)
            if edges is None or edges.started is None or claim is None or not claim.billed:
                continue
            after = edges.prior_end if edges.prior_end is not None else -math.inf
            kept = []
            for p in periods:
                # (the plan's periods are all unfinalized: "final" is one due to be now)
                if not after <= p.start.timestamp() < p.end.timestamp() <= edges.started:
                    kept.append(p)
                else:
                    conn.execute(q.FINALIZE_PERIOD, {"billed": None, "org": org, "start": p.start})
                    self.log(
                        "info",
                        "period_before_subscription",
                        org=org,
                        period=p.start,
                        end=p.end,
                        usage=p.usage,
                        subscription_start=edges.started,
                    )
            periods[:] = kept

    def _window(self, ledger: psycopg.Connection[Any], customer: str, edges: Edges, p: Any) -> Any:
        cancel = edges.cancel_at
        cut = cancel is not None and p.first_second < cancel <= p.last_second + 1
        cut = cut and p.now < int(cancel or 0)
        late = edges.since is not None and p.first_second < edges.since <= p.last_second
        if not cut and not late:
            return p
        lo = int(edges.since) if late and edges.since is not None else p.first_second
        hi = int(cancel) - 1 if cut and cancel is not None else p.last_second
        row = (
            ledger.cursor(row_factory=class_row(HeldPost))
            .execute(q.HELD_WITHIN, (customer, lo, hi))
            .fetchone()
        )
        value, status, held_ts = (row.value, row.status, row.timestamp) if row else (0, None, None)
        after = lo if held_ts is None else int(held_ts) + 1
        if cut:
            ts: int | None = max(after, p.now)
            due: int | None = ts
        else:
            nxt = (
                ledger.cursor(row_factory=class_row(NextTimestamp))
                .execute(q.NEXT_TIMESTAMP, (after - 1, p.first_second, p.last_second, p.now))
                .fetchone()
            )
            ts, due = (nxt.event_timestamp, nxt.due_second) if nxt else (None, None)
        return replace(p, held=int(value), held_status=status, next_ts=ts, due=due, last_second=hi)

    def _skip_before(
        self,
        ledger: psycopg.Connection[Any],
        org: int,
        subscriptions: list[Any],
        item_began: int | None = None,
    ) -> None:
        """Finalize, unposted (``billed_value`` NULL), the periods that ended at or before
        the live subscription's start (or its metered item's, when that was added later:
        ``item_began``) and after the end of any earlier subscription of the customer:
        usage no invoice bills (a stub period of activity before the customer subscribed).
        A period an earlier subscription billed keeps the usual rules."""
        began, after = unbilled_before([plain(s) for s in subscriptions], item_began)
        if began is None:
            return
        skipped = ledger.cursor(row_factory=class_row(Unbilled)).execute(
            q.SKIP_BEFORE_SUBSCRIPTION, (org, began, after)
        )
        for row in skipped:
            self.log(
                "info",
                "period_before_subscription",
                org=org,
                period=row.period_start,
                end=row.period_end,
                usage=row.usage,
                subscription_start=began,
            )

    def _trial_unbilled(
        self, ledger: psycopg.Connection[Any], org: int, subscriptions: list[Any], now: float
    ) -> None:
        """Once the live subscription's trial has ended: finalize, unbilled (``billed_value``
        NULL), the periods within ``[trial_start, trial_end)``. Stripe does not charge the
        usage accrued during a trial (a subscription in ``trialing`` is live: its periods
        are posted as any, and Stripe's meter shows them), and a new billing cycle begins
        at the trial's end: the periods after it are billed as usual."""
        subs = [plain(s) for s in subscriptions]
        live = next((s for s in subs if s.get("status") in LIVE), None)
        if live is None or live.get("trial_end") is None or int(live["trial_end"]) > now:
            return
        trial_start = live.get("trial_start") or live.get("start_date")
        if trial_start is None:
            return
        trial = (int(trial_start), int(live["trial_end"]))
        skipped = ledger.cursor(row_factory=class_row(Unbilled)).execute(
            q.SKIP_BEFORE_SUBSCRIPTION, (org, trial[1], trial[0])
        )
        for row in skipped:
            self.log(
                "info", "trial_period_unbilled", org=org, period=row.period_start,
                end=row.period_end, usage=row.usage, trial_end=trial[1],
            )  # fmt: skip

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


def unbilled_before(
    subs: list[dict[str, Any]], item_began: int | None
) -> tuple[int | None, int | None]:
    """(began, after): the live subscription's start (or its metered item's, when that was
    added later: ``item_began``), and the end of the newest earlier subscription of the
    customer that ended by then (None: none). The periods that ended at or before ``began``
    and began at or after ``after`` are billed by no invoice. (None, None): no subscription
    is live."""
    live = next((s for s in subs if s.get("status") in LIVE), None)
    if live is None or live.get("start_date") is None:
        return None, None
    began = max(int(live["start_date"]), item_began or 0)
    earlier = [
        int(s["ended_at"]) for s in subs if s.get("ended_at") is not None
        and int(s["ended_at"]) <= began
    ]  # fmt: skip
    return began, max(earlier) if earlier else None


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
