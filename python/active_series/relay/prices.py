"""The organization's metered Stripe price, kept in the database for ``price_preview``.

The worker reads it with the subscription period (``Poster.sync_subscriptions``, posting.py):
the price of the subscription item that is metered on the relay's meter (:func:`metered_item`),
retrieved again with its tiers expanded (Stripe refuses the five-level expansion that would
bring them with a subscription list), is stored by ``active_series._store_price`` (the SQL
does the parsing); no live subscription, or no item on the meter, forgets it.

A subscription billed in another currency than the price's own is billed at the price's
``currency_options`` amounts for that currency, which the stored price does not hold: such a
price is refused (forgotten, so ``price_preview`` shows no amount rather than a wrong one,
and logged as ``price_refused`` with what to change). A per-unit price's
``transform_quantity`` is stored with it and applied by ``price_preview``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from active_series.relay import queries as q
from active_series.relay.stripe_api import plain

LIVE = ("active", "trialing", "past_due")

#: the key under which :func:`metered_item` passes the subscription's currency on
SUBSCRIPTION_CURRENCY = "subscription_currency"


class PriceRefused(Exception):
    """A price the database cannot preview as Stripe bills it (the reason says why)."""


def metered_item(
    subscriptions: Iterable[Any], meter_id: Callable[[], str | None]
) -> dict[str, Any] | None:
    """The item of the first live subscription whose price is metered: the only one, or
    the one on the relay's meter (``meter_id()`` is asked only when there are several),
    with the subscription's currency under :data:`SUBSCRIPTION_CURRENCY`."""
    for obj in subscriptions:
        sub = plain(obj)
        if sub.get("status") not in LIVE:
            continue
        items = (sub.get("items") or {}).get("data") or []
        metered = [
            i
            for i in items
            if ((i.get("price") or {}).get("recurring") or {}).get("usage_type") == "metered"
        ]
        found = None
        if len(metered) == 1:
            found = metered[0]
        elif metered:
            wanted = meter_id()
            found = next(
                (i for i in metered if i["price"]["recurring"].get("meter") == wanted), None
            )
        if found is None:
            return None
        return {**found, SUBSCRIPTION_CURRENCY: sub.get("currency")}
    return None


def store(conn: psycopg.Connection[Any], org: int, item: dict[str, Any] | None) -> str | None:
    """Store the item's price for the organization (None: forget it); its Stripe id."""
    if item is None:
        conn.execute(q.STORE_PRICE, (org, None, None))
        return None
    price = dict(item["price"])
    billed_in = str(item.get(SUBSCRIPTION_CURRENCY) or price.get("currency") or "").lower()
    if billed_in != str(price.get("currency") or "").lower():
        conn.execute(q.STORE_PRICE, (org, None, None))
        raise PriceRefused(
            f"price {price.get('id')} is in {price.get('currency')} but the subscription is"
            f" billed in {billed_in}, at the price's currency_options amounts, which"
            f" price_preview does not hold: bill the subscription in {price.get('currency')},"
            f" or subscribe it to a price whose currency is {billed_in}"
        )
    # the SDK hands *_decimal fields over as Decimal: JSON strings, as Stripe sends them
    conn.execute(q.STORE_PRICE, (org, Jsonb(price, dumps=_dumps), item.get("id")))
    return str(price.get("id"))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=lambda v: str(v) if isinstance(v, Decimal) else None)


class PriceKeeper:
    """The worker's side: after each subscription read, store the metered item's price
    (the item as :meth:`metered` found it, its price read again with its tiers)."""

    def __init__(
        self,
        client: Any,
        meter_event_name: str,
        acquire: Callable[[], None],
        log: Callable[..., None],
    ) -> None:
        self.client = client
        self.meter_event_name = meter_event_name
        self.acquire = acquire  # the relay's rate limit, before each Stripe call
        self.log = log
        self.meter_id: str | None = None

    def metered(self, subscriptions: Iterable[Any]) -> dict[str, Any] | None:
        """The metered item of the first live subscription (:func:`metered_item`). Raises
        stripe.StripeError (the meter's id is read from Stripe when several items are
        metered)."""
        return metered_item(subscriptions, self.meter)

    def keep(self, conn: psycopg.Connection[Any], org: int, item: dict[str, Any] | None) -> None:
        try:
            price = store(conn, org, item)
        except PriceRefused as exc:
            self.log("warning", "price_refused", org=org, reason=str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a price never stops the relay: logged, kept
            if isinstance(exc, psycopg.OperationalError):
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log("warning", "price_unreadable", org=org, reason=reason)
            return
        self.log("debug", "price_read", org=org, price=price)

    def meter(self) -> str | None:
        """The id of the active meter of the relay's event name (looked up once)."""
        if self.meter_id is None:
            self.acquire()
            meters = self.client.v1.billing.meters.list(params={"status": "active", "limit": 100})
            for meter in meters.auto_paging_iter():
                if meter.event_name == self.meter_event_name:
                    self.meter_id = str(meter.id)
        return self.meter_id
