"""Subscriptions with their periods, items, trials and cancellations, and invoice
previews."""

from __future__ import annotations

from .common import PERIOD_SECONDS_METADATA_KEY, ApiError, Json, new_id
from .params import as_bool, as_dict, as_int, as_str, invalid, metadata_of, missing, no_such
from .prices import Prices, in_currency, price_amount
from .store import Subscription


class Billing(Prices):
    # ---- subscriptions -------------------------------------------------------------------------

    def create_subscription(self, p: Json) -> Json:
        customer = as_str(p, "customer", required=True)
        assert customer is not None
        items = p.get("items")
        if not items:
            raise missing("items")
        if not isinstance(items, list):
            raise invalid("items", "items must be an array.")
        metadata = metadata_of(p)
        period_seconds = None
        if PERIOD_SECONDS_METADATA_KEY in metadata:
            period_seconds = int(metadata[PERIOD_SECONDS_METADATA_KEY])
            if period_seconds <= 0:
                raise invalid("metadata", f"{PERIOD_SECONDS_METADATA_KEY} must be positive.")
        anchor_param = as_int(p, "billing_cycle_anchor")
        backdate = as_int(p, "backdate_start_date")
        trial_end = as_int(p, "trial_end")
        trial_days = as_int(p, "trial_period_days")
        if trial_end is not None and trial_days is not None:
            raise invalid(
                "trial_end",
                "You may only specify one of these parameters: trial_end, trial_period_days.",
            )
        currency = (as_str(p, "currency") or "").lower() or None
        with self.lock:
            self.get_customer(customer)
            prices = []
            for i, item in enumerate(items):
                pid = as_str(item, "price", required=True, label=f"items[{i}][price]")
                assert pid is not None
                price = self.get_price(pid)
                if price["recurring"] is None:
                    raise invalid(f"items[{i}][price]", "The price must be recurring.")
                qty = as_int(item, "quantity", label=f"items[{i}][quantity]")
                if price["recurring"]["usage_type"] == "metered" and qty is not None:
                    raise invalid(
                        f"items[{i}][quantity]", "Quantity cannot be set for a metered price."
                    )
                prices.append((price, qty))
            currency = currency or prices[0][0]["currency"]
            for i, (price, _) in enumerate(prices):
                if currency != price["currency"] and currency not in (
                    price.get("currency_options") or {}
                ):
                    raise invalid(
                        f"items[{i}][price]",
                        f"The price {price['id']} has no amount in {currency}: its currency "
                        f"or one of its currency_options must be the subscription's currency.",
                    )
            first = prices[0][0]["recurring"]
            now = self.now_int()
            if backdate is not None and backdate > now:
                raise invalid("backdate_start_date", "backdate_start_date must be in the past.")
            if trial_days is not None:
                if trial_days < 1:
                    raise invalid("trial_period_days", "trial_period_days must be positive.")
                trial_end = now + trial_days * 86400
            if trial_end is not None and trial_end <= now:
                raise invalid("trial_end", "trial_end must be in the future.")
            if trial_end is not None and anchor_param is not None:
                raise invalid(
                    "billing_cycle_anchor",
                    "The emulator does not combine a trial with a billing_cycle_anchor.",
                )
            sub_id = new_id("sub")
            sub = Subscription(
                obj={},
                anchor=now,
                index=1,
                period_seconds=period_seconds,
                interval=first["interval"],
                interval_count=first["interval_count"],
            )
            if trial_end is not None:
                # the trial is the first period; the billing cycle begins at its end
                sub.anchor, sub.index = trial_end, 0
                start, end = now, trial_end
            elif anchor_param is None:
                start, end = now, sub.boundary(1)
            elif anchor_param > now:
                # a first period up to the anchor, from the backdated start if there is one
                sub.anchor, sub.index = anchor_param, 0
                start, end = (now if backdate is None else backdate), anchor_param
            else:
                sub.anchor = anchor_param
                index = 1
                while sub.boundary(index) <= now:
                    index += 1
                sub.index = index
                start, end = sub.boundary(index - 1), sub.boundary(index)
            sub.obj = {
                "id": sub_id,
                "object": "subscription",
                "billing_cycle_anchor": sub.anchor,
                "cancel_at": None,
                "cancel_at_period_end": False,
                "cancellation_details": {"comment": None, "feedback": None, "reason": None},
                "canceled_at": None,
                "collection_method": "charge_automatically",
                "created": now,
                "currency": currency,
                "customer": customer,
                "ended_at": None,
                "items": {
                    "object": "list",
                    "data": [_item(sub_id, price, qty, now) for price, qty in prices],
                    "has_more": False,
                    "total_count": len(prices),
                    "url": f"/v1/subscription_items?subscription={sub_id}",
                },
                "latest_invoice": None,
                "livemode": False,
                "metadata": metadata,
                "start_date": now if backdate is None else backdate,
                "status": "active" if trial_end is None else "trialing",
                "trial_start": None if trial_end is None else now,
                "trial_end": trial_end,
            }
            self._set_period(sub, start, end)
            self.subscriptions[sub_id] = sub
            return sub.obj

    @staticmethod
    def _set_period(sub: Subscription, start: int, end: int) -> None:
        sub.obj["current_period_start"] = start
        sub.obj["current_period_end"] = end
        for item in sub.obj["items"]["data"]:
            item["current_period_start"] = start
            item["current_period_end"] = end

    def _roll(self, sub: Subscription) -> None:
        if not self.auto_advance_periods or sub.obj["status"] not in ("active", "trialing"):
            return
        now = self.now()
        cancel_at = sub.obj.get("cancel_at")
        steps = 0
        while (
            now >= sub.obj["current_period_end"]
            and (cancel_at is None or sub.obj["current_period_end"] < cancel_at)
            and steps < 100_000
        ):
            self._next_period(sub)
            steps += 1
        if cancel_at is not None and now >= cancel_at:
            # a scheduled cancellation took effect: ended at cancel_at, its partial period
            # invoiced then (the final invoice of a scheduled cancellation)
            sub.obj.update(status="canceled", ended_at=cancel_at)
            sub.invoice_now = True

    def _next_period(self, sub: Subscription) -> None:
        start, end = sub.obj["current_period_start"], sub.obj["current_period_end"]
        sub.history.append((start, end))
        if sub.obj["status"] == "trialing" and end >= sub.obj["trial_end"]:
            sub.obj["status"] = "active"  # the trial ended: a new billing cycle begins
        sub.index += 1
        self._set_period(sub, end, sub.boundary(sub.index))

    def get_subscription(self, sid: str) -> Subscription:
        with self.lock:
            sub = self._lookup(self.subscriptions, "subscription", sid)
            self._roll(sub)
            return sub

    def list_subscriptions(self, p: Json) -> list[Json]:
        customer = as_str(p, "customer")
        status = as_str(p, "status")
        with self.lock:
            result = []
            for sub in reversed(self.subscriptions.values()):
                self._roll(sub)
                if customer and sub.obj["customer"] != customer:
                    continue
                if status and status != "all" and sub.obj["status"] != status:
                    continue
                if not status and sub.obj["status"] == "canceled":
                    continue
                result.append(sub.obj)
            return result

    def cancel_subscription(self, sid: str, p: Json | None = None) -> Json:
        """``DELETE /v1/subscriptions/{id}``: cancel now. ``invoice_now`` (default false)
        invoices the un-invoiced metered usage of the partial period at once; ``prorate``
        (default false) credits the unused time of licensed items (no amounts here)."""
        p = p or {}
        invoice_now = as_bool(p, "invoice_now")
        as_bool(p, "prorate")
        details = as_dict(p, "cancellation_details")
        with self.lock:
            sub = self.get_subscription(sid)
            if sub.obj["status"] == "canceled":
                raise invalid("subscription", f"The subscription {sid} has already been canceled.")
            sub.ended_exactly = self.now()
            now = int(sub.ended_exactly)
            sub.obj.update(
                status="canceled",
                canceled_at=now,
                ended_at=now,
                cancel_at=None,
                cancel_at_period_end=False,
                cancellation_details={
                    "comment": as_str(details, "comment"),
                    "feedback": as_str(details, "feedback"),
                    "reason": "cancellation_requested",
                },
            )
            sub.invoice_now = invoice_now
            return sub.obj

    def update_subscription(self, sid: str, p: Json) -> Json:
        """``POST /v1/subscriptions/{id}``: ``cancel_at`` (a future Unix time; empty unsets
        it), ``cancel_at_period_end`` (cancel when the current period ends; sets
        ``cancel_at`` to that end) and ``metadata``. A canceled subscription cannot be
        updated."""
        with self.lock:
            sub = self.get_subscription(sid)
            if sub.obj["status"] == "canceled":
                raise invalid(
                    "subscription",
                    "A canceled subscription can only update its cancellation_details and "
                    "metadata.",
                )
            now = self.now_int()
            at_end = p.get("cancel_at_period_end") not in (None, "")
            if at_end and p.get("cancel_at") not in (None, ""):
                raise invalid(
                    "cancel_at",
                    "You may only specify one of these parameters: cancel_at, "
                    "cancel_at_period_end.",
                )
            if at_end:
                if as_bool(p, "cancel_at_period_end"):
                    end = sub.obj["current_period_end"]
                    sub.obj.update(cancel_at_period_end=True, cancel_at=end, canceled_at=now)
                else:
                    sub.obj.update(cancel_at_period_end=False, cancel_at=None, canceled_at=None)
            elif p.get("cancel_at") == "":
                sub.obj.update(cancel_at_period_end=False, cancel_at=None, canceled_at=None)
            elif p.get("cancel_at") is not None:
                cancel_at = as_int(p, "cancel_at")
                assert cancel_at is not None
                if cancel_at <= now:
                    raise invalid("cancel_at", "cancel_at must be in the future.")
                sub.obj.update(
                    cancel_at=cancel_at,
                    cancel_at_period_end=cancel_at == sub.obj["current_period_end"],
                    canceled_at=now,
                )
            if p.get("metadata") is not None:
                sub.obj["metadata"] = {**sub.obj["metadata"], **metadata_of(p)}
            return sub.obj

    # ---- subscription items ----------------------------------------------------------------

    def _item_price(self, sub: Subscription, p: Json, label: str = "price") -> Json:
        pid = as_str(p, "price", required=True, label=label)
        assert pid is not None
        price = self.get_price(pid)
        if price["recurring"] is None:
            raise invalid(label, "The price must be recurring.")
        currency = sub.obj["currency"]
        if currency != price["currency"] and currency not in (price.get("currency_options") or {}):
            raise invalid(label, f"The price {price['id']} has no amount in {currency}.")
        return price

    def _live(self, sid: str) -> Subscription:
        sub = self.get_subscription(sid)
        if sub.obj["status"] == "canceled":
            raise invalid("subscription", f"The subscription {sid} has been canceled.")
        return sub

    def create_subscription_item(self, p: Json) -> Json:
        """``POST /v1/subscription_items``: add an item (``subscription``, ``price``,
        ``quantity`` for a licensed price) to a live subscription, in its current period. A
        metered item bills the usage reported from now on (as Stripe documents for a meter
        price added mid-period)."""
        sid = as_str(p, "subscription", required=True)
        assert sid is not None
        with self.lock:
            sub = self._live(sid)
            price = self._item_price(sub, p)
            qty = as_int(p, "quantity")
            if price["recurring"]["usage_type"] == "metered" and qty is not None:
                raise invalid("quantity", "Quantity cannot be set for a metered price.")
            now = self.now_int()
            item = _item(sid, price, qty, now)
            item["current_period_start"] = sub.obj["current_period_start"]
            item["current_period_end"] = sub.obj["current_period_end"]
            items = sub.obj["items"]
            items["data"].append(item)
            items["total_count"] = len(items["data"])
            sub.billed_from[item["id"]] = now
            return item

    def update_subscription_item(self, iid: str, p: Json) -> Json:
        """``POST /v1/subscription_items/{id}``: ``price`` (another price: a metered item
        then bills only the usage reported from now on, as Stripe documents for switching
        meter prices mid-period: the usage before is not billed), ``metadata``."""
        with self.lock:
            found = [
                (sub, item)
                for sub in self.subscriptions.values()
                for item in sub.obj["items"]["data"]
                if item["id"] == iid
            ]
            if not found:
                raise no_such("subscription_item", iid)
            sub, item = found[0]
            self._live(sub.obj["id"])
            if p.get("price") not in (None, ""):
                price = self._item_price(sub, p)
                if price["id"] != item["price"]["id"]:
                    item["price"] = price
                    sub.billed_from[iid] = self.now_int()
            if p.get("metadata") is not None:
                item["metadata"] = {**item["metadata"], **metadata_of(p)}
            return item

    def advance_subscription(self, sid: str, at: str) -> Json:
        """Start the next period: at the current period's end (``at="end"``) or now."""
        with self.lock:
            sub = self.get_subscription(sid)
            if at == "end":
                self._next_period(sub)
            elif at == "now":
                now = self.now_int()
                start = sub.obj["current_period_start"]
                sub.history.append((start, max(now, start)))
                sub.anchor, sub.index = now, 1
                sub.obj["billing_cycle_anchor"] = now
                self._set_period(sub, now, sub.boundary(1))
            else:
                raise ApiError(400, "at must be 'now' or 'end'")
            return self.subscription_state(sid)

    def set_subscription_period(self, sid: str, body: Json) -> Json:
        with self.lock:
            sub = self.get_subscription(sid)
            if body.get("item"):
                # one item's period only (items of different intervals), until the
                # subscription's next period
                item = next((i for i in sub.obj["items"]["data"] if i["id"] == body["item"]), None)
                if item is None:
                    raise ApiError(404, f"no item {body['item']} on {sid}")
                if int(body["end"]) <= int(body["start"]):
                    raise ApiError(400, "end must be after start")
                item["current_period_start"] = int(body["start"])
                item["current_period_end"] = int(body["end"])
                return self.subscription_state(sid)
            start = int(body.get("start") or sub.obj["current_period_start"])
            end = int(body.get("end") or sub.obj["current_period_end"])
            if end <= start:
                raise ApiError(400, "end must be after start")
            if body.get("period_seconds") is not None:
                sub.period_seconds = int(body["period_seconds"])
            sub.anchor, sub.index = end, 0
            sub.obj["billing_cycle_anchor"] = end
            self._set_period(sub, start, end)
            return self.subscription_state(sid)

    def subscription_state(self, sid: str) -> Json:
        with self.lock:
            sub = self.get_subscription(sid)
            periods = [
                *sub.history,
                (sub.obj["current_period_start"], sub.obj["current_period_end"]),
            ]
            ended = sub.obj.get("ended_at")
            rows = []
            for start, end in periods:
                current = (start, end) == periods[-1]
                if ended is not None and current:
                    # canceled mid-period: the partial period up to the cancellation, its
                    # usage invoiced only with invoice_now (or a scheduled cancellation)
                    end = max(start, min(end, ended))
                # the final invoice of a canceled subscription is made when it ended: what
                # was reported later is not on it (what was received earlier in the second
                # it ended is)
                made = (sub.ended_exactly or ended) if ended is not None and current else None
                lines = self._invoice_lines(sub, start, end, made)
                rows.append(
                    {
                        "start": start,
                        "end": end,
                        "current": current,
                        "trial": in_trial(sub, start, end),
                        "invoiced": ended is None or not current or sub.invoice_now,
                        "quantity": sum(line["quantity"] or 0 for line in lines),
                        "amount": sum(line["amount"] for line in lines),
                    }
                )
            return {"subscription": sub.obj, "periods": rows}

    # ---- invoices ------------------------------------------------------------------------------

    def _invoice_lines(
        self, sub: Subscription, start: int, end: int, made: float | None = None
    ) -> list[Json]:
        """The lines of the invoice of ``[start, end)`` (made at ``made``: the events
        received later are not on it). A metered item bills the usage reported within the
        period since it began billing (an item added, or its price changed, mid-period: the
        usage before is not billed, as Stripe documents for meter prices)."""
        lines = []
        trial = in_trial(sub, start, end)
        for item in sub.obj["items"]["data"]:
            price = item["price"]
            meter = price["recurring"]["meter"]
            if trial:
                # Stripe: usage accrued during a trial does not count toward what is charged,
                # and the trial's invoice is for $0
                quantity = 0 if price["recurring"]["usage_type"] == "metered" else 1
            elif price["recurring"]["usage_type"] == "metered" and meter:
                began = sub.billed_from.get(item["id"], start)
                since = began if start < began < end else start
                quantity = self.aggregate(meter, sub.obj["customer"], since, end, made)
            else:
                quantity = item["quantity"] or 1
            amount = 0 if trial else price_amount(in_currency(price, sub.obj["currency"]), quantity)
            lines.append(
                {
                    "id": new_id("il_tmp"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": sub.obj["currency"],
                    "description": f"{quantity} × {price['product']}",
                    "livemode": False,
                    "metadata": {},
                    "period": {"start": start, "end": end},
                    "price": price,
                    "pricing": {
                        "type": "price_details",
                        "price_details": {"price": price["id"], "product": price["product"]},
                        "unit_amount_decimal": price["unit_amount_decimal"],
                    },
                    "quantity": quantity,
                    "subscription": sub.obj["id"],
                    "subscription_item": item["id"],
                }
            )
        return lines

    def preview_invoice(self, p: Json) -> Json:
        customer = as_str(p, "customer")
        sid = as_str(p, "subscription")
        if customer is None and sid is None:
            raise missing("customer")
        with self.lock:
            if sid is not None:
                sub = self.get_subscription(sid)
                if customer is not None and sub.obj["customer"] != customer:
                    raise invalid("subscription", "The subscription belongs to another customer.")
            else:
                assert customer is not None
                self.get_customer(customer)
                subs = [
                    s
                    for s in self.subscriptions.values()
                    if s.obj["customer"] == customer and s.obj["status"] in ("active", "trialing")
                ]
                if not subs:
                    raise ApiError(
                        404,
                        f"No upcoming invoices for customer: {customer}",
                        code="invoice_upcoming_none",
                    )
                sub = subs[0]
                self._roll(sub)
            start, end = sub.obj["current_period_start"], sub.obj["current_period_end"]
            lines = self._invoice_lines(sub, start, end)
            total = sum(line["amount"] for line in lines)
            return {
                "id": f"upcoming_in_{sub.obj['id']}",
                "object": "invoice",
                "amount_due": total,
                "amount_paid": 0,
                "amount_remaining": total,
                "billing_reason": "upcoming",
                "created": self.now_int(),
                "currency": sub.obj["currency"],
                "customer": sub.obj["customer"],
                "lines": {
                    "object": "list",
                    "data": lines,
                    "has_more": False,
                    "total_count": len(lines),
                    "url": f"/v1/invoices/upcoming/lines?subscription={sub.obj['id']}",
                },
                "livemode": False,
                "parent": {
                    "type": "subscription_details",
                    "quote_details": None,
                    "subscription_details": {
                        "metadata": sub.obj["metadata"],
                        "subscription": sub.obj["id"],
                    },
                },
                "period_start": start,
                "period_end": end,
                "status": "draft",
                "subscription": sub.obj["id"],
                "subtotal": total,
                "total": total,
            }


def in_trial(sub: Subscription, start: int, end: int) -> bool:
    """Whether [start, end) is a period of the subscription's trial (it bills nothing)."""
    trial_start, trial_end = sub.obj.get("trial_start"), sub.obj.get("trial_end")
    if trial_start is None or trial_end is None:
        return False
    return int(trial_start) <= start and end <= int(trial_end)


def _item(sub_id: str, price: Json, qty: int | None, now: int) -> Json:
    """A new subscription item of ``price`` (no quantity for a metered one)."""
    return {
        "id": new_id("si"),
        "object": "subscription_item",
        "created": now,
        "metadata": {},
        "price": price,
        "quantity": qty if price["recurring"]["usage_type"] != "metered" else None,
        "subscription": sub_id,
    }
