"""What the worker tells its operators: ``key=value`` log lines and Prometheus metrics."""

from __future__ import annotations

import json
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge

_NEEDS_QUOTES = re.compile(r'[ "=\n\t]')


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
        if text == "" or _NEEDS_QUOTES.search(text):
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
            "Drains started, by what woke the worker: start, change, poll, scheduled, reconnect.",
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
        self.drift = Gauge(
            "active_series_relay_billing_drift_periods",
            "Finalized billing periods whose usage differs from what Stripe billed "
            "(rows of active_series.billing_drift).",
            registry=r,
        )
