"""Relaying one organization at a time: :class:`Relay` claims it and posts what is due.

How one organization is relayed (a *claim*), all in one transaction on the claim
connection, which holds the organization's ``_relay_state`` row lock (``FOR UPDATE SKIP
LOCKED``) until it commits or the worker dies, so at most one Stripe call per customer is
in flight across all workers:

1. read the billing account and the newest outbox id (``_relay_claim``);
2. align the billing period with the Stripe subscription (when the known one ended);
3. resend any ``pending`` ledger row exactly as it was (same identifier, value,
   timestamp and idempotency key): the outcome of that call is unknown (a worker was
   killed, or Stripe kept failing);
4. close every ended period: its final value is posted (at the last second inside the
   period) unless the ledger shows Stripe holds it, then ``_period.closed_at`` is set.
   While a period is within its grace, the next period is not posted (its events would
   have later timestamps, and a late change to the ended period could then no longer be
   posted without sending an older timestamp after a newer one);
5. post the current period's fresh ``period_usage`` unless Stripe holds it, at
   ``timestamp = now`` (whole seconds, strictly after the customer's last event: at most
   one post per customer per second; coalescing takes care of bursts); the last second of
   a period is kept for its closing post;
6. delete the outbox rows up to the id read in 1 and commit.

Every post is written ``pending`` on a second, autocommit connection and committed
before the call, then marked ``sent`` (a duplicate identifier counts as sent) or
``failed`` (a permanent refusal, which parks the organization).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
import stripe

from active_series.install import check_version
from active_series.ratelimit import backoff
from active_series.relay import queries as q
from active_series.relay.config import MAX_EVENT_AGE, SUBSCRIPTION_RECHECK, RelayConfig
from active_series.relay.observe import Log, Metrics
from active_series.relay.prices import PriceKeeper
from active_series.relay.stripe_api import Outcome, StripeMeter, classify, current_period

Conn = psycopg.Connection[Any]


class ClaimOutcome(StrEnum):
    """What one claim of one organization came to."""

    LOCKED = "locked"  # another worker holds it
    UNBILLED = "unbilled"
    CLOSED = "closed"  # close-only pass done
    IN_SYNC = "in_sync"
    POSTED = "posted"
    DEFERRED = "deferred"  # nothing may be posted yet: a grace, the period's last second
    PARKED = "parked"
    RATE_LIMITED = "rate_limited"
    PAUSED = "paused"  # Stripe refused our credentials
    RETRY = "retry"


class Stopping(Exception):
    """Raised inside a drain once a stop was requested."""


@dataclass(frozen=True)
class Claim:
    """One billed organization as its claim read it."""

    org: int
    customer: str
    max_outbox: int | None  # the newest outbox row this claim accounts for
    oldest_change: float | None  # when the oldest of those was written (Unix seconds)


class Relay:
    """Relays organizations; owns the claim and ledger connections and the Stripe client."""

    def __init__(
        self,
        cfg: RelayConfig,
        log: Log,
        metrics: Metrics,
        stop: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.stripe = StripeMeter(cfg)
        self.claim_conn: Conn | None = None
        self.ledger_conn: Conn | None = None
        self.pause_until = 0.0
        self.rate_backoff = 0
        self.subscription_until: dict[int, float] = {}
        self.prices = PriceKeeper(
            self.stripe.client, cfg.meter_event_name, self.stripe.bucket.acquire, self.log
        )
        self.wake_reason = "start"

    # ------------------------------------------------------------------ connections
    def connect(self) -> None:
        self.close()
        self.ledger_conn = psycopg.connect(
            self.cfg.dsn,
            autocommit=True,
            connect_timeout=10,
            application_name="active-series-worker-ledger",
        )
        check_version(self.ledger_conn)
        self.claim_conn = psycopg.connect(
            self.cfg.dsn,
            autocommit=False,
            connect_timeout=10,
            application_name="active-series-worker-claim",
        )

    def close(self) -> None:
        for conn in (self.claim_conn, self.ledger_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self.claim_conn = self.ledger_conn = None

    @property
    def ledger(self) -> Conn:
        assert self.ledger_conn is not None, "not connected"
        return self.ledger_conn

    @property
    def claim(self) -> Conn:
        assert self.claim_conn is not None, "not connected"
        return self.claim_conn

    # ------------------------------------------------------------------ drains
    def drain(self, *, only_close: bool = False, organization: int | None = None) -> int:
        """Relay every organization with work due until none is left; returns how many
        claims were made. Organizations another worker holds are left to it. Raises
        SchemaVersionError once the schema is no longer this program's (upgraded under a
        running worker): a worker never relays with another version's rules."""
        check_version(self.ledger)
        leave: set[int] = set()
        rounds: dict[int, int] = {}
        handled = 0
        while not self.stop.is_set():
            orgs = [r[0] for r in self.ledger.execute(q.WORK, (self.cfg.grace,)).fetchall()]
            if organization is not None:
                orgs = [o for o in orgs if o == organization]
            todo = [o for o in orgs if o not in leave]
            if not todo:
                break
            for org in todo:
                if self.stop.is_set():
                    break
                self._wait_pause()
                try:
                    outcome = self.process(org, only_close=only_close)
                except (psycopg.Error, Stopping):
                    raise
                except Exception as exc:  # a bug must not stop the other organizations
                    self.log("error", "relay_error", org=org, error=repr(exc)[:300])
                    outcome = ClaimOutcome.LOCKED
                handled += outcome != ClaimOutcome.LOCKED
                rounds[org] = rounds.get(org, 0) + 1
                # locked: another worker has it; close-only leaves the outbox alone; a
                # stream of changes must not starve the other organizations
                if outcome == ClaimOutcome.LOCKED or only_close or rounds[org] >= 20:
                    leave.add(org)
        self.update_gauges()
        return handled

    def _wait_pause(self) -> None:
        while not self.stop.is_set():
            wait = self.pause_until - time.time()
            if wait <= 0:
                return
            self.stop.wait(min(wait, 1.0))
        raise Stopping

    def update_gauges(self) -> None:
        row = self.ledger.execute(q.GAUGES).fetchone()
        if row:
            self.metrics.outbox_depth.set(row[0])
            self.metrics.oldest_change_age.set(row[1] or 0.0)
            self.metrics.parked.set(row[2])

    def next_wakeup(self) -> float | None:
        row = self.ledger.execute(q.NEXT_WAKEUP, (self.cfg.grace,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # ------------------------------------------------------------------ one organization
    def process(self, org: int, *, only_close: bool = False) -> ClaimOutcome:
        """One claim of one organization; returns what happened."""
        conn = self.claim
        with conn.transaction():
            row = conn.execute(q.CLAIM, (org,)).fetchone()
            if row is None:
                return ClaimOutcome.LOCKED
            customer, billed, max_outbox, oldest_change = row
            # posts whose outcome is unknown (a worker was killed, or Stripe kept failing):
            # resend them exactly, whatever the organization's plan is now
            for _id, cus, _start, value, ts, ident in conn.execute(
                q.PENDING_POSTS, (org,)
            ).fetchall():
                outcome, reason = self._call(org, cus, value, ts, ident, resend=True)
                if not outcome.accepted:
                    return self._failed(conn, org, outcome, reason)
                self.log("info", "resent", org=org, customer=cus, value=value, timestamp=ts)
            if not billed:
                if max_outbox is not None and not only_close:
                    conn.execute(q.DELETE_OUTBOX, (org, max_outbox))
                conn.execute(q.CLOSE_ENDED_PERIODS, (org, self.cfg.grace))
                conn.execute(q.STATE_DONE, (None, org))
                return ClaimOutcome.UNBILLED
            claim = Claim(org, customer, max_outbox, oldest_change)
            if self.cfg.sync_subscriptions:
                self._sync_subscription(org, customer)
            closing = self._close_ended_periods(conn, claim)
            if closing is not None:
                return closing
            if only_close:
                conn.execute(q.STATE_DONE, (None, org))
                return ClaimOutcome.CLOSED
            return self._post_current(conn, claim)

    def _close_ended_periods(self, conn: Conn, claim: Claim) -> ClaimOutcome | None:
        """Step 4: post the final value of every ended period and close it; an outcome when
        the claim must stop here, None when every ended period is closed."""
        org, customer = claim.org, claim.customer
        now = self._now(conn)
        for start, end, end_s, first_s, last_s in conn.execute(q.ENDED_PERIODS, (org,)).fetchall():
            if end_s + self.cfg.grace > now:
                # within grace: no post for the next period before this one is final
                conn.execute(q.STATE_DEFER, (end_s + self.cfg.grace, None, org))
                return ClaimOutcome.DEFERRED
            usage = self._usage(conn, org, start)
            if self._held(conn, customer, start, end) != usage:
                last = self._last_timestamp(conn, customer)
                ts = last_s
                if ts <= last or ts < first_s or ts < now - MAX_EVENT_AGE:
                    reason = (
                        "cannot post the final value of a period: no timestamp inside it is "
                        f"after the last event ({last}) and within Stripe's 35 days"
                    )
                    ident = self._identifier(customer, ts, usage)
                    self.ledger.execute(
                        q.LEDGER_FAILED_NEW, (org, customer, start, end, usage, ts, ident, reason)
                    )
                    self.log("error", "final_unpostable", org=org, period=start, value=usage)
                else:
                    outcome, reason = self._post(claim, start, end, usage, ts)
                    if not outcome.accepted:
                        return self._failed(conn, org, outcome, reason)
                    self.log(
                        "info",
                        "posted_final",
                        org=org,
                        customer=customer,
                        period=start,
                        value=usage,
                        timestamp=ts,
                    )
            conn.execute(q.CLOSE_PERIOD, (org, start))
            self.metrics.periods_closed.inc()
            self.log("info", "period_closed", org=org, period=start, value=usage)
        return None

    def _post_current(self, conn: Conn, claim: Claim) -> ClaimOutcome:
        """Step 5 and 6: post the current period's count unless Stripe holds it."""
        org, customer = claim.org, claim.customer
        current = conn.execute(q.CURRENT_PERIOD, (org,)).fetchone()
        assert current is not None, "_period_at returns one row"
        start, end, first_s, last_s = current
        usage = self._usage(conn, org, start)
        if self._held(conn, customer, start, end) == usage:
            if claim.max_outbox is not None:
                conn.execute(q.DELETE_OUTBOX, (org, claim.max_outbox))
            conn.execute(q.STATE_DONE, (None, org))
            return ClaimOutcome.IN_SYNC
        ts = math.floor(self._now(conn))
        if ts >= last_s:
            # the period's last second is kept for its closing post
            conn.execute(q.STATE_DEFER, (last_s + 1 + self.cfg.grace, None, org))
            return ClaimOutcome.DEFERRED
        last = self._last_timestamp(conn, customer)
        if ts <= last:
            conn.execute(q.STATE_DEFER, (last + 1, None, org))
            return ClaimOutcome.DEFERRED
        outcome, reason = self._post(claim, start, end, usage, ts)
        if not outcome.accepted:
            return self._failed(conn, org, outcome, reason)
        if claim.max_outbox is not None:
            conn.execute(q.DELETE_OUTBOX, (org, claim.max_outbox))
        conn.execute(q.STATE_DONE, (ts, org))
        self.log(
            "info",
            "posted",
            org=org,
            customer=customer,
            period=start,
            value=usage,
            timestamp=ts,
            wake=self.wake_reason,
        )
        return ClaimOutcome.POSTED

    def _failed(self, conn: Conn, org: int, outcome: Outcome, reason: str) -> ClaimOutcome:
        """Record a failed call on the organization's state (in the claim transaction)."""
        now = time.time()
        if outcome == Outcome.PERMANENT:
            conn.execute(q.STATE_PARK, (reason, org))
            self.metrics.posts.labels("parked").inc()
            self.log("error", "parked", org=org, reason=reason)
            return ClaimOutcome.PARKED
        if outcome == Outcome.RATE_LIMITED:
            self.rate_backoff = min(self.rate_backoff + 1, 6)
            self.pause_until = now + backoff(self.rate_backoff, 0.5, 30.0)
            conn.execute(q.STATE_DEFER, (self.pause_until, None, org))
            self.metrics.posts.labels("rate_limited").inc()
            self.log("warning", "rate_limited", org=org, pause=self.pause_until - now)
            return ClaimOutcome.RATE_LIMITED
        if outcome == Outcome.GLOBAL:
            self.pause_until = now + 30.0
            conn.execute(q.STATE_DEFER, (self.pause_until, None, org))
            self.log("error", "stripe_refused_credentials", reason=reason)
            return ClaimOutcome.PAUSED
        row = conn.execute(q.STATE_COUNT_ATTEMPT, (org,)).fetchone()
        attempts = row[0] if row else 1
        retry_at = now + backoff(attempts - 1, self.cfg.retry_min, self.cfg.retry_max)
        conn.execute(q.STATE_DEFER, (retry_at, None, org))
        self.metrics.posts.labels("retried").inc()
        self.log(
            "warning",
            "retry_later",
            org=org,
            attempts=attempts,
            reason=reason,
            retry_in=retry_at - now,
        )
        return ClaimOutcome.RETRY

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _now(conn: Conn) -> float:
        return float(conn.execute(q.NOW).fetchone()[0])  # type: ignore[index]

    @staticmethod
    def _usage(conn: Conn, org: int, start: datetime) -> int:
        return int(conn.execute(q.USAGE, (org, start)).fetchone()[0])  # type: ignore[index]

    @staticmethod
    def _held(conn: Conn, customer: str, start: datetime, end: datetime) -> int:
        row = conn.execute(q.HELD, (customer, start, end)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _last_timestamp(conn: Conn, customer: str) -> int:
        row = conn.execute(q.LAST_TIMESTAMP, (customer,)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _identifier(self, customer: str, ts: int, value: int) -> str:
        """The post's identifier, as the schema defines it (``_relay_identifier``)."""
        row = self.ledger.execute(q.IDENTIFIER, (customer, ts, value)).fetchone()
        assert row is not None, "_relay_identifier returns one row"
        return str(row[0])

    # ------------------------------------------------------------------ Stripe
    def _post(
        self, claim: Claim, start: datetime, end: datetime, value: int, ts: int
    ) -> tuple[Outcome, str]:
        customer = claim.customer
        ident = self._identifier(customer, ts, value)
        # committed before the call: a worker killed during it resends exactly this
        self.ledger.execute(q.LEDGER_PENDING, (claim.org, customer, start, end, value, ts, ident))
        outcome, reason = self._call(claim.org, customer, value, ts, ident, resend=False)
        if outcome.accepted and claim.oldest_change is not None:
            self.metrics.lag.set(max(0.0, time.time() - claim.oldest_change))
        return outcome, reason

    def _call(
        self, org: int, customer: str, value: int, ts: int, ident: str, *, resend: bool
    ) -> tuple[Outcome, str]:
        outcome, reason = self.stripe.post(customer, value, ts, ident)
        if outcome.accepted:
            self.ledger.execute(q.LEDGER_SENT, (reason or None, ident))
            self.metrics.posts.labels(str(outcome)).inc()
            self.rate_backoff = 0
        elif outcome == Outcome.PERMANENT:
            self.ledger.execute(q.LEDGER_REFUSED, (reason, ident))
        else:
            self.ledger.execute(q.LEDGER_ATTEMPT_FAILED, (reason, ident))
        if not outcome.accepted:
            self.log(
                "warning",
                "post_failed",
                org=org,
                customer=customer,
                value=value,
                timestamp=ts,
                kind=outcome,
                reason=reason,
                resend=resend,
            )
        return outcome, reason

    def _sync_subscription(self, org: int, customer: str) -> None:
        """Align the organization's billing period with its Stripe subscription's current
        period, read again once the known one has ended, and keep its metered price
        (prices.py). No subscription: the database's periods stay (calendar months unless an
        admin set them)."""
        now = time.time()
        if now < self.subscription_until.get(org, 0.0):
            return
        try:
            subscriptions = self.stripe.subscriptions(customer)
        except stripe.StripeError as exc:
            outcome, reason = classify(exc)
            if outcome == Outcome.RATE_LIMITED:
                self.pause_until = now + backoff(1, 0.5, 30.0)
            self.subscription_until[org] = now + min(60.0, self.cfg.poll_interval)
            self.log("warning", "subscription_unreadable", org=org, reason=reason)
            return
        self.prices.keep(self.ledger, org, subscriptions)
        bounds = current_period(subscriptions)
        if bounds is None:
            self.subscription_until[org] = now + SUBSCRIPTION_RECHECK
            return
        start, end = bounds
        row = self.ledger.execute(q.CURRENT_BOUNDS, (org,)).fetchone()
        differs = row is None or (int(row[0]), int(row[1])) != (start, end)
        if differs and start <= now < end:
            self.ledger.execute(q.SET_BILLING_PERIOD, (org, start, end))
            self.log("info", "billing_period_set", org=org, start=start, end=end)
        self.subscription_until[org] = float(end)
