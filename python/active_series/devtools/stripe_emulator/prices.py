"""Products and prices: tiered, per unit, transform_quantity, currency_options; what a price
charges for a quantity."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .common import Json, new_id
from .meters import Meters
from .params import as_bool, as_dict, as_int, as_str, invalid, metadata_of, missing


class Prices(Meters):
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
