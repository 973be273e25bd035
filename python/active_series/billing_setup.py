"""The Stripe side of billing, set up once: the meter the worker posts to, a tiered metered
price on it, and per organization a customer and a subscription, linked in the database.

Every step looks for what exists before it creates anything, so a second run creates
nothing and reports what it found:

- the meter is found by its event name among the active meters; one with another formula
  or other payload keys than the worker's is refused, never reused;
- the price is found by its ``lookup_key``; one that differs (meter, tiers, currency,
  interval) is refused unless ``replace_price``, which creates the new price with
  ``transfer_lookup_key`` (existing subscriptions keep the old one);
- an organization linked in the database keeps its customer; a subscription of that
  customer with an item on the meter counts as its subscription.

A crash between a Stripe call and the database write that records it must not make the
next run create a second customer. A new customer carries metadata naming the installation
and the organization (``active_series_installation``, ``active_series_organization_id``) and
is created with an idempotency key made of the same two: within Stripe's idempotency window
(at least 24 hours) the next run's create returns the customer created before; after it,
the customer search finds it by its metadata (Stripe's search lags writes by up to a minute,
the window covers that). The customer is linked (``set_stripe_customer``) before its
subscription is created; subscriptions are found by listing the customer's, which lists
read their writes, so they need no such key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import stripe

from active_series.errors import CommandError, ExitCode
from active_series.relay.stripe_api import meter_mismatches, plain
from active_series.text import major_units, pg_message

# the payload keys the relay posts by default (its --meter-customer-key, --meter-value-key)
CUSTOMER_KEY = "stripe_customer_id"
VALUE_KEY = "value"
DEFAULT_EVENT_NAME = "active_series"
DEFAULT_LOOKUP_KEY = "active_series_pro"
DEFAULT_PRODUCT_NAME = "Pro (active series)"
DEFAULT_PLAN = "pro"
ORGANIZATION_METADATA = "active_series_organization_id"
INSTALLATION_METADATA = "active_series_installation"

# Pro: $29 for up to 10 series, then $1.00 per series up to 25, then $0.50 each (the demo's)
DEFAULT_TIERS: list[dict[str, Any]] = [
    {"up_to": 10, "flat_amount": 2900, "unit_amount": 0},
    {"up_to": 25, "unit_amount": 100},
    {"up_to": "inf", "unit_amount": 50},
]

# ---------------------------------------------------------------- the SQL it sends

INSTALLATION = "SELECT installed_at FROM active_series._meta"

MAY_LINK = """
SELECT has_function_privilege(
           'active_series.set_stripe_customer(bigint, text, text)', 'EXECUTE')
       AND has_table_privilege('active_series.billing_account', 'SELECT')
"""

# the organizations named, and with billed every one on a plan other than free
ORGANIZATIONS = """
SELECT o.id, o.name, coalesce(b.plan, 'free') AS plan, b.stripe_customer_id
FROM active_series._organization_rows() AS o
LEFT JOIN active_series.billing_account AS b ON b.organization_id = o.id
WHERE o.id = ANY(%(ids)s) OR (%(billed)s AND coalesce(b.plan, 'free') <> 'free')
ORDER BY o.id
"""

LINK = "SELECT active_series.set_stripe_customer(%(org)s, %(customer)s, %(plan)s)"

CURRENT_PERIOD = """
SELECT extract(EPOCH FROM period_start)::bigint, extract(EPOCH FROM period_end)::bigint,
       period_start < now()
FROM active_series.current_period(%(org)s)
"""


# ---------------------------------------------------------------- what to set up


def parse_tiers(text: str) -> list[dict[str, Any]]:
    """Tiers from ``UP_TO:UNIT[+FLAT],...`` in the currency's minor unit (cents), the last
    ``UP_TO`` being ``inf``: the default is ``10:0+2900,25:100,inf:50``."""
    tiers: list[dict[str, Any]] = []
    for part in text.split(","):
        hit = re.fullmatch(r"\s*([0-9]+|inf)\s*:\s*([0-9]+)\s*(?:\+\s*([0-9]+)\s*)?", part)
        if hit is None:
            raise ValueError(
                f"not a tier: {part.strip()!r} (UP_TO:UNIT_AMOUNT[+FLAT_AMOUNT] in cents, "
                "e.g. 10:0+2900,25:100,inf:50)"
            )
        up_to, unit, flat = hit.groups()
        tier: dict[str, Any] = {"up_to": up_to if up_to == "inf" else int(up_to)}
        tier["unit_amount"] = int(unit)
        if flat is not None:
            tier["flat_amount"] = int(flat)
        tiers.append(tier)
    return check_tiers(tiers)


def read_tiers_file(path: str) -> list[dict[str, Any]]:
    """Tiers from a JSON file: a list of Stripe tier objects (``up_to``, ``unit_amount``,
    ``flat_amount``)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read tiers from {path}: {exc}") from None
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ValueError(f"{path}: expected a JSON list of tier objects")
    allowed = {"up_to", "unit_amount", "flat_amount"}
    for tier in raw:
        if set(tier) - allowed or "up_to" not in tier:
            raise ValueError(f"{path}: a tier has up_to, unit_amount, flat_amount: {tier}")
    return check_tiers(raw)


def check_tiers(tiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Increasing ``up_to`` ending with ``inf``, whole non-negative amounts."""
    if not tiers:
        raise ValueError("no tiers")
    previous = 0
    for i, tier in enumerate(tiers):
        last = i == len(tiers) - 1
        up_to = tier["up_to"]
        if (up_to == "inf") != last:
            raise ValueError("the last tier, and only it, has up_to inf")
        if not last and (not isinstance(up_to, int) or up_to <= previous):
            raise ValueError("tiers need increasing whole up_to values")
        for name in ("unit_amount", "flat_amount"):
            value = tier.get(name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number of cents: {value!r}")
        if tier.get("unit_amount") is None and tier.get("flat_amount") is None:
            raise ValueError("a tier needs unit_amount or flat_amount")
        previous = up_to if isinstance(up_to, int) else previous
    return tiers


def describe_tiers(tiers: Sequence[dict[str, Any]], currency: str) -> str:
    """``usd 1-10: 29.00 flat + 0.00 each; 11-25: 1.00 each; 26+: 0.50 each`` (major units)."""
    parts, lower = [], 0
    for tier in tiers:
        up_to = tier["up_to"]
        span = f"{lower + 1}+" if up_to in ("inf", None) else f"{lower + 1}-{up_to}"
        text = f"{major_units(tier.get('unit_amount') or 0, currency)} each"
        if tier.get("flat_amount"):
            text = f"{major_units(tier['flat_amount'], currency)} flat + " + text
        parts.append(f"{span}: {text}")
        lower = up_to if isinstance(up_to, int) else lower
    return f"{currency} " + "; ".join(parts)


@dataclass
class Plan:
    """What to set up; the defaults are the worker's and the demo's."""

    event_name: str = DEFAULT_EVENT_NAME
    customer_key: str = CUSTOMER_KEY
    value_key: str = VALUE_KEY
    tiers: list[dict[str, Any]] = field(default_factory=lambda: list(DEFAULT_TIERS))
    currency: str = "usd"
    interval: str = "month"
    product_name: str = DEFAULT_PRODUCT_NAME
    lookup_key: str = DEFAULT_LOOKUP_KEY
    replace_price: bool = False
    organizations: list[int] = field(default_factory=list)  # these, linked on plan
    billed: bool = False  # and every organization on a plan other than free
    plan: str = DEFAULT_PLAN
    subscription_metadata: dict[str, str] = field(default_factory=dict)
    # a new subscription starts at the organization's current period start (backdated) and
    # ends its first cycle at the period's end: the series reported so far are billed
    backdate: bool = False

    @property
    def links(self) -> bool:
        return self.billed or bool(self.organizations)


@dataclass
class Linked:
    """An organization's customer and subscription (the Stripe object) after setup."""

    organization: int
    name: str
    customer: str
    subscription: Any


@dataclass
class Result:
    meter: Any
    price: Any
    organizations: dict[int, Linked] = field(default_factory=dict)
    created: int = 0  # Stripe objects created by this run


class SetupConflict(CommandError):
    """Stripe holds an object under our name that is not what the worker needs."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.FAILURE)


# ---------------------------------------------------------------- Stripe


def _normal_tiers(tiers: Iterable[dict[str, Any]]) -> list[tuple[int | None, int, int]]:
    return [
        (
            None if t.get("up_to") in ("inf", None) else int(t["up_to"]),
            int(t.get("unit_amount") or 0),
            int(t.get("flat_amount") or 0),
        )
        for t in tiers
    ]


class Setup:
    """The steps, each printing one line through ``say``."""

    def __init__(self, client: stripe.StripeClient, say: Callable[[str], None]) -> None:
        self.client = client
        self.say = say
        self.created = 0

    # -- the meter ---------------------------------------------------------------------

    def meter(self, plan: Plan) -> Any:
        event_name = plan.event_name
        for meter in self.client.v1.billing.meters.list(
            params={"status": "active"}
        ).auto_paging_iter():
            if meter.event_name == event_name:
                self._check_meter(meter, plan)
                self.say(f"meter {meter.id} (event_name {event_name}, formula last): exists")
                return meter
        meter = self.client.v1.billing.meters.create(
            params={
                "display_name": "Active series",
                "event_name": event_name,
                "default_aggregation": {"formula": "last"},
                "customer_mapping": {"type": "by_id", "event_payload_key": plan.customer_key},
                "value_settings": {"event_payload_key": plan.value_key},
            }
        )
        self.created += 1
        self.say(f"meter {meter.id} (event_name {event_name}, formula last): created")
        return meter

    @staticmethod
    def _check_meter(meter: Any, plan: Plan) -> None:
        wrong = [
            f"its {what} is {found}, not {needed}"
            for what, found, needed in meter_mismatches(meter, plan.customer_key, plan.value_key)
        ]
        if wrong:
            raise SetupConflict(
                f"the active meter {meter.id} with event_name {meter.event_name} does not fit "
                f"the worker: {'; '.join(wrong)}. Deactivate it (POST /v1/billing/meters/"
                f"{meter.id}/deactivate) or use another --meter-event-name"
            )

    # -- the price ---------------------------------------------------------------------

    def price(self, meter: Any, plan: Plan) -> Any:
        found = self.client.v1.prices.list(
            params={"lookup_keys": [plan.lookup_key], "expand": ["data.tiers"]}
        ).data
        old = found[0] if found else None
        if old is not None:
            wrong = self._price_differences(old, meter, plan)
            if not wrong:
                self.say(
                    f"price {old.id} (lookup_key {plan.lookup_key}, "
                    f"{describe_tiers(plan.tiers, plan.currency)}): exists"
                )
                return old
            if not plan.replace_price:
                raise SetupConflict(
                    f"the price {old.id} with lookup_key {plan.lookup_key} differs: "
                    f"{'; '.join(wrong)}. --replace-price creates a new price and moves the "
                    "lookup key to it (subscriptions keep theirs), or use another --lookup-key"
                )
        params: dict[str, Any] = {
            "currency": plan.currency,
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": plan.tiers,
            "recurring": {"interval": plan.interval, "usage_type": "metered", "meter": meter.id},
            "lookup_key": plan.lookup_key,
        }
        if old is not None:
            params["product"] = old.product
            params["transfer_lookup_key"] = True
        else:
            params["product_data"] = {"name": plan.product_name}
        price = self.client.v1.prices.create(params=params)  # type: ignore[arg-type]
        self.created += 1
        self.say(
            f"price {price.id} (lookup_key {plan.lookup_key}, "
            f"{describe_tiers(plan.tiers, plan.currency)}): created"
            + (f", replacing {old.id}" if old is not None else "")
        )
        return price

    @staticmethod
    def _price_differences(price: Any, meter: Any, plan: Plan) -> list[str]:
        wrong = []
        recurring = price.recurring
        if recurring is None or recurring.usage_type != "metered":
            wrong.append("it is not a metered price")
        elif recurring.meter != meter.id:
            wrong.append(f"it is on meter {recurring.meter}, not {meter.id}")
        elif recurring.interval != plan.interval or recurring.interval_count != 1:
            wrong.append(f"it bills every {recurring.interval_count} {recurring.interval}")
        if price.currency != plan.currency:
            wrong.append(f"its currency is {price.currency}, not {plan.currency}")
        if price.billing_scheme != "tiered" or price.tiers_mode != "graduated":
            wrong.append("it is not tiered graduated")
        elif _normal_tiers(plain(t) for t in price.tiers or []) != _normal_tiers(plan.tiers):
            wrong.append(
                f"its tiers are {describe_tiers(plain(price).get('tiers') or [], price.currency)}"
            )
        if not price.active:
            wrong.append("it is archived")
        return wrong

    # -- customers and subscriptions -----------------------------------------------------

    def customer(self, org: int, name: str, installation: str) -> tuple[str, bool]:
        """The customer made for ``org`` of this installation: found by metadata, else
        created under an idempotency key of the same (a rerun within the key's life gets
        the customer created before). Returns (id, created)."""
        query = (
            f"metadata['{INSTALLATION_METADATA}']:'{installation}' AND "
            f"metadata['{ORGANIZATION_METADATA}']:'{org}'"
        )
        found = self.client.v1.customers.search(params={"query": query}).data
        if found:
            return min(found, key=lambda c: c.created).id, False
        customer = self.client.v1.customers.create(
            params={
                "name": name,
                "metadata": {INSTALLATION_METADATA: installation, ORGANIZATION_METADATA: str(org)},
            },
            options={"idempotency_key": f"active-series-customer-{installation}-{org}"},
        )
        replayed = customer.last_response is not None and (
            customer.last_response.headers.get("Idempotent-Replayed") == "true"
        )
        if not replayed:
            self.created += 1
        return customer.id, not replayed

    def existing_customer(self, org: int, customer: str) -> None:
        try:
            found = self.client.v1.customers.retrieve(customer)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise
            found = None
        if found is None or getattr(found, "deleted", False):
            state = "deleted in Stripe" if found is not None else "unknown to this Stripe account"
            raise SetupConflict(
                f"organization {org} is linked to {customer}, which is {state}; unlink it "
                f"(SELECT active_series.set_stripe_customer({org}, NULL)) and run again"
            )

    def subscription(
        self,
        customer: str,
        meter: Any,
        price: Any,
        plan: Plan,
        period: tuple[int, int] | None = None,
    ) -> tuple[Any, bool]:
        """A live subscription of ``customer`` with an item on ``meter``, else a new one to
        ``price`` (over ``period``, (start, end) in Unix seconds: backdated to its start,
        its first cycle ending at its end). Returns (subscription, created)."""
        subs = self.client.v1.subscriptions.list(params={"customer": customer})
        for sub in subs.auto_paging_iter():
            if sub.status in ("canceled", "incomplete_expired"):
                continue
            for item in sub["items"].data:
                recurring = item.price.recurring
                if recurring is not None and recurring.meter == meter.id:
                    return sub, False
        params: dict[str, Any] = {"customer": customer, "items": [{"price": price.id}]}
        if plan.subscription_metadata:
            params["metadata"] = plan.subscription_metadata
        if period is not None:
            params["backdate_start_date"], params["billing_cycle_anchor"] = period
        sub = self.client.v1.subscriptions.create(params=params)  # type: ignore[arg-type]
        self.created += 1
        return sub, True


# ---------------------------------------------------------------- the database


def installation_id(conn: psycopg.Connection[Any]) -> str:
    """This database's installation of active_series, as a short text (hex microseconds
    of its install time): customers made for its organizations carry it."""
    row = conn.execute(INSTALLATION).fetchone()
    assert row is not None
    return f"{int(row[0].timestamp() * 1_000_000):x}"


def check_may_link(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(MAY_LINK).fetchone()
    if not (row and row[0]):
        user = conn.info.user
        raise CommandError(
            "linking organizations to Stripe customers needs the active_series_admin role "
            f"(set_stripe_customer); {user} lacks it: GRANT active_series_admin TO {user}",
            ExitCode.DATABASE,
        )


def _link(conn: psycopg.Connection[Any] | None, org: int, customer: str, plan: str) -> None:
    assert conn is not None
    try:
        conn.execute(LINK, {"org": org, "customer": customer, "plan": plan})
    except psycopg.errors.InsufficientPrivilege as exc:
        raise CommandError(pg_message(exc), ExitCode.DATABASE) from None


def setup(
    client: stripe.StripeClient,
    conn: psycopg.Connection[Any] | None,
    plan: Plan,
    say: Callable[[str], None] = print,
) -> Result:
    """Set up (or find) the meter, the price and, when the plan names organizations or
    ``billed``, their customers and subscriptions; ``conn`` (autocommit) is needed then."""
    steps = Setup(client, say)
    rows: list[tuple[int, str, str, str | None]] = []
    installation = ""
    if plan.links:
        assert conn is not None
        check_may_link(conn)  # before anything is created that could not be linked
        installation = installation_id(conn)
        params = {"ids": plan.organizations, "billed": plan.billed}
        rows = [tuple(r) for r in conn.execute(ORGANIZATIONS, params)]  # type: ignore[misc]
        unknown = sorted(set(plan.organizations) - {r[0] for r in rows})
        if unknown:
            raise CommandError(
                f"organization {', '.join(map(str, unknown))} does not exist", ExitCode.NOT_FOUND
            )
    meter = steps.meter(plan)
    price = steps.price(meter, plan)
    result = Result(meter=meter, price=price)
    for org, name, org_plan, linked in rows:
        if linked is not None:  # an organization already linked keeps its customer
            steps.existing_customer(org, linked)
            customer, what = linked, "exists"
        else:
            customer, created = steps.customer(org, name, installation)
            what = "created" if created else "found by its metadata"
        if linked is None or org_plan == "free":
            link_plan = plan.plan if org_plan == "free" else org_plan
            _link(conn, org, customer, link_plan)
            what += f", linked on plan {link_plan}"
        period = None
        if plan.backdate:
            assert conn is not None
            row = conn.execute(CURRENT_PERIOD, {"org": org}).fetchone()
            if row is not None and row[2]:
                period = (int(row[0]), int(row[1]))
        sub, sub_created = steps.subscription(customer, meter, price, plan, period)
        say(
            f"organization {org} ({name}): customer {customer} {what}; "
            f"subscription {sub.id} {'created' if sub_created else 'exists'}"
        )
        result.organizations[org] = Linked(org, name, customer, sub)
    result.created = steps.created
    say(
        f"{steps.created} Stripe object(s) created"
        if steps.created
        else "nothing to create: everything exists"
    )
    return result
