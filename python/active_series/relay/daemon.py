"""The worker's loop: wait for a new change in the outbox, the poll interval, scheduled work
or a stop signal; then drain. The watching connection and the reconnects live here too;
relaying an organization is :mod:`active_series.relay.claim`'s.

Ingest commits send no NOTIFY: a transaction that has notified takes, at commit, a lock shared
by the whole server, so every notifying commit would wait for the one before it (at the start
of a billing period, every organization's first report). The worker looks at the outbox's
primary key instead, every ``watch_interval`` (a few index entries), for ids it has not seen.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import select
import time
from enum import StrEnum
from typing import Any

import psycopg
import stripe
from prometheus_client import start_http_server

from active_series.errors import login_refused
from active_series.install import SchemaVersionError
from active_series.ratelimit import backoff
from active_series.relay.claim import Relay, Stopping
from active_series.relay.config import RelayConfig, worker_conninfo
from active_series.relay.observe import Log, Metrics
from active_series.relay.signals import StopSignals
from active_series.relay.stripe_api import MeterError, classify
from active_series.text import first_line


class Wake(StrEnum):
    """Why the worker started a drain."""

    START = "start"
    CHANGE = "change"
    POLL = "poll"
    SCHEDULED = "scheduled"
    RECONNECT = "reconnect"


# A commit may bring an outbox id below the highest one already seen (ids are taken before
# commit, and commits land in any order): the watch rereads this many ids below the highest.
WATCH_WINDOW = 1000
WATCH_SQL = "SELECT id FROM active_series._outbox WHERE id > %s ORDER BY id"


class Watch:
    """New outbox rows, by their ids: the worker's wake-up without NOTIFY."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.seen: set[int] = set()
        self.top = 0
        self.changed()  # what is there now is the start-up drain's

    def changed(self) -> bool:
        """Whether an outbox row appeared since the last look."""
        ids = [r[0] for r in self.conn.execute(WATCH_SQL, (max(0, self.top - WATCH_WINDOW),))]
        new = not self.seen.issuperset(ids)
        self.seen = set(ids)
        if ids:
            self.top = max(self.top, ids[-1])
        return new


class Worker:
    """The daemon loop. Reconnects with backoff and jitter; catches up after."""

    def __init__(self, cfg: RelayConfig, log: Log | None = None) -> None:
        self.cfg = cfg
        self.log = log or Log(cfg.api_key)
        self.metrics = Metrics()
        self.signals = StopSignals(cfg.shutdown_timeout)
        self.stop = self.signals.stop
        self.relay = Relay(cfg, self.log, self.metrics, self.stop)
        self.relay.on_read = self.signals.wake  # a summary read ended: drain to record it
        self.watch: Watch | None = None
        self.watch_attempts = 0
        self.watch_retry_at = 0.0
        self.drained_at = -math.inf  # when the last drain started (time.monotonic())

    def run(self) -> int:
        self.signals.install()
        if self.cfg.metrics_port:
            start_http_server(self.cfg.metrics_port, registry=self.metrics.registry)
        self.log(
            "info",
            "start",
            pid=os.getpid(),
            api_base=self.cfg.api_base,
            meter_event_name=self.cfg.meter_event_name,
            meter_customer_key=self.cfg.meter_customer_key,
            meter_value_key=self.cfg.meter_value_key,
            poll_interval=self.cfg.poll_interval,
            watch_interval=self.cfg.watch_interval,
            grace=self.cfg.grace,
            metrics_port=self.cfg.metrics_port or None,
        )
        try:
            return self._run()
        except SchemaVersionError as exc:
            # at the start or at any wake-up (an upgrade under a running worker): exit 4
            self.log("error", "schema_mismatch", error=str(exc))
            raise
        except MeterError as exc:
            # at the start, or after a refused post: nothing is posted to a meter that does
            # not fit, and no organization parked for the meter's fault: exit 8
            self.log("error", "meter_unfit", error=str(exc))
            raise
        finally:
            self.relay.shutdown()
            if self.watch is not None:
                with contextlib.suppress(Exception):
                    self.watch.conn.close()
            self.log("info", "stop")

    def _run(self) -> int:
        attempts = 0
        while True:  # the database may be restarting
            try:
                self.relay.connect()
                break
            except psycopg.OperationalError as exc:
                if login_refused(exc):
                    self.log("error", "database_refused", error=first_line(exc))
                    raise
                delay = backoff(attempts, self.cfg.reconnect_delay, 30.0)
                attempts += 1
                self.log("warning", "database_unavailable", error=first_line(exc), retry_in=delay)
                if self.stop.wait(delay):
                    return 0
        if not self._check_meter():
            return 0
        self._start_watch()
        reason = Wake.START
        db_attempts = 0
        frozen = False
        while not self.stop.is_set():
            try:
                if self.relay.claim_conn is None:
                    self.relay.connect()
                    self.log("info", "reconnected", what="database")
                    reason = Wake.RECONNECT
                db_attempts = 0
                self.relay.wake_reason = reason
                self.metrics.wakeups.labels(reason).inc()
                self.drained_at = time.monotonic()
                if self.cfg.once and self.relay.awaiting is None:
                    self.relay.awaiting = set()
                handled = self.relay.drain()
                self.log("debug", "drained", wake=reason, claims=handled)
                if not frozen:
                    freeze_heap()
                    frozen = True
                if self.cfg.once:
                    # until Stripe's summaries confirm what this run posted (bounded)
                    self.relay.await_confirmations()
                    break
                reason = self._wait()
            except Stopping:
                break
            except psycopg.Error as exc:
                self.relay.close()
                if isinstance(exc, psycopg.OperationalError) and login_refused(exc):
                    # the role was changed under the running worker: a person must act
                    self.log("error", "database_refused", error=first_line(exc))
                    raise
                delay = backoff(db_attempts, self.cfg.reconnect_delay, 30.0)
                db_attempts += 1
                self.log("warning", "database_unavailable", error=first_line(exc), retry_in=delay)
                self.stop.wait(delay)
                reason = Wake.RECONNECT
        return 0

    def _check_meter(self) -> bool:
        """Before the first post: the active meter of ``--meter-event-name`` aggregates with
        ``last`` and reads the configured payload keys, else MeterError (exit 8). A meter
        that cannot be read (Stripe unreachable, 5xx, a refused key) is read again with
        backoff; with ``--once``, that too is MeterError. False: stopped meanwhile."""
        attempts = 0
        while True:
            try:
                meter = self.relay.check_meter()
            except stripe.StripeError as exc:
                reason = classify(exc)[1]
                if self.cfg.once:
                    raise MeterError(f"cannot read the Stripe meters: {reason}") from None
                delay = backoff(attempts, self.cfg.reconnect_delay, 60.0)
                attempts += 1
                self.log("warning", "meter_unreadable", reason=reason, retry_in=delay)
                if self.stop.wait(delay):
                    return False
                continue
            self.log(
                "info",
                "meter_checked",
                meter=meter["id"],
                formula="last",
                customer_key=self.cfg.meter_customer_key,
                value_key=self.cfg.meter_value_key,
            )
            return True

    # ------------------------------------------------------------------ watching
    def _start_watch(self) -> bool:
        try:
            conn = psycopg.connect(
                worker_conninfo(self.cfg.dsn),
                autocommit=True,
                connect_timeout=10,
                application_name="active-series-worker-watch",
            )
            self.watch = Watch(conn)
        except psycopg.Error as exc:
            self._retry_watch_later("watch_failed", exc)
            return False
        self.watch_attempts = 0
        self.log("info", "watching", backend_pid=conn.info.backend_pid)
        return True

    def _lost_watch(self, exc: BaseException) -> None:
        if self.watch is not None:
            with contextlib.suppress(Exception):
                self.watch.conn.close()
        self.watch = None
        self._retry_watch_later("watch_lost", exc)

    def _retry_watch_later(self, event: str, exc: BaseException) -> None:
        delay = backoff(self.watch_attempts, self.cfg.reconnect_delay, 30.0)
        self.watch_attempts += 1
        self.watch_retry_at = time.time() + delay
        self.log("warning", event, error=first_line(exc), retry_in=delay)

    # ------------------------------------------------------------------ waiting
    def _wait(self) -> Wake:
        """Block until the next reason to drain; returns it."""
        now = time.time()
        deadline, reason = now + self.cfg.poll_interval, Wake.POLL
        scheduled = self.relay.next_wakeup()
        if scheduled is not None and scheduled < deadline:
            deadline, reason = max(scheduled, now + 0.05), Wake.SCHEDULED
        while not self.stop.is_set():
            due = self.watch is None and time.time() >= self.watch_retry_at
            if due and self._start_watch():
                return Wake.RECONNECT  # changes may have come meanwhile: catch up
            wake_at = deadline
            if self.watch is not None:
                wake_at = min(wake_at, time.time() + self.cfg.watch_interval)
            elif self.watch_retry_at < wake_at:
                wake_at = self.watch_retry_at
            timeout = wake_at - time.time()
            if timeout > 0:
                ready, _, _ = select.select([self.signals.wake_fd], [], [], timeout)
                if ready:
                    self.signals.clear_wake()
                    if self.relay.reads_ready():
                        return Wake.SCHEDULED  # a summary read ended: record it
                    continue
            if self._changed():
                self._settle()
                return Wake.CHANGE
            if time.time() >= deadline:
                return reason
        raise Stopping

    def _changed(self) -> bool:
        if self.watch is None:
            return False
        try:
            return self.watch.changed()
        except psycopg.Error as exc:
            self._lost_watch(exc)
            return False

    def _settle(self) -> None:
        """Drains start at most once per ``debounce`` seconds. A change after a quiet spell
        is drained at once; the changes that come within ``debounce`` of the last drain's
        start wait for the rest of it, and are drained together (coalescing)."""
        left = self.drained_at + self.cfg.debounce - time.monotonic()
        if left > 0:
            select.select([self.signals.wake_fd], [], [], left)


def freeze_heap() -> None:
    """Once the first drain has run, the worker holds what it keeps for its life: the
    modules the Stripe SDK loads on first use, its clients, the connections, the pool's
    threads. Collect once, then take those objects out of the collector's sight
    (``gc.freeze``): a full collection in a later drain walks only what that drain made.
    Without it, a full collection during a burst walked the whole heap, 11-25 ms on the
    burst's way to Stripe (measured on a 600-organization burst)."""
    gc.collect()
    gc.freeze()


def close_periods(cfg: RelayConfig, organization: int | None = None) -> int:
    """One drain of period closing (the CLI's ``close-period``), then the wait for the
    summary reads of the final values it posted (:meth:`Relay.await_confirmations`); returns
    the organizations the drain handled. The meter is checked first, as by the worker
    (MeterError, exit 8: it does not fit or could not be read)."""
    relay = Relay(cfg, Log(cfg.api_key), Metrics())
    relay.connect()
    try:
        try:
            relay.check_meter()
        except stripe.StripeError as exc:
            raise MeterError(f"cannot read the Stripe meters: {classify(exc)[1]}") from None
        relay.awaiting = set()
        handled = relay.drain(only_close=True, organization=organization)
        # until Stripe's summaries confirm the final values it posted (bounded)
        relay.await_confirmations(only_close=True, organization=organization)
        return handled
    finally:
        relay.shutdown()
