"""``active-series stripe setup`` against the emulator and a real database: it creates the
meter, the price, the customers and subscriptions once, finds them on the next run, refuses
what does not fit the worker, survives a crash between Stripe and the database, and leaves
the worker in sync. And the emulator's authentication, as Stripe's: Bearer or Basic."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import stripe
from active_series import billing_setup
from active_series.devtools import demo
from active_series.devtools.stripe_emulator import StripeEmulatorServer, run_in_thread
from active_series.errors import ExitCode
from oracle import ingest, make_org
from relay_harness import wait_until

API_KEY = "sk_test_setup_0123456789abcdef"


class Stripe:
    """The emulator on a thread, and a view of the objects it holds."""

    def __init__(self, server: StripeEmulatorServer, url: str) -> None:
        self.server = server
        self.url = url
        self.client = stripe.StripeClient(API_KEY, base_addresses={"api": url})

    @property
    def state(self) -> Any:
        return self.server.state

    def counts(self) -> dict[str, int]:
        s = self.state
        return {
            "meters": len(s.meters),
            "prices": len(s.prices),
            "products": len(s.products),
            "customers": len(s.customers),
            "subscriptions": len(s.subscriptions),
        }


@pytest.fixture
def emu() -> Iterator[Stripe]:
    server, url = run_in_thread(rate_limit=None, api_key=API_KEY)
    try:
        yield Stripe(server, url)
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str, key: str | None = API_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STRIPE_API_KEY", "DATABASE_URL")}
    if key is not None:
        env["STRIPE_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "active_series.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def setup(emu: Stripe, dsn: str, *extra: str, key: str | None = API_KEY) -> Any:
    return run("stripe", "setup", "--dsn", dsn, "--stripe-api-base", emu.url, *extra, key=key)


def linked(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str | None]]:
    rows = conn.execute(
        "SELECT organization_id, plan, stripe_customer_id FROM active_series.billing_account"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


# ---------------------------------------------------------------- the command


def test_setup_creates_once_then_finds_and_the_worker_gets_in_sync(conn, dsn, emu) -> None:
    acme, globex = make_org(conn, "acme"), make_org(conn, "globex")
    first = setup(emu, dsn, "--organization", str(acme.id), "--organization", str(globex.id))
    assert first.returncode == 0, first.stderr
    assert emu.counts() == {
        "meters": 1,
        "prices": 1,
        "products": 1,
        "customers": 2,
        "subscriptions": 2,
    }
    assert "6 Stripe object(s) created" in first.stdout
    [meter] = emu.state.meters.values()
    assert meter["event_name"] == "active_series"
    assert meter["default_aggregation"] == {"formula": "last"}
    assert meter["customer_mapping"]["event_payload_key"] == "stripe_customer_id"
    assert meter["value_settings"]["event_payload_key"] == "value"
    [price] = emu.state.prices.values()
    assert price["lookup_key"] == billing_setup.DEFAULT_LOOKUP_KEY
    assert (price["billing_scheme"], price["tiers_mode"]) == ("tiered", "graduated")
    assert price["recurring"]["meter"] == meter["id"]
    assert [(t["up_to"], t["unit_amount"], t["flat_amount"]) for t in price["tiers"]] == [
        (10, 0, 2900),
        (25, 100, None),
        (None, 50, None),
    ]
    links = linked(conn)
    assert {org: plan for org, (plan, _) in links.items()} == {acme.id: "pro", globex.id: "pro"}
    for org, (_, customer) in links.items():
        assert customer in emu.state.customers
        assert emu.state.customers[customer]["metadata"]["active_series_organization_id"] == str(
            org
        )
        subs = [s for s in emu.state.subscriptions.values() if s.obj["customer"] == customer]
        assert [s.obj["items"]["data"][0]["price"]["id"] for s in subs] == [price["id"]]

    again = setup(emu, dsn, "--organization", str(acme.id), "--organization", str(globex.id))
    assert again.returncode == 0, again.stderr
    assert emu.counts()["customers"] == 2 and emu.counts()["subscriptions"] == 2
    assert sum(emu.counts().values()) == 7  # nothing new
    assert "created" not in again.stdout
    assert "nothing to create: everything exists" in again.stdout
    assert f"meter {meter['id']} " in again.stdout and f"price {price['id']} " in again.stdout
    assert linked(conn) == links

    ingest(conn, acme, acme.testbeds[0], [(b, m) for b in acme.benchmarks for m in acme.measures])
    worker = run("worker", "--dsn", dsn, "--stripe-api-base", emu.url, "--once", "--debounce", "0")
    assert worker.returncode == 0, worker.stderr

    def in_sync() -> bool:
        status = run("relay", "status", "--dsn", dsn, "--json")
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)
        return len(rows) == 2 and all(r["in_sync"] for r in rows)

    wait_until(in_sync, 20, "relay status in_sync for both organizations")
    usage = {
        r["organization_id"]: r
        for r in json.loads(run("relay", "status", "--dsn", dsn, "--json").stdout)
    }
    assert usage[acme.id]["stripe_value"] == len(acme.benchmarks) * len(acme.measures)


def test_a_meter_that_does_not_fit_the_worker_is_refused(conn, dsn, emu) -> None:
    emu.client.v1.billing.meters.create(
        params={
            "display_name": "someone else's",
            "event_name": "active_series",
            "default_aggregation": {"formula": "sum"},
            "value_settings": {"event_payload_key": "count"},
        }
    )
    proc = setup(emu, dsn)
    assert proc.returncode == ExitCode.FAILURE, proc.stdout
    error = proc.stderr.strip()
    assert len(error.splitlines()) == 1
    assert "formula is sum, not last" in error
    assert "value key is count, not value" in error
    assert emu.counts()["meters"] == 1 and emu.counts()["prices"] == 0
    # another event name is free: the worker is told it with --meter-event-name
    other = setup(emu, dsn, "--meter-event-name", "active_series_v2")
    assert other.returncode == 0, other.stderr
    assert emu.counts()["meters"] == 2


def test_a_different_price_is_refused_unless_replaced_and_subscriptions_keep_theirs(
    conn, dsn, emu
) -> None:
    org = make_org(conn)
    assert setup(emu, dsn, "--organization", str(org.id)).returncode == 0
    [old] = emu.state.prices.values()
    cheaper = ["--tiers", "5:0+1900,inf:40"]
    refused = setup(emu, dsn, *cheaper)
    assert refused.returncode == ExitCode.FAILURE
    assert f"the price {old['id']} with lookup_key active_series_pro differs" in refused.stderr
    assert "its tiers are usd 1-10: 29.00 flat + 0.00 each" in refused.stderr
    assert emu.counts()["prices"] == 1

    replaced = setup(emu, dsn, *cheaper, "--replace-price")
    assert replaced.returncode == 0, replaced.stderr
    new = next(p for p in emu.state.prices.values() if p["id"] != old["id"])
    assert (new["lookup_key"], old["lookup_key"]) == ("active_series_pro", None)
    assert new["product"] == old["product"]
    [sub] = emu.state.subscriptions.values()
    assert sub.obj["items"]["data"][0]["price"]["id"] == old["id"]
    assert setup(emu, dsn, *cheaper).stdout.count("exists") >= 2


def test_customers_takes_the_billed_organizations_and_keeps_linked_customers(
    conn, dsn, emu
) -> None:
    team, linked_org, free = make_org(conn, "team"), make_org(conn, "linked"), make_org(conn, "f")
    conn.execute("SELECT active_series.set_stripe_customer(%s, NULL, 'team')", (team.id,))
    own = emu.client.v1.customers.create(params={"name": "made by the application"}).id
    conn.execute("SELECT active_series.set_stripe_customer(%s, %s, 'pro')", (linked_org.id, own))
    proc = setup(emu, dsn, "--customers")
    assert proc.returncode == 0, proc.stderr
    links = linked(conn)
    assert links[team.id][0] == "team" and links[team.id][1] is not None
    assert links[linked_org.id] == ("pro", own)
    assert free.id not in links
    assert emu.counts()["customers"] == 2  # the application's and the team's
    assert {s.obj["customer"] for s in emu.state.subscriptions.values()} == {
        links[team.id][1],
        own,
    }


def test_a_crash_between_stripe_and_the_database_creates_no_second_customer(conn, dsn, emu) -> None:
    org = make_org(conn)
    steps = billing_setup.Setup(emu.client, say=lambda line: None)
    installation = billing_setup.installation_id(conn)
    # the customer was created, the process died before set_stripe_customer
    made, created = steps.customer(org.id, "acme", installation)
    assert created and linked(conn) == {}
    # a rerun inside the idempotency window replays the same creation
    again, created_again = steps.customer(org.id, "acme", installation)
    assert (again, created_again) == (made, False)
    proc = setup(emu, dsn, "--organization", str(org.id))
    assert proc.returncode == 0, proc.stderr
    assert f"customer {made} found by its metadata" in proc.stdout
    assert linked(conn) == {org.id: ("pro", made)}
    assert emu.counts()["customers"] == 1


def test_linking_needs_the_admin_role_and_says_so_before_creating_anything(
    conn, dsn, emu, login
) -> None:
    org = make_org(conn)
    proc = setup(emu, login("worker"), "--organization", str(org.id))
    assert proc.returncode == ExitCode.DATABASE, proc.stderr
    assert "needs the active_series_admin role" in proc.stderr
    assert sum(emu.counts().values()) == 0
    admin = setup(emu, login("admin"), "--organization", str(org.id))
    assert admin.returncode == 0, admin.stderr
    assert linked(conn)[org.id][0] == "pro"


def test_setup_needs_a_key_and_refuses_unknown_organizations_and_bad_tiers(conn, dsn, emu) -> None:
    assert setup(emu, dsn, key=None).returncode == ExitCode.STRIPE_KEY
    wrong = setup(emu, dsn, key="sk_test_wrong_0000")
    assert wrong.returncode == ExitCode.STRIPE_KEY
    assert "Invalid API Key provided: sk_test_******0000" in wrong.stderr
    unknown = setup(emu, dsn, "--organization", "987654")
    assert unknown.returncode == ExitCode.NOT_FOUND
    assert "organization 987654 does not exist" in unknown.stderr
    for tiers in ("10:0,25:100", "10:0,5:1,inf:1", "ten:1,inf:1"):
        bad = setup(emu, dsn, "--tiers", tiers)
        assert bad.returncode == ExitCode.INPUT, (tiers, bad.stderr)
    assert sum(emu.counts().values()) == 0


def test_the_default_tiers_are_the_demos() -> None:
    assert billing_setup.DEFAULT_TIERS == demo.TIERS
    assert billing_setup.parse_tiers("10:0+2900,25:100,inf:50") == demo.TIERS


# ---------------------------------------------------------------- the emulator


def _get(url: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_emulator_takes_the_key_as_basic_auth_or_bearer_as_stripe_does(emu) -> None:
    url = emu.url + "/v1/customers"
    basic = base64.b64encode(f"{API_KEY}:".encode()).decode()
    assert _get(url, f"Basic {basic}") == (200, _get(url, f"Bearer {API_KEY}")[1])
    assert _get(url, f"Basic {basic}")[1]["object"] == "list"

    wrong = base64.b64encode(b"sk_test_wrong_key_9876:").decode()
    for header in (f"Basic {wrong}", "Bearer sk_test_wrong_key_9876"):
        status, body = _get(url, header)
        assert status == 401
        assert body == {
            "error": {
                "type": "invalid_request_error",
                "message": "Invalid API Key provided: sk_test_**********9876",
            }
        }
    for header in (None, "Basic !!!", "Token x"):
        status, body = _get(url, header)
        assert status == 401
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("You did not provide an API key.")


def test_the_emulator_lists_prices_by_lookup_key_and_moves_a_lookup_key(emu) -> None:
    c = emu.client
    meter = c.v1.billing.meters.create(
        params={"display_name": "m", "event_name": "e", "default_aggregation": {"formula": "last"}}
    )
    first = c.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 5,
            "product_data": {"name": "p"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "lookup_key": "k",
        }
    )
    with pytest.raises(stripe.InvalidRequestError, match="already uses that lookup key"):
        c.v1.prices.create(
            params={
                "currency": "usd",
                "unit_amount": 6,
                "product": first.product,
                "lookup_key": "k",
            }
        )
    second = c.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 6,
            "product": first.product,
            "lookup_key": "k",
            "transfer_lookup_key": True,
        }
    )
    assert [p.id for p in c.v1.prices.list(params={"lookup_keys": ["k"]}).data] == [second.id]
    assert c.v1.prices.retrieve(first.id).lookup_key is None
    metered = c.v1.prices.list(params={"recurring": {"meter": meter.id}}).data
    assert [p.id for p in metered] == [first.id]
    raw = _get(emu.url + "/v1/prices?lookup_keys[]=k", f"Bearer {API_KEY}")[1]
    assert [p["id"] for p in raw["data"]] == [second.id]


def test_the_emulator_searches_customers_by_metadata(emu) -> None:
    c = emu.client
    a = c.v1.customers.create(params={"name": "a", "metadata": {"org": "1", "db": "x"}})
    c.v1.customers.create(params={"name": "b", "metadata": {"org": "2", "db": "x"}})
    found = c.v1.customers.search(params={"query": "metadata['org']:'1' AND metadata['db']:'x'"})
    assert found.object == "search_result"
    assert [x.id for x in found.data] == [a.id]
    both = c.v1.customers.search(params={"query": "metadata['db']:'x'", "limit": 1})
    assert both.has_more and both.next_page
    with pytest.raises(stripe.InvalidRequestError, match="AND and OR"):
        c.v1.customers.search(params={"query": "name:'a' AND name:'b' OR name:'c'"})
    with pytest.raises(stripe.InvalidRequestError, match="Unsupported search query"):
        c.v1.customers.search(params={"query": "created>1"})


def test_backdate_bills_the_series_reported_before_the_subscription(conn, dsn, emu) -> None:
    early, late = make_org(conn, "early"), make_org(conn, "late")
    for org in (early, late):
        ingest(conn, org, org.testbeds[0], [(b, m) for b in org.benchmarks for m in org.measures])
    period = conn.execute(
        "SELECT extract(EPOCH FROM period_start)::bigint, extract(EPOCH FROM period_end)::bigint"
        " FROM active_series.current_period(%s)",
        (early.id,),
    ).fetchone()
    # Stripe's periods start on whole seconds: the late subscription must start in a second
    # after the activity's, or its period would hold activity of the same second
    time.sleep(1.0 - time.time() % 1.0 + 0.05)
    assert setup(emu, dsn, "--organization", str(early.id), "--backdate").returncode == 0
    assert setup(emu, dsn, "--organization", str(late.id)).returncode == 0
    item = {s.obj["customer"]: s.obj["items"]["data"][0] for s in emu.state.subscriptions.values()}
    links = linked(conn)
    backdated = item[links[early.id][1]]
    assert (backdated["current_period_start"], backdated["current_period_end"]) == period
    assert item[links[late.id][1]]["current_period_start"] > period[0]
    worker = run("worker", "--dsn", dsn, "--stripe-api-base", emu.url, "--once", "--debounce", "0")
    assert worker.returncode == 0, worker.stderr
    status = {
        r["organization_id"]: r
        for r in json.loads(run("relay", "status", "--dsn", dsn, "--json").stdout)
    }
    series = len(early.benchmarks) * len(early.measures)
    # the backdated subscription's period holds the series; the other starts empty
    assert (status[early.id]["period_usage"], status[early.id]["stripe_value"]) == (series, series)
    assert status[early.id]["in_sync"] and status[late.id]["in_sync"]
    assert status[late.id]["period_usage"] == 0


def test_an_organization_linked_to_a_customer_stripe_lacks_is_told_how_to_unlink(
    conn, dsn, emu
) -> None:
    acme = make_org(conn, "acme")
    conn.execute("SELECT active_series.set_stripe_customer(%s, 'cus_123', 'pro')", (acme.id,))
    out = setup(emu, dsn, "--organization", str(acme.id))
    assert out.returncode == ExitCode.FAILURE, out.stderr
    assert "linked to cus_123, which is unknown to this Stripe account" in out.stderr
    assert f"set_stripe_customer({acme.id}, NULL)" in out.stderr
    assert emu.counts()["customers"] == 0


def test_the_meter_reads_the_payload_keys_the_worker_is_told_to_send(conn, dsn, emu) -> None:
    keys = ("--meter-customer-key", "customer", "--meter-value-key", "series")
    first = setup(emu, dsn, *keys)
    assert first.returncode == 0, first.stderr
    [meter] = emu.state.meters.values()
    assert meter["customer_mapping"]["event_payload_key"] == "customer"
    assert meter["value_settings"]["event_payload_key"] == "series"
    again = setup(emu, dsn, *keys)
    assert again.returncode == 0 and "nothing to create" in again.stdout, again.stderr
    # the worker's defaults do not fit that meter: refused, saying which keys differ
    default = setup(emu, dsn)
    assert default.returncode == ExitCode.FAILURE
    assert "customer key is customer, not stripe_customer_id" in default.stderr
    assert "value key is series, not value" in default.stderr
