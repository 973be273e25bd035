"""Products, tiered prices, subscriptions with their periods, and invoice previews."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .common import PERIOD_SECONDS_METADATA_KEY, ApiError, Json, new_id
from .meters import Meters
from .params import as_bool, as_dict, as_int, as_str, invalid, metadata_of, missing, no_such
from .store import Subscription


class Billing(Meters):
    # ---- products and prices -------------------------------------------------------------------

    def create_product(self, p: Json) -> Json:
        name = as_str(p, "name", required=True)
        with self.lock:
            return self._new_product(name, metadata_of(p))

    def _new_product(self, name: str | None, metadata: dict[str, str]) -> Json:
        now = self.now_int()
        product: Json = {
            "id": new_id("prod"),
            "object": "product",
            "active": True,
            "created": now,
            "updated": now,
            "name": name,
            "metadata": metadata,
            "livemode": False,
        }
        self.products[product["id"]] = product
        return product

    def get_product(self, pid: str) -> Json:
        return self._lookup(self.products, "product", pid)

    def create_price(self, p: Json) -> Json:
        currency = (as_str(p, "currency", required=True) or "").lower()
        scheme = as_str(p, "billing_scheme") or "per_unit"
        if scheme not in ("per_unit", "tiered"):
            raise invalid("billing_scheme", "billing_scheme must be per_unit or tiered.")
        recurring_in = as_dict(p, "recurring")
        recurring = None
        if recurring_in:
            interval = as_str(recurring_in, "interval", required=True, label="recurring[interval]")
            if interval not in ("day", "week", "month", "year"):
                raise invalid("recurring[interval]", "Invalid recurring[interval].")
            usage_type = as_str(recurring_in, "usage_type") or "licensed"
            if usage_type not in ("licensed", "metered"):
                raise invalid("recurring[usage_type]", "Invalid recurring[usage_type].")
            meter = as_str(recurring_in, "meter")
            if usage_type == "metered" and meter is None:
                raise missing("recurring[meter]")
            if meter is not None:
                self.get_meter(meter)
            recurring = {
                "interval": interval,
                "interval_count": as_int(
                    recurring_in, "interval_count", label="recurring[interval_count]"
                )
                or 1,
                "usage_type": usage_type,
                "meter": meter,
                "aggregate_usage": None,
                "trial_period_days": None,
            }
        tiers_mode = None
        tiers = None
        unit_amount = None
        transform = self._parse_transform(as_dict(p, "transform_quantity"))
        if scheme == "tiered":
            tiers_mode = as_str(p, "tiers_mode", required=True)
            if tiers_mode not in ("graduated", "volume"):
                raise invalid("tiers_mode", "tiers_mode must be graduated or volume.")
            if transform is not None:
                # Stripe: transform_quantity "Cannot be combined with `tiers`"
                raise invalid(
                    "transform_quantity",
                    "transform_quantity cannot be combined with tiers: it is only "
                    "available with billing_scheme=per_unit.",
                )
            tiers = self._parse_tiers(p.get("tiers"))
        else:
            unit_amount = as_int(
                p, "unit_amount", required=as_str(p, "unit_amount_decimal") is None
            )
        options = self._parse_currency_options(as_dict(p, "currency_options"), scheme, currency)
        lookup_key = as_str(p, "lookup_key")
        if lookup_key is not None and len(lookup_key) > 200:
            raise invalid("lookup_key", "lookup_key must be at most 200 characters.")
        transfer = as_bool(p, "transfer_lookup_key")
        with self.lock:
            holder = self._price_with_lookup_key(lookup_key)
            if holder is not None and not transfer:
                raise invalid(
                    "lookup_key",
                    f"A price ({holder['id']}) already uses that lookup key.",
                )
            product_id = as_str(p, "product")
            if product_id is not None:
                self.get_product(product_id)
            else:
                data = as_dict(p, "product_data")
                if not data:
                    raise missing("product")
                name = as_str(data, "name", required=True, label="product_data[name]")
                product_id = self._new_product(name, metadata_of(data))["id"]
            price: Json = {
                "id": new_id("price"),
                "object": "price",
                "active": True,
                "billing_scheme": scheme,
                "created": self.now_int(),
                "currency": currency,
                "livemode": False,
                "lookup_key": lookup_key,
                "metadata": metadata_of(p),
                "nickname": as_str(p, "nickname"),
                "product": product_id,
                "recurring": recurring,
                "tiers_mode": tiers_mode,
                "tiers": tiers,
                "transform_quantity": transform,
                "type": "recurring" if recurring else "one_time",
                "unit_amount": unit_amount,
                "unit_amount_decimal": as_str(p, "unit_amount_decimal")
                or (str(unit_amount) if unit_amount is not None else None),
            }
            if options:  # left out of answers unless expanded (params.unexpanded)
                price["currency_options"] = options
            if holder is not None:  # transfer_lookup_key: moved, atomically (one lock)
                holder["lookup_key"] = None
            self.prices[price["id"]] = price
            return price

    def _price_with_lookup_key(self, lookup_key: str | None) -> Json | None:
        if lookup_key is None:
            return None
        with self.lock:
            return next((x for x in self.prices.values() if x["lookup_key"] == lookup_key), None)

    def list_prices(self, p: Json) -> list[Json]:
        """Newest first; filters ``active``, ``currency``, ``product``, ``type``,
        ``lookup_keys`` (at most 10) and ``recurring[interval|meter|usage_type]``."""
        keys = p.get("lookup_keys")
        if isinstance(keys, str):
            keys = [keys]
        if keys is not None and not isinstance(keys, list):
            raise invalid("lookup_keys", "Invalid array: lookup_keys")
        if keys is not None and len(keys) > 10:
            raise invalid("lookup_keys", "You can specify up to 10 lookup_keys.")
        active = as_bool(p, "active")
        recurring = as_dict(p, "recurring")
        wanted = {
            "currency": (as_str(p, "currency") or "").lower() or None,
            "product": as_str(p, "product"),
            "type": as_str(p, "type"),
        }

        def chosen(price: Json) -> bool:
            if keys is not None and price["lookup_key"] not in keys:
                return False
            if p.get("active") not in (None, "") and price["active"] != active:
                return False
            if any(v is not None and price[k] != v for k, v in wanted.items()):
                return False
            every = price["recurring"] or {}
            return all(
                as_str(recurring, name) in (None, every.get(name))
                for name in ("interval", "meter", "usage_type")
            ) and (not recurring or bool(every))

        with self.lock:
            return [x for x in reversed(self.prices.values()) if chosen(x)]

    @staticmethod
    def _parse_transform(raw: Json) -> Json | None:
        """A price's ``transform_quantity``: ``divide_by`` (a positive whole number) and
        ``round`` (``up`` or ``down``), both required; None without one."""
        if not raw:
            return None
        divide_by = as_int(raw, "divide_by", required=True, label="transform_quantity[divide_by]")
        assert divide_by is not None
        if divide_by < 1:
            raise invalid(
                "transform_quantity[divide_by]", "transform_quantity[divide_by] must be positive."
            )
        rounding = as_str(raw, "round", required=True, label="transform_quantity[round]")
        if rounding not in ("up", "down"):
            raise invalid(
                "transform_quantity[round]", "transform_quantity[round] must be up or down."
            )
        return {"divide_by": divide_by, "round": rounding}

    def _parse_currency_options(self, raw: Json, scheme: str, currency: str) -> Json:
        """A price's ``currency_options``: per other currency, its ``unit_amount`` (per_unit)
        or its ``tiers`` (tiered, with the price's tier bounds' rules)."""
        options: Json = {}
        for key, option in raw.items():
            cur = str(key).lower()
            label = f"currency_options[{key}]"
            if not isinstance(option, dict) or len(cur) != 3 or cur == currency:
                raise invalid(label, f"Invalid {label}.")
            entry: Json = {
                "custom_unit_amount": None,
                "tax_behavior": "unspecified",
                "tiers": None,
                "unit_amount": None,
                "unit_amount_decimal": None,
            }
            if scheme == "tiered":
                entry["tiers"] = self._parse_tiers(option.get("tiers"))
            else:
                unit = as_int(
                    option,
                    "unit_amount",
                    required=as_str(option, "unit_amount_decimal") is None,
                    label=f"{label}[unit_amount]",
                )
                entry["unit_amount"] = unit
                entry["unit_amount_decimal"] = as_str(option, "unit_amount_decimal") or str(unit)
            options[cur] = entry
        return options

    @staticmethod
    def _parse_tiers(raw: Any) -> list[Json]:
        if not raw:
            raise missing("tiers")
        if not isinstance(raw, list):
            raise invalid("tiers", "tiers must be an array.")
        tiers: list[Json] = []
        previous = 0
        for i, tier in enumerate(raw):
            if not isinstance(tier, dict):
                raise invalid(f"tiers[{i}]", "Invalid tier.")
            up_raw = tier.get("up_to")
            if up_raw is None:
                raise missing(f"tiers[{i}][up_to]")
            up_to = None if up_raw == "inf" else as_int(tier, "up_to", label=f"tiers[{i}][up_to]")
            if up_to is not None and up_to <= previous:
                raise invalid(f"tiers[{i}][up_to]", "Tiers must have increasing up_to values.")
            if up_to is None and i != len(raw) - 1:
                raise invalid(f"tiers[{i}][up_to]", "Only the last tier may have up_to=inf.")
            unit = as_int(tier, "unit_amount", label=f"tiers[{i}][unit_amount]")
            flat = as_int(tier, "flat_amount", label=f"tiers[{i}][flat_amount]")
            unit_dec = tier.get("unit_amount_decimal") or (str(unit) if unit is not None else None)
            flat_dec = tier.get("flat_amount_decimal") or (str(flat) if flat is not None else None)
            if unit_dec is None and flat_dec is None:
                raise missing(f"tiers[{i}][unit_amount]")
            tiers.append(
                {
                    "up_to": up_to,
                    "unit_amount": unit,
                    "unit_amount_decimal": unit_dec,
                    "flat_amount": flat,
                    "flat_amount_decimal": flat_dec,
                }
            )
            previous = up_to or previous
        if tiers[-1]["up_to"] is not None:
            raise invalid(f"tiers[{len(tiers) - 1}][up_to]", "The last tier must have up_to=inf.")
        return tiers

    def get_price(self, pid: str) -> Json:
        return self._lookup(self.prices, "price", pid)

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
            sub_id = new_id("sub")
            sub = Subscription(
                obj={},
                anchor=now,
                index=1,
                period_seconds=period_seconds,
                interval=first["interval"],
                interval_count=first["interval_count"],
            )
            if anchor_param is None:
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
                "status": "active",
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
        if not self.auto_advance_periods or sub.obj["status"] != "active":
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
            now = self.now_int()
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
                # was reported later is not on it
                made = ended if ended is not None and current else None
                lines = self._invoice_lines(sub, start, end, made)
                rows.append(
                    {
                        "start": start,
                        "end": end,
                        "current": current,
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
        for item in sub.obj["items"]["data"]:
            price = item["price"]
            meter = price["recurring"]["meter"]
            if price["recurring"]["usage_type"] == "metered" and meter:
                began = sub.billed_from.get(item["id"], start)
                since = began if start < began < end else start
                quantity = self.aggregate(meter, sub.obj["customer"], since, end, made)
            else:
                quantity = item["quantity"] or 1
            amount = price_amount(in_currency(price, sub.obj["currency"]), quantity)
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
                    if s.obj["customer"] == customer and s.obj["status"] == "active"
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


def dec(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)


def in_currency(price: Json, currency: str) -> Json:
    """The price with the amounts it has in ``currency``: its own, or those of its
    ``currency_options`` entry (a subscription is billed in one currency)."""
    if currency == price["currency"]:
        return price
    option = price["currency_options"][currency]
    return {
        **price,
        "currency": currency,
        "tiers": option["tiers"],
        "unit_amount": option["unit_amount"],
        "unit_amount_decimal": option["unit_amount_decimal"],
    }


def billed_quantity(price: Json, quantity: int) -> int:
    """The quantity a per-unit price charges for: ``quantity`` divided by the price's
    ``transform_quantity[divide_by]`` and rounded as its ``round`` says, else as is."""
    transform = price.get("transform_quantity")
    if not transform:
        return quantity
    whole, rest = divmod(quantity, transform["divide_by"])
    return whole + (1 if rest and transform["round"] == "up" else 0)


def price_amount(price: Json, quantity: int) -> int:
    """The amount in the currency's minor unit for ``quantity`` units of ``price``.

    Graduated tiers charge each tier's units at that tier's unit amount plus the flat amount of
    every tier that holds at least one unit; volume tiers charge all units at the tier the total
    falls in plus that tier's flat amount. Tier ranges start at 0: a quantity of 0 falls in the
    first tier, whose flat amount is charged in both modes ("Stripe always bills the first flat
    rate tier when quantity=0", Set up tiered pricing). A per-unit price charges its unit
    amount for each unit of the quantity after its ``transform_quantity``.
    """
    quantity = max(quantity, 0)
    if price["billing_scheme"] != "tiered":
        total = dec(price["unit_amount_decimal"]) * billed_quantity(price, quantity)
    elif price["tiers_mode"] == "volume":
        tier = next(t for t in price["tiers"] if t["up_to"] is None or quantity <= t["up_to"])
        total = dec(tier["unit_amount_decimal"]) * quantity + dec(tier["flat_amount_decimal"])
    else:
        total = Decimal(0)
        lower = 0
        for i, tier in enumerate(price["tiers"]):
            upper = tier["up_to"]
            units = quantity - lower if upper is None else min(quantity, upper) - lower
            if units <= 0 and i > 0:
                break
            units = max(units, 0)
            total += dec(tier["unit_amount_decimal"]) * units + dec(tier["flat_amount_decimal"])
            if upper is None:
                break
            lower = upper
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))
