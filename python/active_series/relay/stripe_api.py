"""The relay's calls to Stripe: posting a meter event, reading what the meter holds for a
customer (its event summary), reading a subscription's period, checking the meter
(:func:`meter_fit`), and what a failed call means (:class:`Outcome`); the Stripe API version
the relay speaks."""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import requests
import stripe
from requests.adapters import HTTPAdapter

from active_series.errors import CommandError, ExitCode
from active_series.ratelimit import TokenBucket
from active_series.relay.config import RelayConfig

#: The Stripe API version every call of the relay names (``Stripe-Version``): the one the
#: tested stripe SDK release was generated for, so that an SDK upgrade does not change what
#: the relay speaks unnoticed. The PL/Python functions (sql/optional/plpython.sql) send the
#: same (a unit test checks).
STRIPE_API_VERSION = "2026-10-28.endive"


class Outcome(StrEnum):
    """What a Stripe call came to, for the relay."""

    OK = "ok"
    DUPLICATE = "duplicate"  # the identifier was already recorded: counts as sent
    TRANSIENT = "transient"  # 5xx, timeout, dropped connection: retry later
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"  # unknown customer, archived meter, invalid value: park
    GLOBAL = "global"  # bad API key or permissions: nothing an organization did
    # never called: the worker is pausing its calls (a 429, a bad key), or it is too late to
    # end by the call's deadline
    NOT_SENT = "not_sent"

    @property
    def accepted(self) -> bool:
        return self in (Outcome.OK, Outcome.DUPLICATE)


def classify(exc: stripe.StripeError) -> tuple[Outcome, str]:
    """What a failed Stripe call means for the relay: (outcome, one-line reason)."""
    status = exc.http_status
    code = exc.code or ""
    message = str(exc.user_message or exc).strip().splitlines()[0] if str(exc) else ""
    reason = f"{status or '-'} {code or type(exc).__name__}: {message}"[:500]
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return Outcome.RATE_LIMITED, reason
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return Outcome.GLOBAL, reason
    if isinstance(exc, stripe.IdempotencyError):
        return Outcome.TRANSIENT, reason
    if isinstance(exc, stripe.InvalidRequestError):
        if "already exists with identifier" in message:
            return Outcome.DUPLICATE, reason
        return Outcome.PERMANENT, reason
    # Anything else, a 4xx included, is an answer the SDK could not read as Stripe's error (a
    # proxy's page, a body cut short): what Stripe decided is unknown, so the post is resent
    # (under a fresh idempotency key; a resend of an accepted event is a duplicate).
    return Outcome.TRANSIENT, reason


def can_end_by(deadline: float, bound: float) -> bool:
    """Whether a call that may last ``bound`` seconds, started now, ends by ``deadline``
    (``time.monotonic()`` seconds): the promise its ledger row holds (``in_flight_until``)."""
    return time.monotonic() + bound <= deadline


TOO_LATE = "not sent: too late to end by the deadline its ledger row holds"


class MeterError(CommandError):
    """The worker cannot post to the meter of its event name: there is no active one, it
    aggregates with another formula than ``last``, or it reads other payload keys than the
    worker sends (or, where no retry is made, it could not be read). One line saying what
    to fix; exit code 8."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.METER)


def meter_fit(
    meters: Iterable[Any], event_name: str, customer_key: str, value_key: str
) -> dict[str, Any]:
    """The active meter of ``event_name`` among ``meters`` (all of the account's, newest
    first, as Stripe lists them), if it fits the worker: formula ``last`` (any other would
    bill a sum or a count of the posted values), customers mapped ``by_id`` from payload
    key ``customer_key``, the value under ``value_key`` (other keys: Stripe refuses every
    event). Raises MeterError naming what is wrong and how to fix it."""
    same = [m for m in map(plain, meters) if m.get("event_name") == event_name]
    active = [m for m in same if m.get("status") == "active"]
    if not active:
        if same:
            mid = same[0].get("id")
            raise MeterError(
                f"the meter {mid} (event {event_name}) is {same[0].get('status')} and takes no "
                f"events: reactivate it (POST /v1/billing/meters/{mid}/reactivate) or create "
                "a meter with formula last (active-series stripe setup)"
            )
        raise MeterError(
            f"no active Stripe meter has the event name {event_name}: create one with formula "
            "last (active-series stripe setup), or name yours with --meter-event-name"
        )
    meter = active[0]
    wrong: list[str] = []
    fixes: list[str] = []
    for what, found, needed in meter_mismatches(meter, customer_key, value_key):
        if what == "formula":
            wrong.append(f"aggregates with {found} (the worker needs last)")
            fixes.append(
                "deactivate it and create a meter with formula last (active-series stripe setup)"
            )
        elif what == "customer mapping":
            wrong.append(f"maps customers {found} (the worker needs by_id)")
        else:
            part = what.removesuffix(" key")
            wrong.append(f"reads the {part} from payload key {found} (the worker sends {needed})")
            fixes.append(f"run the worker with --meter-{part}-key {found}")
    if wrong:
        raise MeterError(
            f"the meter {meter.get('id')} (event {event_name}) {' and '.join(wrong)}"
            + (f"; fix: {' and '.join(fixes)}" if fixes else "")
        )
    return meter


def meter_mismatches(
    meter: Any, customer_key: str, value_key: str
) -> list[tuple[str, str | None, str]]:
    """Each way ``meter`` does not fit a worker posting ``customer_key`` and ``value_key``,
    as (what, the meter's, what the worker needs): "formula" (``last``), "customer mapping"
    (``by_id``), "customer key", "value key". The one definition of a meter that fits, for
    the worker and for ``stripe setup``."""
    m = plain(meter)
    mapping = m.get("customer_mapping") or {}
    found = (
        ("formula", (m.get("default_aggregation") or {}).get("formula"), "last"),
        ("customer mapping", mapping.get("type", "by_id"), "by_id"),
        ("customer key", mapping.get("event_payload_key"), customer_key),
        ("value key", (m.get("value_settings") or {}).get("event_payload_key"), value_key),
    )
    return [(what, have, need) for what, have, need in found if have != need]


def plain(obj: Any) -> dict[str, Any]:
    """A Stripe object (or a mapping) as plain dicts and lists, recursively."""
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class StripeMeter:
    """The Stripe client of one worker; every call waits for the shared rate limit."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.event_name = cfg.meter_event_name
        self.customer_key = cfg.meter_customer_key
        self.value_key = cfg.meter_value_key
        self.call_bound = cfg.call_bound
        self.client = stripe.StripeClient(
            cfg.api_key,
            base_addresses={"api": cfg.api_base},
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=cfg.max_network_retries,
            http_client=stripe.RequestsClient(
                timeout=cfg.stripe_timeout, session=http_session(cfg.api_base, cfg.concurrency)
            ),
        )
        self.bucket = TokenBucket(cfg.rate_limit)

    def post(
        self,
        customer: str,
        value: int,
        ts: int,
        ident: str,
        deadline: float = math.inf,
        *,
        key: str | None = None,
    ) -> tuple[Outcome, str]:
        """Post one meter event with the identifier ``ident``. Not made (NOT_SENT) unless it
        ends by ``deadline``, whatever the SDK's retries do.

        Each call gets a fresh idempotency key (``key``, by default :func:`attempt_key`),
        which the SDK's own retries of the call reuse and Stripe's error reports name a
        refused event by: Stripe stores the first answer to a key, a 500 included, and
        replays it, so a resend under the same key could never succeed. What keeps a
        resend from counting twice is the identifier: Stripe records one event per
        identifier and answers a second one with a 400 that counts as sent (DUPLICATE)."""
        self.bucket.acquire()
        if not can_end_by(deadline, self.call_bound):
            return Outcome.NOT_SENT, TOO_LATE
        try:
            self.client.v1.billing.meter_events.create(
                params={
                    "event_name": self.event_name,
                    "payload": {self.customer_key: customer, self.value_key: str(value)},
                    "identifier": ident,
                    "timestamp": ts,
                },
                options={"idempotency_key": key or attempt_key(ident)},
            )
        except stripe.StripeError as exc:
            return classify(exc)
        return Outcome.OK, ""

    def meter(self) -> dict[str, Any]:
        """The meter the worker posts to, if it fits (:func:`meter_fit`): all the account's
        meters are listed (100 a page), inactive ones too, to say which one was
        deactivated. Raises MeterError, or stripe.StripeError when they cannot be read."""
        self.bucket.acquire()
        meters = self.client.v1.billing.meters.list(params={"limit": 100})
        return meter_fit(
            meters.auto_paging_iter(), self.event_name, self.customer_key, self.value_key
        )

    def summary(
        self,
        meter_id: str,
        customer: str,
        start: int,
        end: int,
        spare: threading.Event | None = None,
    ) -> int | None:
        """What the meter aggregates for ``customer`` over ``[start, end)`` (Unix seconds,
        minute-aligned, as Stripe requires): its event summary's ``aggregated_value`` (0 when
        Stripe lists none), with formula ``last`` the value Stripe bills for those seconds.
        Eventually consistent: a recent event may not count yet. With ``spare`` (a stop
        event), the call takes only a spare token of the rate limit (the posts' come first)
        and None is returned, nothing read, if ``spare`` is set meanwhile. Raises
        stripe.StripeError."""
        if spare is None:
            self.bucket.acquire()
        elif not self.bucket.acquire_spare(spare):
            return None
        page = self.client.v1.billing.meters.event_summaries.list(
            meter_id, params={"customer": customer, "start_time": start, "end_time": end}
        )
        values = [plain(s).get("aggregated_value") or 0 for s in page.data]
        return round(float(values[0])) if values else 0

    def subscriptions(self, customer: str) -> list[Any]:
        """The customer's subscriptions, canceled ones included (newest first), with their
        items and the items' prices (without tiers: :meth:`price` reads those). Raises
        stripe.StripeError."""
        self.bucket.acquire()
        subs = self.client.v1.subscriptions.list(
            params={"customer": customer, "status": "all", "limit": 20}
        )
        return list(subs.data)

    def price(self, price_id: str) -> Any:
        """A price with its tiers (Stripe includes them only when expanded, and refuses to
        expand them from a subscription list: five levels, its limit is four). Raises
        stripe.StripeError."""
        self.bucket.acquire()
        return self.client.v1.prices.retrieve(price_id, params={"expand": ["tiers"]})


def attempt_key(ident: str) -> str:
    """A fresh idempotency key for one attempt at posting the event ``ident``: the
    identifier (to find the attempt in Stripe's request log) and a random suffix."""
    return f"{ident}:{secrets.token_hex(8)}"


def http_session(api_base: str, concurrency: int) -> requests.Session:
    """One HTTP session for all the worker's threads: a connection per thread kept alive,
    and the proxy settings of the environment (HTTPS_PROXY, NO_PROXY) read once here rather
    than at every request (a tenth of a post's CPU time)."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(api_base)
    adapter = HTTPAdapter(pool_maxsize=concurrency + 2)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def current_period(
    subscriptions: Iterable[Any], metered: dict[str, Any] | None = None
) -> tuple[int, int] | None:
    """Current period of the first live subscription: on its ``metered`` item (the one the
    relay's meter bills, :func:`~active_series.relay.prices.metered_item`; items of a
    subscription may have periods of their own), else on its first item (recent API
    versions), else on the subscription (older ones)."""
    for obj in subscriptions:
        sub = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        if sub.get("status") not in ("active", "trialing", "past_due"):
            continue
        start = end = None
        items = sub.get("items")
        data = items.get("data") if items is not None else None
        if metered is not None and data and any(i.get("id") == metered.get("id") for i in data):
            data = [metered]
        if data:
            start = data[0].get("current_period_start")
            end = data[0].get("current_period_end")
        if start is None or end is None:
            start = sub.get("current_period_start")
            end = sub.get("current_period_end")
        if start is not None and end is not None:
            return int(start), int(end)
    return None
