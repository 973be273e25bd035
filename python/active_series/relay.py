"""The Stripe relay: ``active-series worker``.

Relays each billed organization's exact period-to-date active-series count to a Stripe
billing meter with ``last`` aggregation, so that for every (customer, period) Stripe ends
up holding ``active_series.period_usage``.

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
import json
import math
import os
import random
import select
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import psycopg
import stripe
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from active_series import prices
from active_series import queries as q
from active_series.install import SchemaVersionError, check_version

DEFAULT_API_BASE = "https://api.stripe.com"
CHANNEL = "active_series"
# Stripe accepts timestamps within the past 35 days; keep an hour of margin.
MAX_EVENT_AGE = 35 * 86400 - 3600
# How often to re-read a customer's subscription when it has none (or reading failed).
SUBSCRIPTION_RECHECK = 3600.0


@dataclass
class RelayConfig:
    dsn: str
    api_key: str
    api_base: str = DEFAULT_API_BASE
    meter_event_name: str = "active_series"
    poll_interval: float = 5.0
    debounce: float = 0.05
    rate_limit: float = 25.0
    grace: float = 300.0
    metrics_port: int = 0
    max_network_retries: int = 2
    stripe_timeout: float = 30.0
    retry_min: float = 1.0
    retry_max: float = 300.0
    reconnect_delay: float = 1.0
    shutdown_timeout: float = 30.0
    sync_subscriptions: bool = True
    once: bool = False


class Log:
    """Structured ``key=value`` log lines on stderr; the API key is never written."""

    def __init__(self, secret: str | None = None, stream: TextIO | None = None) -> None:
        self.secret = secret
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    @staticmethod
    def _value(value: Any) -> str:
        if isinstance(value, float):
            value = round(value, 3)
        text = str(value)
        if text == "" or any(c in text for c in ' "=\n\t'):
            return json.dumps(text)
        return text

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        parts = [f"ts={stamp}", f"level={level}", f"event={event}"]
        parts += [f"{k}={self._value(v)}" for k, v in fields.items() if v is not None]
        line = " ".join(parts)
        if self.secret:
            line = line.replace(self.secret, "***")
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class Metrics:
    """Prometheus metrics of one worker (own registry, served by ``--metrics-port``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.posts = Counter(
            "active_series_relay_posts",
            "Meter event posts by outcome: ok, duplicate (already recorded), retried "
            "(failed after the SDK's retries, will be retried), rate_limited, parked.",
            ["result"],
            registry=r,
        )
        self.wakeups = Counter(
            "active_series_relay_wakeups",
            "Drains started, by what woke the worker: start, notify, poll, scheduled, reconnect.",
            ["reason"],
            registry=r,
        )
        self.periods_closed = Counter(
            "active_series_relay_periods_closed", "Billing periods closed.", registry=r
        )
        self.outbox_depth = Gauge(
            "active_series_relay_outbox_depth", "Outbox rows not yet handled.", registry=r
        )
        self.oldest_change_age = Gauge(
            "active_series_relay_oldest_unposted_change_age_seconds",
            "Age of the oldest outbox row (a change not yet relayed).",
            registry=r,
        )
        self.lag = Gauge(
            "active_series_relay_lag_seconds",
            "Seconds from the oldest change a post accounted for to Stripe accepting it "
            "(last post).",
            registry=r,
        )
        self.parked = Gauge(
            "active_series_relay_parked_organizations", "Organizations parked.", registry=r
        )


class TokenBucket:
    """Client-side rate limit shared by every Stripe call of this worker."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                wait = (1.0 - self.tokens) / self.rate
            time.sleep(wait)


# outcome kinds of a Stripe call
OK = "ok"
DUPLICATE = "duplicate"
TRANSIENT = "transient"
RATE_LIMITED = "rate_limited"
PERMANENT = "permanent"
GLOBAL = "global"  # bad API key or permissions: nothing an organization did


def classify(exc: stripe.StripeError) -> tuple[str, str]:
    """What a failed Stripe call means for the relay: (kind, one-line reason)."""
    status = exc.http_status
    code = exc.code or ""
    message = str(exc.user_message or exc).strip().splitlines()[0] if str(exc) else ""
    reason = f"{status or '-'} {code or type(exc).__name__}: {message}"[:500]
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return RATE_LIMITED, reason
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return GLOBAL, reason
    if isinstance(exc, stripe.IdempotencyError):
        return TRANSIENT, reason
    if isinstance(exc, stripe.InvalidRequestError) or status in (400, 404):
        if "already exists with identifier" in message:
            return DUPLICATE, reason
        return PERMANENT, reason
    return TRANSIENT, reason


def backoff(attempts: int, low: float, high: float) -> float:
    """Exponential backoff with jitter: between half and all of low * 2^attempts."""
    base = min(high, low * 2 ** min(attempts, 30))
    return base * random.uniform(0.5, 1.0)


class Stopping(Exception):
    """Raised inside a drain once a stop was requested."""


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
        self.client = stripe.StripeClient(
            cfg.api_key,
            base_addresses={"api": cfg.api_base},
            max_network_retries=cfg.max_network_retries,
            http_client=stripe.RequestsClient(timeout=cfg.stripe_timeout),
        )
        self.bucket = TokenBucket(cfg.rate_limit)
        self.claim_conn: psycopg.Connection[Any] | None = None
        self.ledger_conn: psycopg.Connection[Any] | None = None
        self.pause_until = 0.0
        self.rate_backoff = 0
        self.subscription_until: dict[int, float] = {}
        self.prices = prices.PriceKeeper(
            self.client, cfg.meter_event_name, self.bucket.acquire, self.log
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
    def ledger(self) -> psycopg.Connection[Any]:
        assert self.ledger_conn is not None, "not connected"
        return self.ledger_conn

    @property
    def claim(self) -> psycopg.Connection[Any]:
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
                    outcome = "locked"
                handled += outcome != "locked"
                rounds[org] = rounds.get(org, 0) + 1
                # locked: another worker has it; close-only leaves the outbox alone; a
                # stream of changes must not starve the other organizations
                if outcome == "locked" or only_close or rounds[org] >= 20:
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
    def process(self, org: int, *, only_close: bool = False) -> str:
        """One claim of one organization; returns what happened."""
        conn = self.claim
        with conn.transaction():
            row = conn.execute(q.CLAIM, (org,)).fetchone()
            if row is None:
                return "locked"
            customer, billed, max_outbox, oldest_change = row
            # posts whose outcome is unknown (a worker was killed, or Stripe kept failing):
            # resend them exactly, whatever the organization's plan is now
            for _id, cus, _start, value, ts, ident in conn.execute(
                q.PENDING_POSTS, (org,)
            ).fetchall():
                kind, reason = self._call(org, cus, value, ts, ident, resend=True)
                if kind not in (OK, DUPLICATE):
                    return self._failed(conn, org, kind, reason)
                self.log("info", "resent", org=org, customer=cus, value=value, timestamp=ts)
            if not billed:
                if max_outbox is not None and not only_close:
                    conn.execute(q.DELETE_OUTBOX, (org, max_outbox))
                conn.execute(q.CLOSE_ENDED_PERIODS, (org, self.cfg.grace))
                conn.execute(q.STATE_DONE, (None, org))
                return "unbilled"
            return self._relay(conn, org, customer, max_outbox, oldest_change, only_close)

    def _relay(
        self,
        conn: psycopg.Connection[Any],
        org: int,
        customer: str,
        max_outbox: int | None,
        oldest_change: float | None,
        only_close: bool,
    ) -> str:
        if self.cfg.sync_subscriptions:
            self._sync_subscription(org, customer)

        # 4. close the periods that have ended
        now = self._now(conn)
        for start, end, end_s, first_s, last_s in conn.execute(q.ENDED_PERIODS, (org,)).fetchall():
            if end_s + self.cfg.grace > now:
                # within grace: no post for the next period before this one is final
                conn.execute(q.STATE_DEFER, (end_s + self.cfg.grace, None, org))
                return "deferred"
            usage = self._usage(conn, org, start)
            held = self._held(conn, customer, start, end)
            if held != usage:
                last = self._last_timestamp(conn, customer)
                ts = last_s
                if ts <= last or ts < first_s or ts < now - MAX_EVENT_AGE:
                    reason = (
                        "cannot post the final value of a period: no timestamp inside it is "
                        f"after the last event ({last}) and within Stripe's 35 days"
                    )
                    self.ledger.execute(
                        q.LEDGER_FAILED_NEW,
                        (
                            org,
                            customer,
                            start,
                            end,
                            usage,
                            ts,
                            _identifier(customer, ts, usage),
                            reason,
                        ),
                    )
                    self.log("error", "final_unpostable", org=org, period=start, value=usage)
                else:
                    kind, reason = self._post(org, customer, start, end, usage, ts, oldest_change)
                    if kind not in (OK, DUPLICATE):
                        return self._failed(conn, org, kind, reason)
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

        if only_close:
            conn.execute(q.STATE_DONE, (None, org))
            return "closed"

        # 5. the current period
        current = conn.execute(q.CURRENT_PERIOD, (org,)).fetchone()
        assert current is not None, "_period_at returns one row"
        start, end, first_s, last_s = current
        usage = self._usage(conn, org, start)
        if self._held(conn, customer, start, end) == usage:
            if max_outbox is not None:
                conn.execute(q.DELETE_OUTBOX, (org, max_outbox))
            conn.execute(q.STATE_DONE, (None, org))
            return "in_sync"
        now = self._now(conn)
        ts = math.floor(now)
        if ts >= last_s:
            # the period's last second is kept for its closing post
            conn.execute(q.STATE_DEFER, (last_s + 1 + self.cfg.grace, None, org))
            return "deferred"
        last = self._last_timestamp(conn, customer)
        if ts <= last:
            conn.execute(q.STATE_DEFER, (last + 1, None, org))
            return "deferred"
        kind, reason = self._post(org, customer, start, end, usage, ts, oldest_change)
        if kind not in (OK, DUPLICATE):
            return self._failed(conn, org, kind, reason)
        if max_outbox is not None:
            conn.execute(q.DELETE_OUTBOX, (org, max_outbox))
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
        return "posted"

    def _failed(self, conn: psycopg.Connection[Any], org: int, kind: str, reason: str) -> str:
        """Record a failed call on the organization's state (in the claim transaction)."""
        now = time.time()
        if kind == PERMANENT:
            conn.execute(q.STATE_PARK, (reason, org))
            self.metrics.posts.labels("parked").inc()
            self.log("error", "parked", org=org, reason=reason)
            return "parked"
        if kind == RATE_LIMITED:
            self.rate_backoff = min(self.rate_backoff + 1, 6)
            self.pause_until = now + backoff(self.rate_backoff, 0.5, 30.0)
            conn.execute(q.STATE_DEFER, (self.pause_until, None, org))
            self.metrics.posts.labels("rate_limited").inc()
            self.log("warning", "rate_limited", org=org, pause=self.pause_until - now)
            return "rate_limited"
        if kind == GLOBAL:
            self.pause_until = now + 30.0
            conn.execute(q.STATE_DEFER, (self.pause_until, None, org))
            self.log("error", "stripe_refused_credentials", reason=reason)
            return "paused"
        row = conn.execute(q.STATE_ATTEMPTS, (org,)).fetchone()
        attempts = row[0] if row else 0
        retry_at = now + backoff(attempts, self.cfg.retry_min, self.cfg.retry_max)
        conn.execute(q.STATE_RETRY, (retry_at, org))
        self.metrics.posts.labels("retried").inc()
        self.log(
            "warning",
            "retry_later",
            org=org,
            attempts=attempts + 1,
            reason=reason,
            retry_in=retry_at - now,
        )
        return "retry"

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _now(conn: psycopg.Connection[Any]) -> float:
        return float(conn.execute(q.NOW).fetchone()[0])  # type: ignore[index]

    @staticmethod
    def _usage(conn: psycopg.Connection[Any], org: int, start: datetime) -> int:
        return int(conn.execute(q.USAGE, (org, start)).fetchone()[0])  # type: ignore[index]

    @staticmethod
    def _held(conn: psycopg.Connection[Any], customer: str, start: datetime, end: datetime) -> int:
        row = conn.execute(q.HELD, (customer, start, end)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _last_timestamp(conn: psycopg.Connection[Any], customer: str) -> int:
        row = conn.execute(q.LAST_TIMESTAMP, (customer,)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    # ------------------------------------------------------------------ Stripe
    def _post(
        self,
        org: int,
        customer: str,
        start: datetime,
        end: datetime,
        value: int,
        ts: int,
        oldest_change: float | None,
    ) -> tuple[str, str]:
        ident = _identifier(customer, ts, value)
        # committed before the call: a worker killed during it resends exactly this
        self.ledger.execute(q.LEDGER_PENDING, (org, customer, start, end, value, ts, ident))
        kind, reason = self._call(org, customer, value, ts, ident, resend=False)
        if kind in (OK, DUPLICATE) and oldest_change is not None:
            self.metrics.lag.set(max(0.0, time.time() - oldest_change))
        return kind, reason

    def _call(
        self, org: int, customer: str, value: int, ts: int, ident: str, *, resend: bool
    ) -> tuple[str, str]:
        self.bucket.acquire()
        try:
            self.client.v1.billing.meter_events.create(
                params={
                    "event_name": self.cfg.meter_event_name,
                    "payload": {"stripe_customer_id": customer, "value": str(value)},
                    "identifier": ident,
                    "timestamp": ts,
                },
                options={"idempotency_key": ident},
            )
        except stripe.StripeError as exc:
            kind, reason = classify(exc)
        else:
            kind, reason = OK, ""
        if kind in (OK, DUPLICATE):
            self.ledger.execute(q.LEDGER_SENT, (reason or None, ident))
            self.metrics.posts.labels("ok" if kind == OK else "duplicate").inc()
            self.rate_backoff = 0
        elif kind == PERMANENT:
            self.ledger.execute(q.LEDGER_REFUSED, (reason, ident))
        else:
            self.ledger.execute(q.LEDGER_ATTEMPT_FAILED, (reason, ident))
        if kind not in (OK, DUPLICATE):
            self.log(
                "warning",
                "post_failed",
                org=org,
                customer=customer,
                value=value,
                timestamp=ts,
                kind=kind,
                reason=reason,
                resend=resend,
            )
        return kind, reason

    def _sync_subscription(self, org: int, customer: str) -> None:
        """Align the organization's billing period with its Stripe subscription's current
        period, read again once the known one has ended. No subscription: the database's
        periods stay (calendar months unless an admin set them)."""
        now = time.time()
        if now < self.subscription_until.get(org, 0.0):
            return
        self.bucket.acquire()
        try:
            subs = self.client.v1.subscriptions.list(
                params={"customer": customer, "limit": 10, "expand": prices.SUBSCRIPTION_EXPAND}
            )
        except stripe.StripeError as exc:
            kind, reason = classify(exc)
            if kind == RATE_LIMITED:
                self.pause_until = now + backoff(1, 0.5, 30.0)
            self.subscription_until[org] = now + min(60.0, self.cfg.poll_interval)
            self.log("warning", "subscription_unreadable", org=org, reason=reason)
            return
        self.prices.keep(self.ledger, org, subs.data)
        bounds = _subscription_period(subs.data)
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


def _identifier(customer: str, ts: int, value: int) -> str:
    """Deterministic: one customer never gets two events with one timestamp, so
    (customer, timestamp, value) names a post, also across ledger rebuilds."""
    return f"as-{customer}-{ts}-{value}"


def _subscription_period(subscriptions: Iterable[Any]) -> tuple[int, int] | None:
    """Current period of the first live subscription: on its first item (recent API
    versions), else on the subscription (older ones)."""
    for obj in subscriptions:
        sub = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        if sub.get("status") not in ("active", "trialing", "past_due"):
            continue
        start = end = None
        items = sub.get("items")
        data = items.get("data") if items is not None else None
        if data:
            start = data[0].get("current_period_start")
            end = data[0].get("current_period_end")
        if start is None or end is None:
            start = sub.get("current_period_start")
            end = sub.get("current_period_end")
        if start is not None and end is not None:
            return int(start), int(end)
    return None


class Worker:
    """The daemon loop: wait for a notification, the poll interval, scheduled work or a
    stop signal; then drain. Reconnects with backoff and jitter; catches up after."""

    def __init__(self, cfg: RelayConfig, log: Log | None = None) -> None:
        self.cfg = cfg
        self.log = log or Log(cfg.api_key)
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.relay = Relay(cfg, self.log, self.metrics, self.stop)
        self.listen_conn: psycopg.Connection[Any] | None = None
        self.listen_attempts = 0
        self.listen_retry_at = 0.0
        self.signals = 0
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_w, False)

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if self.signals > 1:
            os.write(2, b"event=exit reason=second_signal\n")
            os._exit(130)
        self.stop.set()
        with contextlib.suppress(OSError):
            os.write(self._pipe_w, b"x")
        timer = threading.Timer(self.cfg.shutdown_timeout, self._shutdown_timeout)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _shutdown_timeout() -> None:
        os.write(2, b"event=exit reason=shutdown_timeout\n")
        os._exit(1)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if self.cfg.metrics_port:
            start_http_server(self.cfg.metrics_port, registry=self.metrics.registry)
        self.log(
            "info",
            "start",
            pid=os.getpid(),
            api_base=self.cfg.api_base,
            meter_event_name=self.cfg.meter_event_name,
            poll_interval=self.cfg.poll_interval,
            grace=self.cfg.grace,
            metrics_port=self.cfg.metrics_port or None,
        )
        try:
            return self._run()
        except SchemaVersionError as exc:
            # at the start or at any wake-up (an upgrade under a running worker): exit 4
            self.log("error", "schema_mismatch", error=str(exc))
            raise
        finally:
            self.relay.close()
            if self.listen_conn is not None:
                with contextlib.suppress(Exception):
                    self.listen_conn.close()
            self.log("info", "stop")

    def _run(self) -> int:
        attempts = 0
        while True:  # the database may be restarting
            try:
                self.relay.connect()
                break
            except psycopg.OperationalError as exc:
                delay = backoff(attempts, self.cfg.reconnect_delay, 30.0)
                attempts += 1
                self.log("warning", "database_unavailable", error=_first_line(exc), retry_in=delay)
                if self.stop.wait(delay):
                    return 0
        self._listen()
        reason = "start"
        db_attempts = 0
        while not self.stop.is_set():
            try:
                if self.relay.claim_conn is None:
                    self.relay.connect()
                    self.log("info", "reconnected", what="database")
                    reason = "reconnect"
                db_attempts = 0
                self.relay.wake_reason = reason
                self.metrics.wakeups.labels(reason).inc()
                handled = self.relay.drain()
                self.log("debug", "drained", wake=reason, claims=handled)
                if self.cfg.once:
                    break
                reason = self._wait()
            except Stopping:
                break
            except psycopg.Error as exc:
                self.relay.close()
                delay = backoff(db_attempts, self.cfg.reconnect_delay, 30.0)
                db_attempts += 1
                self.log("warning", "database_unavailable", error=_first_line(exc), retry_in=delay)
                self.stop.wait(delay)
                reason = "reconnect"
        return 0

    def _listen(self) -> bool:
        try:
            conn = psycopg.connect(
                self.cfg.dsn,
                autocommit=True,
                connect_timeout=10,
                application_name="active-series-worker-listen",
            )
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            delay = backoff(self.listen_attempts, self.cfg.reconnect_delay, 30.0)
            self.listen_attempts += 1
            self.listen_retry_at = time.time() + delay
            self.log("warning", "listen_failed", error=_first_line(exc), retry_in=delay)
            return False
        self.listen_conn = conn
        self.listen_attempts = 0
        self.log("info", "listening", channel=CHANNEL, backend_pid=conn.info.backend_pid)
        return True

    def _lost_listen(self, exc: BaseException) -> None:
        if self.listen_conn is not None:
            with contextlib.suppress(Exception):
                self.listen_conn.close()
        self.listen_conn = None
        delay = backoff(self.listen_attempts, self.cfg.reconnect_delay, 30.0)
        self.listen_attempts += 1
        self.listen_retry_at = time.time() + delay
        self.log("warning", "listen_lost", error=_first_line(exc), retry_in=delay)

    def _wait(self) -> str:
        """Block until the next reason to drain; returns it."""
        now = time.time()
        deadline, reason = now + self.cfg.poll_interval, "poll"
        scheduled = self.relay.next_wakeup()
        if scheduled is not None and scheduled < deadline:
            deadline, reason = max(scheduled, now + 0.05), "scheduled"
        while not self.stop.is_set():
            due = self.listen_conn is None and time.time() >= self.listen_retry_at
            if due and self._listen():
                return "reconnect"  # notifications may have been missed: catch up
            wake_at, wake_reason = deadline, reason
            if self.listen_conn is None and self.listen_retry_at < wake_at:
                wake_at, wake_reason = self.listen_retry_at, "listen_retry"
            timeout = wake_at - time.time()
            if timeout <= 0:
                if wake_reason == "listen_retry":
                    continue
                return reason
            fds = [self._pipe_r]
            if self.listen_conn is not None:
                fds.append(self.listen_conn.fileno())
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._pipe_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._pipe_r, 64)
                continue
            readable = self.listen_conn is not None and self.listen_conn.fileno() in ready
            if readable and self._notified():
                self._debounce()
                return "notify"
        raise Stopping

    def _notified(self) -> bool:
        assert self.listen_conn is not None
        try:
            return bool(list(self.listen_conn.notifies(timeout=0)))
        except psycopg.Error as exc:
            self._lost_listen(exc)
            return False

    def _debounce(self) -> None:
        """Let a burst of commits settle for ``debounce`` seconds (coalescing)."""
        end = time.time() + self.cfg.debounce
        while self.listen_conn is not None and not self.stop.is_set():
            left = end - time.time()
            if left <= 0:
                return
            ready, _, _ = select.select([self.listen_conn.fileno(), self._pipe_r], [], [], left)
            if self.listen_conn.fileno() in ready:
                self._notified()
            if self._pipe_r in ready:
                return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def close_periods(cfg: RelayConfig, organization: int | None = None) -> int:
    """One drain of period closing (the CLI's ``close-period``); returns claims made."""
    log = Log(cfg.api_key)
    relay = Relay(cfg, log, Metrics())
    relay.connect()
    try:
        return relay.drain(only_close=True, organization=organization)
    finally:
        relay.close()
