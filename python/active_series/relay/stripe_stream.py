"""The relay's client of Stripe's v2 meter event stream, and the reader of Stripe's error
reports (both APIs).

:class:`MeterEventStream` sends batches of up to 100 meter events with the token of a
short-lived meter event session (created lazily, renewed before it expires and once more when
Stripe says it has).

Stripe validates meter events asynchronously, on v1 (``POST /v1/billing/meter_events``) as on
the stream: an accepted request only means "received". A refused event (unknown customer,
timestamp out of range, inactive meter, no meter…) is counted in an error report, a
``v1.billing.meter.error_report_triggered`` (or ``v1.billing.meter.no_meter_found``) event of
the Events API, one per meter and validation window, which :class:`ErrorReports` reads. A
report holds counts per error code and *samples*, not every refused event; a sample names the
request that carried the event by its idempotency key (a v1 post: one event; a stream request:
up to 100), so the relay remembers which posts each of its keys carried.

Identifiers are the relay's deterministic ones: Stripe keeps one event per identifier (within at
least 24 hours), so resending a batch, whole or in part, is harmless. Idempotency keys are not:
each request (each resend too) gets a fresh one (:func:`stream_key`), which the SDK's own
retries of that request reuse, so a resend is never answered with what an earlier attempt got.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe

from active_series.ratelimit import TokenBucket
from active_series.relay.config import RelayConfig
from active_series.relay.stripe_api import (
    STRIPE_API_VERSION,
    TOO_LATE,
    Outcome,
    can_end_by,
    classify,
)

MAX_BATCH = 100  # events per stream request (Stripe's limit)
ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER = "v1.billing.meter.no_meter_found"
# Error reports are read again from this long before the newest one seen (they may appear late).
REPORT_LAG = 3600.0


@dataclass(frozen=True)
class MeterEvent:
    """One event to send: ``timestamp`` in Unix seconds (sent as ISO 8601)."""

    customer: str
    value: int
    timestamp: int
    identifier: str


@dataclass(frozen=True)
class Refusal:
    """A sample of an error report: an event Stripe did not record, named by the idempotency
    key of the request that carried it (``key``), with the error code and message. ``report``
    is the report's event id; ``error_count`` how many events it counts refused, of which
    ``sampled`` are sampled (the others are named nowhere)."""

    key: str
    code: str
    message: str
    report: str = ""
    error_count: int = 1
    sampled: int = 1

    @property
    def unsampled(self) -> int:
        """How many refused events of the report no sample names."""
        return max(0, self.error_count - self.sampled)


@dataclass(frozen=True)
class _Session:
    client: stripe.StripeClient
    renew_at: float  # on the stream's clock (monotonic)


def iso8601(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stream_key() -> str:
    """A fresh idempotency key for one stream request."""
    return f"stream:{secrets.token_hex(16)}"


class MeterEventStream:
    """Batches of meter events on the v2 stream; thread-safe (one session, shared).

    Every HTTP request it makes takes one token of ``bucket`` (the worker's Stripe rate limit):
    each batch sent, each session created, each page of events read.
    """

    def __init__(
        self,
        cfg: RelayConfig,
        bucket: TokenBucket,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event_name = cfg.meter_event_name
        self.customer_key = cfg.meter_customer_key
        self.value_key = cfg.meter_value_key
        self.bucket = bucket
        self.margin = cfg.stream_session_margin
        self.call_bound = cfg.call_bound
        self._clock = clock
        self._retries = cfg.max_network_retries
        self._api_base = cfg.api_base
        self._stream_base = cfg.stream_base()
        self._http = stripe.RequestsClient(timeout=cfg.stripe_timeout)
        self.api = self._client(cfg.api_key)
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self.reports = ErrorReports(self.api, bucket)

    # ---- sending -------------------------------------------------------------------------------

    def send(
        self, events: Sequence[MeterEvent], deadline: float = math.inf, key: str | None = None
    ) -> tuple[Outcome, str]:
        """Send one request of at most 100 events under the idempotency key ``key`` (a fresh
        one if None): (outcome, one-line reason).

        OK means Stripe received the batch, not that it recorded every event: see
        :meth:`refusals`. On an expired session the batch is sent again once, with a new one
        (same key: the refused request stored no answer).
        A request is not made (NOT_SENT) unless it ends by ``deadline`` (monotonic seconds).
        """
        assert 0 < len(events) <= MAX_BATCH, f"a batch holds 1 to {MAX_BATCH} events"
        params: Any = {
            "events": [
                {
                    "event_name": self.event_name,
                    "payload": {self.customer_key: e.customer, self.value_key: str(e.value)},
                    "identifier": e.identifier,
                    "timestamp": iso8601(e.timestamp),
                }
                for e in events
            ]
        }
        options: Any = {"idempotency_key": key or stream_key()}
        try:
            session = self._current(stale=None)
            try:
                return self._request(session, params, options, deadline)
            except stripe.TemporarySessionExpiredError:
                return self._request(self._current(stale=session), params, options, deadline)
        except stripe.StripeError as exc:
            return classify(exc)

    def _request(
        self, session: _Session, params: Any, options: Any, deadline: float
    ) -> tuple[Outcome, str]:
        self.bucket.acquire()
        if not can_end_by(deadline, self.call_bound):
            return Outcome.NOT_SENT, TOO_LATE
        session.client.v2.billing.meter_event_stream.create(params=params, options=options)
        return Outcome.OK, ""

    def _current(self, stale: _Session | None) -> _Session:
        """The session to send with: the current one unless it is due for renewal or is
        ``stale`` (refused as expired), else a new one. Raises stripe.StripeError."""
        with self._lock:
            session = self._session
            if session is not None and session is not stale and self._clock() < session.renew_at:
                return session
            started = self._clock()
            self.bucket.acquire()
            created = self.api.v2.billing.meter_event_session.create()
            lifetime = _seconds(created.expires_at) - _seconds(created.created)
            client = self._client(created.authentication_token)
            renew_at = started + lifetime - min(self.margin, lifetime / 2)
            self._session = _Session(client, renew_at)
            return self._session

    def _client(self, key: str) -> stripe.StripeClient:
        """An SDK client authenticated with ``key`` (the API key, or a session's token)."""
        return stripe.StripeClient(
            key,
            base_addresses={"api": self._api_base, "meter_events": self._stream_base},
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=self._retries,
            http_client=self._http,
        )

    # ---- refusals ------------------------------------------------------------------------------

    def refusals(self) -> list[Refusal]:
        """:meth:`ErrorReports.refusals`."""
        return self.reports.refusals()


class ErrorReports:
    """Reads Stripe's error reports through the Events API, of every meter (the one the
    worker posts to may have been replaced by another of the same event name) and of events
    of no meter: thread-safe; every HTTP request takes a token of ``bucket``. Samples of
    other clients' requests match none of the relay's idempotency keys."""

    def __init__(self, api: stripe.StripeClient, bucket: TokenBucket) -> None:
        self.api = api
        self.bucket = bucket
        self._reports_lock = threading.Lock()
        self._seen: dict[str, float] = {}  # error-report event id -> its creation time

    def refusals(self) -> list[Refusal]:
        """The samples of the error reports that appeared since the previous call in this
        process (on the first call, of every report the Events API still holds, up to 30
        days).

        Raises stripe.StripeError (nothing is marked as read then).
        """
        with self._reports_lock:
            queries: list[dict[str, Any]] = [{"types": [ERROR_REPORT]}, {"types": [NO_METER]}]
            since = max(self._seen.values(), default=None)
            new: dict[str, float] = {}
            out: list[Refusal] = []
            for query in queries:
                if since is not None:
                    query["created"] = {"gte": iso8601(int(since - REPORT_LAG))}
                for event in self._events(query):
                    if event["id"] in self._seen or event["id"] in new:
                        continue
                    new[event["id"]] = _seconds(event["created"])
                    out.extend(_refusals_of(event))
            self._seen.update(new)
            newest = max(self._seen.values(), default=0.0)
            self._seen = {k: v for k, v in self._seen.items() if v >= newest - 2 * REPORT_LAG}
            return out

    def _events(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every event the query matches, page by page (one bucket token a page)."""
        self.bucket.acquire()
        params: Any = {**query, "limit": 100}
        page: Any = self.api.v2.core.events.list(params=params)
        while True:
            for item in page.data:
                event = item.to_dict()
                if "data" not in event:  # a thin event: its data comes with retrieve
                    self.bucket.acquire()
                    event = self.api.v2.core.events.retrieve(event["id"]).to_dict()
                yield event
            if not page.next_page_url:
                return
            self.bucket.acquire()
            page = self.api.deserialize(
                self.api.raw_request("get", page.next_page_url), api_mode="V2"
            )


def _refusals_of(event: dict[str, Any]) -> list[Refusal]:
    """The samples of one error report, each with the report's counts."""
    reason = (event.get("data") or {}).get("reason") or {}
    kinds = reason.get("error_types") or []
    samples = [(kind, sample) for kind in kinds for sample in kind.get("sample_errors") or []]
    count = int(reason.get("error_count") or 0)
    if not samples and count:  # counted, none named: still said (it matches no post)
        codes = ", ".join(str(kind.get("code") or "") for kind in kinds)
        return [Refusal("", codes, "no sample", str(event.get("id") or ""), count, 0)]
    return [
        Refusal(
            key=str((sample.get("request") or {}).get("identifier") or ""),
            code=str(kind.get("code") or ""),
            message=str(sample.get("error_message") or ""),
            report=str(event.get("id") or ""),
            error_count=max(count, len(samples)),
            sampled=len(samples),
        )
        for kind, sample in samples
    ]
