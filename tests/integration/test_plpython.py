"""The optional PL/Python function against the Stripe emulator: stripe_reconcile compares
period_usage with the meter's event summary, and only reads (the worker is the only poster);
the key and base URL come from server-side settings."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from oracle import ingest, make_org
from psycopg import sql
from relay_harness import API_KEY, Emulator, bill, wait_until

pytestmark = pytest.mark.usefixtures("plpython")


def all_series(org: Any) -> list[tuple[int, int]]:
    return [(b, m) for b in org.benchmarks for m in org.measures]


@pytest.fixture
def plpython(conn: psycopg.Connection[Any], dsn: str) -> None:
    available = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'plpython3u')"
    ).fetchone()[0]
    if not available:
        pytest.skip("plpython3u is not installed on this server (postgresql-plpython3-15)")
    proc = subprocess.run(
        [sys.executable, "-m", "active_series.cli", "install", "--dsn", dsn, "--with-plpython"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stripe_reconcile installed" in proc.stdout


def configure(conn: psycopg.Connection[Any], api_base: str, key: str | None = API_KEY) -> None:
    """Server-side settings for this database (new sessions see them)."""
    db = sql.Identifier(conn.info.dbname)
    if key is not None:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET active_series.stripe_api_key = {}").format(
                db, sql.Literal(key)
            )
        )
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET active_series.stripe_api_base = {}").format(
            db, sql.Literal(api_base)
        )
    )


def reconcile(conn: psycopg.Connection[Any], org: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM active_series.stripe_reconcile(%s)", (org,))
    names = [c.name for c in cur.description or []]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def worker_once(dsn: str, api_base: str) -> None:
    """The worker posts what is due now and exits: the one way to post."""
    proc = subprocess.run(
        [sys.executable, "-m", "active_series.cli", "worker", "--dsn", dsn]
        + ["--stripe-api-base", api_base, "--once", "--debounce", "0"],
        env={**os.environ, "STRIPE_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_reconcile_compares_what_stripe_holds_with_period_usage(
    conn, connect, dsn, relay_emulator: Emulator
) -> None:
    emu = relay_emulator
    configure(conn, emu.url)
    org = make_org(conn)
    customer = emu.customer("acme")
    bill(conn, org.id, customer)
    ingest(conn, org, org.testbeds[0], all_series(org)[:3])
    admin = connect()  # a new session: it has the database's settings

    before = reconcile(admin, org.id)
    assert (before["period_usage"], before["stripe_value"], before["in_sync"]) == (3, 0, False)
    assert (before["stripe_customer_id"], before["meter_id"]) == (customer, emu.meter)

    worker_once(dsn, emu.url)
    start, end = admin.execute(
        "SELECT period_start, period_end FROM active_series.current_period(%s)", (org.id,)
    ).fetchone()
    wait_until(lambda: emu.last_value(customer, start, end) == 3, 10, "Stripe to hold 3")
    after = reconcile(admin, org.id)
    assert (after["period_usage"], after["stripe_value"], after["in_sync"]) == (3, 3, True)

    ingest(conn, org, org.testbeds[1], all_series(org)[3:5])
    changed = reconcile(admin, org.id)
    assert (changed["period_usage"], changed["stripe_value"], changed["in_sync"]) == (5, 3, False)
    # reconciling only reads: Stripe got no event from it
    assert [e["value"] for e in emu.events(customer)] == [3]
    # the key went in the Authorization header only, never into the database
    assert API_KEY not in str(admin.execute("SELECT * FROM active_series._ledger").fetchall())


def test_installing_the_plpython_function_drops_relay_now(conn, dsn) -> None:
    """0.3.0 shipped relay_now, a second poster beside the worker: installing now drops it."""
    conn.execute(
        "CREATE OR REPLACE FUNCTION active_series.relay_now(p_organization_id bigint)"
        " RETURNS text LANGUAGE sql AS $$ SELECT 'posted'::text $$"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "active_series.cli", "install", "--dsn", dsn, "--with-plpython"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert conn.execute("SELECT to_regprocedure('active_series.relay_now(bigint)')").fetchone() == (
        None,
    )


def test_errors_are_clear(conn, connect, relay_emulator: Emulator) -> None:
    emu = relay_emulator
    configure(conn, emu.url, key=None)
    org = make_org(conn)
    bill(conn, org.id, emu.customer())
    admin = connect()
    with pytest.raises(psycopg.Error, match="stripe_api_key is not set"):
        reconcile(admin, org.id)
    with pytest.raises(psycopg.errors.NoDataFound, match="organization 4242 does not exist"):
        reconcile(admin, 4242)
    unbilled = make_org(conn, "unbilled")
    admin.execute("SET active_series.stripe_api_key = 'sk_test_x'")
    with pytest.raises(psycopg.Error, match="has no Stripe customer"):
        reconcile(admin, unbilled.id)
    admin.execute("SET active_series.meter_event_name = 'no_such_meter'")
    with pytest.raises(psycopg.Error, match="no active meter for event name 'no_such_meter'"):
        reconcile(admin, org.id)
