"""Shared pieces of the relay tests: the emulator, worker subprocesses, exactness checks."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import stripe
from active_series.devtools import worker_process
from active_series.devtools.stripe_emulator import (
    EmulatorControl,
    StripeEmulatorServer,
    run_in_thread,
)

API_KEY = "sk_test_relay_secret_0123456789"
EVENT_NAME = "active_series"


class Emulator:
    def __init__(self, server: StripeEmulatorServer, url: str) -> None:
        self.server = server
        self.url = url
        self.ctl = EmulatorControl(url)
        self.client = stripe.StripeClient(
            API_KEY, base_addresses={"api": url}, max_network_retries=2
        )
        self.meter = self.client.v1.billing.meters.create(
            params={
                "display_name": "active series",
                "event_name": EVENT_NAME,
                "default_aggregation": {"formula": "last"},
            }
        ).id

    def metered_price(self, **params: Any) -> Any:
        """A monthly metered price on the meter (in usd unless ``params`` say otherwise)."""
        return self.client.v1.prices.create(
            params={
                "currency": "usd",
                "product_data": {"name": "active series"},
                "recurring": {"interval": "month", "usage_type": "metered", "meter": self.meter},
                **params,
            }
        )

    def graduated_price(self, tiers: list[dict[str, Any]]) -> Any:
        return self.metered_price(billing_scheme="tiered", tiers_mode="graduated", tiers=tiers)

    def customer(self, name: str = "org") -> str:
        return self.client.v1.customers.create(params={"name": name}).id

    def last_value(self, customer: str, start: dt.datetime, end: dt.datetime) -> int:
        return self.ctl.aggregate(self.meter, customer, start.timestamp(), end.timestamp())

    def events(self, customer: str | None = None) -> list[dict[str, Any]]:
        return list(self.ctl.meter_events(customer=customer))


@pytest.fixture
def relay_emulator() -> Iterator[Emulator]:
    server, url = run_in_thread(rate_limit=None)
    try:
        yield Emulator(server, url)
    finally:
        server.shutdown()
        server.server_close()


class WorkerProcess(worker_process.WorkerProcess):
    """``active-series worker`` as a real subprocess with the tests' API key; its log goes to
    a file, and its events can be read back."""

    def __init__(self, dsn: str, api_base: str, log_path: Path, *extra: str) -> None:
        super().__init__(dsn, api_base, *extra, api_key=API_KEY, log_path=log_path)

    def log_events(self, event: str) -> list[dict[str, str]]:
        return parse_log(self.log(), event)


def parse_log(text: str, event: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        if f" event={event} " not in line + " ":
            continue
        fields = {}
        for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line):
            value = m.group(2)
            fields[m.group(1)] = value[1:-1] if value.startswith('"') else value
        out.append(fields)
    return out


@contextlib.contextmanager
def workers(*procs: WorkerProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.kill()


def wait_until(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = pred()
        except (psycopg.OperationalError, ConnectionError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def bill(conn: psycopg.Connection[Any], org: int, customer: str) -> None:
    conn.execute("SELECT active_series.set_stripe_customer(%s, %s, 'pro')", (org, customer))


def periods(conn: psycopg.Connection[Any], org: int) -> list[tuple[dt.datetime, dt.datetime, int]]:
    return [tuple(r) for r in conn.execute("SELECT * FROM active_series.periods(%s)", (org,))]


def mismatches(
    conn: psycopg.Connection[Any], emu: Emulator, billed: dict[int, str]
) -> list[tuple[int, dt.datetime, int, int]]:
    """(org, period_start, period_usage, Stripe's last value) wherever they differ."""
    out = []
    for org, customer in billed.items():
        for start, end, usage in periods(conn, org):
            got = emu.last_value(customer, start, end)
            if got != usage:
                out.append((org, start, usage, got))
    return out


def quiescent(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM active_series._outbox)"
        " + (SELECT count(*) FROM active_series._ledger WHERE status = 'pending')"
    ).fetchone()
    return row is not None and row[0] == 0


Periods = Mapping[str, Sequence[tuple[dt.datetime, dt.datetime]]]


def billing_periods(conn: psycopg.Connection[Any], billed: dict[int, str]) -> Periods:
    """Each billed customer's periods, from the database (for assert_increasing_timestamps)."""
    return {
        customer: [(s, e) for s, e, _ in periods(conn, org)] for org, customer in billed.items()
    }


def assert_increasing_timestamps(emu: Emulator, periods: Periods | None = None) -> None:
    """Per customer, in arrival order: strictly increasing timestamps (so never an older
    value after a newer one, and never two events with one timestamp).

    With ``periods`` (customer -> its billing periods, e.g. :func:`billing_periods`), the
    order is checked per customer within each period (events outside them form one more
    group): a period's final value may then arrive after the next period's first values.
    """
    last: dict[tuple[str, int], int] = {}
    for ev in emu.events():
        cus = ev["customer"]
        group = -1
        for i, (start, end) in enumerate((periods or {}).get(cus, ())):
            if start.timestamp() <= ev["timestamp"] < end.timestamp():
                group = i
        where = "" if periods is None else f" in period {group}"
        previous = last.get((cus, group))
        assert ev["timestamp"] > (-1 if previous is None else previous), (
            f"{cus}{where}: timestamp {ev['timestamp']} after {previous} (seq {ev['seq']})"
        )
        last[(cus, group)] = ev["timestamp"]


def assert_one_call_per_customer(emu: Emulator) -> None:
    """No two meter-event calls (v1 or v2) carrying one customer were handled at the same time,
    by the emulator's record of every call. A call lasts from its request until its answer
    starts to go out (the client may send its next call as soon as it has it); one still in
    flight lasts until now; one its client abandoned during an injected delay ended when the
    client left, so it is left out, as the emulator's own concurrency count does."""
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for call in emu.ctl.calls():
        if call["status"] == "abandoned":
            continue
        for cus in call["customers"]:
            by_customer.setdefault(cus, []).append(call)
    for cus, calls in by_customer.items():
        busy_until, busy = -math.inf, None
        for call in sorted(calls, key=lambda c: c["start"]):
            assert call["start"] >= busy_until, (
                f"{cus}: call {call} began while call {busy} was in flight"
            )
            finish = math.inf if call["finish"] is None else call["finish"]
            if finish > busy_until:
                busy_until, busy = finish, call


def short_periods(conn: psycopg.Connection[Any], org: int, seconds: int) -> dt.datetime:
    """Give the organization periods of ``seconds`` starting at the next whole second; returns
    the start of the first."""
    now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    start = now.replace(microsecond=0) - dt.timedelta(seconds=seconds * 20)
    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (org, start, start + dt.timedelta(seconds=seconds)),
    )
    return start


def anniversary(
    conn: psycopg.Connection[Any], emu: Emulator, org: int, seconds: int, offset: int
) -> tuple[str, Any]:
    """Bill ``org`` to a new customer subscribed with periods of ``seconds`` anchored
    ``offset`` seconds ago (not at a month start), the database's periods on the
    subscription's schedule (as an admin sets them; the worker follows it from there).
    Returns (customer, subscription)."""
    cus = emu.customer()
    sub = emu.client.v1.subscriptions.create(
        params={
            "customer": cus,
            "items": [{"price": emu.metered_price(unit_amount=10).id}],
            "billing_cycle_anchor": int(emu.ctl.now()) - offset,
            "metadata": {"emulator_period_seconds": str(seconds)},
        }
    )
    bill(conn, org, cus)
    item = sub["items"]["data"][0]
    conn.execute(
        "SELECT active_series.set_billing_period(%s, to_timestamp(%s), to_timestamp(%s))",
        (org, item["current_period_start"], item["current_period_end"]),
    )
    return cus, sub


class Cancellation:
    """A customer whose subscription (anniversary periods of an hour) is canceled at
    ``cancel_at``, in the middle of a run: its organization reports until ``quiet`` seconds
    before (time for its last change to be posted through faults and kills), then nothing
    until a second after the cancellation, then again (none of that may be posted)."""

    def __init__(
        self, conn: psycopg.Connection[Any], emu: Emulator, org: Any, cancel_in: float, quiet: float
    ) -> None:
        self.org = org
        self.customer, self.sub = anniversary(conn, emu, org.id, 3600, 1000)
        self.cancel_at = int(emu.ctl.now() + cancel_in)
        emu.client.v1.subscriptions.update(self.sub.id, params={"cancel_at": self.cancel_at})
        self.quiet = quiet
        self.usage_before: int | None = None  # the period's usage in the quiet stretch

    def may_report(self, org: Any) -> bool:
        """Whether ``org`` may report now."""
        now = time.time()
        return org.id != self.org.id or not (
            self.cancel_at - self.quiet <= now < self.cancel_at + 1
        )

    def note_usage(self, dsn: str) -> None:
        """Read the period's usage once in the quiet stretch (retried while the database is
        away): what the final invoice must bill."""
        while self.usage_before is None:
            if time.time() >= self.cancel_at - self.quiet / 2:
                try:
                    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                        row = conn.execute(
                            "SELECT period_usage FROM active_series.relay_status"
                            " WHERE organization_id = %s",
                            (self.org.id,),
                        ).fetchone()
                    assert row is not None
                    self.usage_before = int(row[0])
                except psycopg.OperationalError:
                    pass
            time.sleep(0.2)

    def assert_billed_up_to_its_end(self, conn: psycopg.Connection[Any], emu: Emulator) -> None:
        """Nothing posted at or after the cancellation; its final invoice bills the period's
        usage before it, and the database finalized the period with that value."""
        assert self.usage_before is not None and self.usage_before > 0
        events = emu.events(self.customer)
        assert events and all(e["timestamp"] < self.cancel_at for e in events)
        state = emu.ctl.subscription_state(self.sub.id)
        assert state["subscription"]["status"] == "canceled"
        last = state["periods"][-1]
        assert (last["end"], last["invoiced"]) == (self.cancel_at, True)
        assert last["quantity"] == self.usage_before
        row = conn.execute(
            "SELECT finalized_at IS NOT NULL, billed_value,"
            " active_series.period_usage(organization_id, period_start)"
            " FROM active_series._period"
            " NATURAL LEFT JOIN active_series._relay_period"
            " WHERE organization_id = %s AND period_start < to_timestamp(%s)"
            " AND period_end >= to_timestamp(%s)",
            (self.org.id, self.cancel_at, self.cancel_at),
        ).fetchone()
        assert row is not None and row[:2] == (True, self.usage_before)
        assert row[2] > self.usage_before  # it reported after the cancellation too
