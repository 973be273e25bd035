"""The optional PL/Python functions against the Stripe emulator: stripe_reconcile compares
period_usage with the meter's event summary, relay_now posts through the relay's ledger; the
key and base URL come from server-side settings."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from oracle import ingest, make_org
from psycopg import sql
from relay_harness import API_KEY, Emulator, bill

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
    assert "stripe_reconcile and relay_now installed" in proc.stdout


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


def relay_now(conn: psycopg.Connection[Any], org: int) -> str:
    return str(conn.execute("SELECT active_series.relay_now(%s)", (org,)).fetchone()[0])


def test_relay_now_posts_and_reconcile_sees_it(conn, connect, relay_emulator: Emulator) -> None:
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

    assert relay_now(admin, org.id).startswith("posted 3 ")
    start, end = admin.execute(
        "SELECT period_start, period_end FROM active_series.current_period(%s)", (org.id,)
    ).fetchone()
    assert emu.last_value(customer, start, end) == 3
    after = reconcile(admin, org.id)
    assert (after["stripe_value"], after["in_sync"]) == (3, True)
    ledger = admin.execute(
        "SELECT value, status FROM active_series._ledger WHERE organization_id = %s", (org.id,)
    ).fetchall()
    assert ledger == [(3, "sent")]
    assert relay_now(admin, org.id) == "in sync: Stripe holds 3"

    ingest(conn, org, org.testbeds[1], all_series(org)[3:5])
    time.sleep(1.1)  # one post per customer per second
    assert relay_now(admin, org.id).startswith("posted 5 ")
    assert reconcile(admin, org.id)["stripe_value"] == 5
    events = emu.events(customer)
    assert [e["value"] for e in events] == [3, 5]
    assert events[0]["timestamp"] < events[1]["timestamp"]
    # the key went in the Authorization header only, never into the database
    assert API_KEY not in str(admin.execute("SELECT * FROM active_series._ledger").fetchall())


def test_relay_now_leaves_a_busy_or_unbilled_organization_alone(
    conn, connect, relay_emulator: Emulator
) -> None:
    emu = relay_emulator
    configure(conn, emu.url)
    free = make_org(conn, "free")
    assert relay_now(connect(), free.id).startswith("not billed")
    org = make_org(conn, "busy")
    bill(conn, org.id, emu.customer("busy"))
    ingest(conn, org, org.testbeds[0], all_series(org)[:2])
    worker_like = connect(autocommit=False)
    worker_like.execute(
        "INSERT INTO active_series._relay_state (organization_id) VALUES (%s)"
        " ON CONFLICT DO NOTHING",
        (org.id,),
    )
    worker_like.commit()
    worker_like.execute(
        "SELECT FROM active_series._relay_state WHERE organization_id = %s FOR UPDATE", (org.id,)
    )
    assert relay_now(connect(), org.id).startswith("busy")
    worker_like.rollback()
    assert emu.events() == []
    assert relay_now(connect(), org.id).startswith("posted 2 ")


def test_errors_are_clear(conn, connect, relay_emulator: Emulator) -> None:
    emu = relay_emulator
    configure(conn, emu.url, key=None)
    org = make_org(conn)
    bill(conn, org.id, emu.customer())
    admin = connect()
    with pytest.raises(psycopg.Error, match="stripe_api_key is not set"):
        reconcile(admin, org.id)
    with pytest.raises(psycopg.errors.NoDataFound, match="organization 4242 does not exist"):
        relay_now(admin, 4242)
    unbilled = make_org(conn, "unbilled")
    admin.execute("SET active_series.stripe_api_key = 'sk_test_x'")
    with pytest.raises(psycopg.Error, match="has no Stripe customer"):
        reconcile(admin, unbilled.id)
    admin.execute("SET active_series.meter_event_name = 'no_such_meter'")
    with pytest.raises(psycopg.Error, match="no active meter for event name 'no_such_meter'"):
        reconcile(admin, org.id)
