"""The roles shipped with the extension: each can do its job and is refused the rest.

Every test logs in as a fresh LOGIN role that is a member of one group role
(``active_series_ingest``, ``active_series_worker``, ``active_series_admin``); those login
roles are dropped afterwards. The superuser connection (``conn``) sets up and checks.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import run_ok
from oracle import (
    BILLING_TABLES,
    Org,
    assert_matches_oracle,
    ingest,
    make_org,
    make_project,
    one,
    snapshot,
    utc,
)
from psycopg import sql
from psycopg.conninfo import make_conninfo
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    billing_periods,
    mismatches,
    quiescent,
    short_periods,
    wait_until,
    workers,
)
from test_ingest_shapes import SHAPES

GROUPS = ("ingest", "worker", "reader", "admin", "tenant")

#: Tables an ingest client must not write (the brief's list, plus the rest of the schema's
#: implementation tables).
PROTECTED_TABLES = (
    "_shape",
    "_shape_seen",
    "_testbed_period",
    "_period_usage",
    "_period",
    "_outbox",
    "billing_account",
    "_ledger",
    "_relay_state",
    "_pending",
    # a transaction marked here skips the cap and alert check: a client must not forge it
    "_rerecording",
    "_meta",
)

#: The SECURITY DEFINER functions, each with the reason its comment gives.
DEFINER_FUNCTIONS = {
    # the triggers attach makes on the application's tables (_attach_triggers)
    "_attached_metric_inserted()",
    "_attached_project_changed()",
    "_attached_benchmark_deleted()",
    "_attached_variant_deleted()",
    "_attached_measure_deleted()",
    "_attached_organization_deleted()",
    "_attached_project_deleted()",
    "_attached_testbed_deleted()",
    # refuses a report_benchmark of another project's benchmark; reads the model's views
    "_attached_report_benchmark_inserted()",
    "_flush_pending()",
    "_testbed_period_deleted()",
    # keeps _period.watched when the relay writes a price tier or an operator a cap or an alert
    "_watch_changed()",
    "set_billing_period(bigint,timestamp with time zone,timestamp with time zone)",
    # the relay's rules for a period's state: the worker writes _relay_period only through them
    "_relay_close_period(bigint,timestamp with time zone)",
    "_relay_finalize_period(bigint,timestamp with time zone,bigint)",
    "_relay_finalize_unbilled(bigint,timestamp with time zone,timestamp with time zone)",
    "_relay_note_drift(bigint[])",
    # the relay's ledger rules: the worker writes _ledger only through them
    "_relay_ledger_pending(bigint[],text[],timestamp with time zone[],timestamp with time zone[],"
    "bigint[],bigint[],double precision[])",
    "_relay_ledger_in_flight(text[],double precision[])",
    "_relay_ledger_outcomes(text[],boolean[],text[],text[])",
    "_relay_ledger_failed(bigint,text,timestamp with time zone,timestamp with time zone,bigint,"
    "bigint,text)",
    "_relay_ledger_refused(text[],text[])",
    # the relay's rules for an organization's state: the worker writes _relay_state only
    # through them (and _relay_work's missing rows)
    "_relay_done(bigint[],bigint[])",
    "_relay_defer(bigint[],double precision[])",
    "_relay_count_attempt(bigint)",
    "_relay_park(bigint,text)",
    # the posts each request carried: the worker writes _post_attempt only through them
    "_relay_note_attempts(text[],text[])",
    "_relay_prune_attempts()",
    # the read API of active_series_reader
    "period_usage(bigint,timestamp with time zone)",
    "periods(bigint)",
    "current_period(bigint)",
    "count_active(bigint,timestamp with time zone,timestamp with time zone,text)",
    "price_preview(bigint,timestamp with time zone)",
    "usage_summary(bigint)",
    # the read API of active_series_tenant: the connection's organization only
    "tenant_usage()",
    "tenant_period_usage(timestamp with time zone)",
    "tenant_periods()",
    "tenant_period_series(timestamp with time zone)",
    "tenant_price_preview(timestamp with time zone)",
    "tenant_usage_summary()",
    "tenant_alerts()",
}

#: Definer functions whose attribute (and the reason for it) sql/grants.sql sets after their
#: creation, until their own sources carry them.
PINNED_PATH = "search_path=active_series, pg_catalog, pg_temp"
#: What a definer function may set besides its path: the recorder's planner settings (index
#: paths, generic plans), never anything that changes what it reads or writes.
PLANNER_SETTINGS = {
    "enable_seqscan=off",
    "enable_bitmapscan=off",
    "plan_cache_mode=force_generic_plan",
}

Connect = Callable[..., psycopg.Connection[Any]]


@pytest.fixture
def as_role(login: Callable[[str | None], str]) -> Iterator[Callable[..., psycopg.Connection]]:
    """``as_role(group, **kwargs)`` -> a connection of a new member of that group."""
    opened: list[psycopg.Connection[Any]] = []

    def _connect(group: str | None, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        c = psycopg.connect(login(group), **kwargs)
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()


def refused(conn: psycopg.Connection[Any], statement: Any, params: Any = None) -> str:
    """Run a statement that must fail for lack of privilege; returns the error message."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        conn.execute(statement, params)
    return str(err.value)


# --- the roles ------------------------------------------------------------------------------


def test_the_group_roles_exist_and_cannot_log_in(conn):
    rows = conn.execute(
        "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
        " FROM pg_roles WHERE rolname LIKE 'active\\_series\\_%' ORDER BY 1"
    ).fetchall()
    assert rows == [
        (f"active_series_{g}", False, False, False, False, False) for g in sorted(GROUPS)
    ]


def test_installing_into_another_database_keeps_the_roles_that_exist(pg_cluster, conn):
    oids = dict(conn.execute("SELECT rolname, oid FROM pg_roles WHERE rolname LIKE 'active%'"))
    name = f"as_second_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        from active_series.install import install

        install(pg_cluster.dsn(name))
        assert (
            dict(conn.execute("SELECT rolname, oid FROM pg_roles WHERE rolname LIKE 'active%'"))
            == oids
        )
    finally:
        with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_nothing_in_the_schema_is_usable_by_a_role_of_no_group(conn, as_role):
    nobody = as_role(None)
    refused(nobody, "SELECT count(*) FROM active_series.organization")
    refused(nobody, "SELECT active_series.period_usage(1)")


def test_the_security_definer_functions_are_exactly_the_ingest_path_writers(conn):
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, pg_get_functiondef(p.oid),"
        " pg_get_userbyid(p.proowner)"
        " FROM pg_proc AS p WHERE p.pronamespace = 'active_series'::regnamespace"
        " AND p.prosecdef"
    ).fetchall()
    assert {r[0].removeprefix("active_series.") for r in rows} == DEFINER_FUNCTIONS
    extension_owner = one(
        conn,
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'active_series'",
    )
    for name, config, source, owner in rows:
        assert config[0] == PINNED_PATH, name
        assert set(config[1:]) <= PLANNER_SETTINGS, name
        assert "-- SECURITY DEFINER" in source, f"{name} does not say why it needs definer"
        assert owner == extension_owner, name


# --- ingest ---------------------------------------------------------------------------------


def build_org(c: psycopg.Connection[Any], name: str, n: int = 3) -> Org:
    """An organization built through the ingest contract by ``c`` (any role)."""
    org_id = one(
        c, "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id", (name,)
    )
    project = make_project(c, org_id, "p", "private")
    ids = {}
    for table in ("testbed", "benchmark", "measure"):
        ids[table] = [
            one(
                c,
                sql.SQL("INSERT INTO {} (project_id, name) VALUES (%s, %s) RETURNING id").format(
                    sql.Identifier("active_series", table)
                ),
                (project, f"{table}-{i}"),
            )
            for i in range(n)
        ]
    return Org(org_id, project, ids["testbed"], ids["benchmark"], ids["measure"])


def report_rows(c: psycopg.Connection[Any], org: Org, testbed: int, pairs) -> list[tuple]:
    """A report (server time) with report_benchmarks; the metric rows to insert into it."""
    report = one(
        c,
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
        " VALUES (%s, %s, pg_catalog.now(), pg_catalog.now()) RETURNING id",
        (org.project_id, testbed),
    )
    rbs: dict[int, int] = {}
    rows = []
    for bm, ms in pairs:
        if bm not in rbs:
            rbs[bm] = one(
                c,
                "INSERT INTO active_series.report_benchmark (report_id, benchmark_id)"
                " VALUES (%s, %s) RETURNING id",
                (report, bm),
            )
        rows.append((rbs[bm], ms, 1.0))
    return rows


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_an_ingest_client_ingests_with_every_statement_shape_and_is_counted(conn, as_role, shape):
    ingest_conn = as_role("ingest")
    org = build_org(ingest_conn, shape.__name__)
    pairs = [(b, m) for b in org.benchmarks for m in org.measures[:2]]
    shape(ingest_conn, report_rows(ingest_conn, org, org.testbeds[0], pairs))
    shape(ingest_conn, report_rows(ingest_conn, org, org.testbeds[1], pairs[:2]))

    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(pairs) + 2
    assert (
        one(
            conn, "SELECT count(*) FROM active_series._outbox WHERE organization_id = %s", (org.id,)
        )
        >= 1
    )
    assert_matches_oracle(conn, org.id)


def test_an_ingest_client_soft_deletes_restores_and_hard_deletes(conn, as_role):
    c = as_role("ingest")
    org = build_org(c, "deletes")
    rows = report_rows(
        c, org, org.testbeds[0], [(b, m) for b in org.benchmarks for m in org.measures]
    )
    c.execute(
        "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
        " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::float8[])",
        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
    )
    usage = "SELECT active_series.period_usage(%s)"
    assert one(conn, usage, (org.id,)) == 9

    outbox = "SELECT count(*) FROM active_series._outbox WHERE organization_id = %s"
    queued = one(conn, outbox, (org.id,))
    c.execute(
        "UPDATE active_series.project SET deleted_at = now() WHERE id = %s", (org.project_id,)
    )
    assert one(conn, usage, (org.id,)) == 0
    c.execute(
        "UPDATE active_series.project SET deleted_at = NULL, visibility = 'public' WHERE id = %s",
        (org.project_id,),
    )
    assert one(conn, usage, (org.id,)) == 9
    assert one(conn, outbox, (org.id,)) == queued + 2  # the relay was told both times

    # deleting a report never lowers the count; hard-deleting a measure or testbed does
    c.execute("DELETE FROM active_series.report WHERE project_id = %s", (org.project_id,))
    assert one(conn, usage, (org.id,)) == 9
    c.execute("DELETE FROM active_series.measure WHERE id = %s", (org.measures[0],))
    assert one(conn, usage, (org.id,)) == 6
    c.execute("DELETE FROM active_series.benchmark WHERE id = %s", (org.benchmarks[0],))
    assert one(conn, usage, (org.id,)) == 4
    assert conn.execute("SELECT * FROM active_series.verify(%s)", (org.id,)).fetchall() == []


def test_an_ingest_client_reports_on_branches_and_archives_and_is_still_counted(conn, as_role):
    c = as_role("ingest")
    org = build_org(c, "branches")
    branches = [
        one(
            c,
            "INSERT INTO active_series.branch (project_id, name) VALUES (%s, %s) RETURNING id",
            (org.project_id, name),
        )
        for name in ("main", "pr-1")
    ]
    pairs = [(b, m) for b in org.benchmarks[:2] for m in org.measures[:2]]
    for branch in [*branches, None]:
        report = one(
            c,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
            " branch_id) VALUES (%s, %s, now(), now(), %s) RETURNING id",
            (org.project_id, org.testbeds[0], branch),
        )
        for bm in org.benchmarks[:2]:
            rb = one(
                c,
                "INSERT INTO active_series.report_benchmark (report_id, benchmark_id)"
                " VALUES (%s, %s) RETURNING id",
                (report, bm),
            )
            SHAPES[0](c, [(rb, m, 1.0) for m in org.measures[:2]])
    # the same series reported on two branches and on none is one series
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(pairs)
    for table in ("testbed", "benchmark", "measure"):
        c.execute(
            sql.SQL("UPDATE {} SET archived = now() WHERE project_id = %s").format(
                sql.Identifier("active_series", table)
            ),
            (org.project_id,),
        )
    # archived entities that still report are counted
    SHAPES[0](c, report_rows(c, org, org.testbeds[0], [(org.benchmarks[2], org.measures[2])]))
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(pairs) + 1
    refused(c, "UPDATE active_series.testbed SET name = 'x'")
    # deleting a branch deletes its reports; it never lowers a count
    c.execute("DELETE FROM active_series.branch WHERE id = %s", (branches[1],))
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == len(pairs) + 1
    assert_matches_oracle(conn, org.id)


@pytest.fixture
def ingested(conn) -> Org:
    org = make_org(conn, "victim")
    conn.execute("SET active_series.allow_explicit_created = on")
    report = one(
        conn,
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time, created)"
        " VALUES (%s, %s, now(), now(), %s) RETURNING id",
        (org.project_id, org.testbeds[0], utc(2024, 5, 5)),
    )
    conn.execute("RESET active_series.allow_explicit_created")
    rb = one(
        conn,
        "INSERT INTO active_series.report_benchmark (report_id, benchmark_id) VALUES (%s, %s)"
        " RETURNING id",
        (report, org.benchmarks[0]),
    )
    conn.execute(
        "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
        " VALUES (%s, %s, 1)",
        (rb, org.measures[0]),
    )
    conn.execute("SELECT active_series.set_stripe_customer(%s, 'cus_victim')", (org.id,))
    conn.execute(
        "INSERT INTO active_series._ledger (organization_id, stripe_customer_id, period_start,"
        " period_end, value, event_timestamp, identifier, status)"
        " VALUES (%s, 'cus_victim', '2024-05-01Z', '2024-06-01Z', 1, 1715000000, 'as-x', 'sent')",
        (org.id,),
    )
    return org


def writes_to(table: str) -> list[sql.Composable]:
    ident = sql.Identifier("active_series", table)
    return [
        sql.SQL("INSERT INTO {} DEFAULT VALUES").format(ident),
        sql.SQL("UPDATE {} SET {} = {}").format(ident, *[sql.Identifier(first_column(table))] * 2),
        sql.SQL("DELETE FROM {}").format(ident),
        sql.SQL("TRUNCATE {}").format(ident),
    ]


def first_column(table: str) -> str:
    return {
        "_pending": "txid",
        "_rerecording": "txid",
        "_meta": "version",
        "_ledger": "value",
        "_shape": "project_id",
        "_shape_seen": "testbed_id",
    }.get(table, "organization_id")


@pytest.mark.parametrize("table", PROTECTED_TABLES)
def test_an_ingest_client_cannot_write_the_billing_tables(conn, as_role, ingested, table):
    c = as_role("ingest")
    before = snapshot(conn, BILLING_TABLES + ("billing_account", "_ledger", "_relay_state"))
    for statement in writes_to(table):
        assert table in refused(c, statement)
    refused(c, sql.SQL("SELECT * FROM {}").format(sql.Identifier("active_series", table)))
    assert snapshot(conn, BILLING_TABLES + ("billing_account", "_ledger", "_relay_state")) == before


def test_an_ingest_client_cannot_set_report_created_even_with_the_setting_on(
    conn, as_role, login, ingested
):
    insert = (
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time, created)"
        " VALUES (%s, %s, now(), now(), %s)"
    )
    c = as_role("ingest")
    c.execute("SET active_series.allow_explicit_created = on")
    before = snapshot(conn, BILLING_TABLES + ("report",))
    for created in (utc(2020, 1, 1), dt.datetime.now(dt.UTC) + dt.timedelta(days=40)):
        message = refused(c, insert, (ingested.project_id, ingested.testbeds[0], created))
        assert "created" in message
    # a superuser session that SET ROLE to the ingest role is judged as that role
    role = conninfo_user(login("ingest"))
    conn.execute("SET active_series.allow_explicit_created = on")
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        refused(conn, insert, (ingested.project_id, ingested.testbeds[0], utc(2020, 1, 1)))
    finally:
        conn.execute("RESET ROLE")
        conn.execute("RESET active_series.allow_explicit_created")
    assert snapshot(conn, BILLING_TABLES + ("report",)) == before


def conninfo_user(conninfo: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(conninfo)["user"])


def routines(conn: psycopg.Connection[Any], where: str) -> list[tuple[str, str]]:
    """(signature, a call of it with NULL arguments) of the schema's non-trigger routines."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.prokind, p.proname,"
        " coalesce(array_agg(format_type(t.oid, NULL) ORDER BY a.n)"
        "   FILTER (WHERE t.oid IS NOT NULL), '{}')"
        " FROM pg_proc AS p"
        " LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a (oid, n) ON true"
        " LEFT JOIN pg_type AS t ON t.oid = a.oid"
        " WHERE p.pronamespace = 'active_series'::regnamespace"
        " AND p.prorettype <> 'trigger'::regtype AND " + where + " GROUP BY p.oid ORDER BY 1"
    ).fetchall()
    out = []
    for signature, kind, name, types in rows:
        args = ", ".join(f"NULL::{t}" for t in types)
        verb = "CALL" if kind == "p" else "SELECT"
        out.append((signature, f"{verb} active_series.{name}({args})"))
    return out


def test_an_ingest_client_cannot_call_any_function_of_the_schema(conn, as_role, ingested):
    # internal functions, admin functions, and the read API (reading counts is the worker's
    # and the admin's; an ingest client reads the reference data model only)
    c = as_role("ingest")
    calls = routines(conn, "true")
    names = {signature.split("(")[0].removeprefix("active_series.") for signature, _ in calls}
    assert {
        "_record_activity",
        "_changed",
        "_period_for",
        "set_billing_period",
        "backfill",
        "verify",
        "relay_resume",
        "set_stripe_customer",
        "period_usage",
    } <= names
    before = snapshot(conn, BILLING_TABLES)
    for signature, call in calls:
        assert "permission denied for" in refused(c, call), signature
    assert snapshot(conn, BILLING_TABLES) == before


def test_a_worker_cannot_ingest_write_history_or_call_admin_functions(conn, as_role, ingested):
    w = as_role("worker")
    before = snapshot(conn, BILLING_TABLES)
    refused(w, "INSERT INTO active_series.organization (name) VALUES ('x')")
    refused(
        w,
        "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
        " VALUES (1, 1, 1)",
    )
    for table in (
        "_shape",
        "_shape_seen",
        "_testbed_period",
        "_period_usage",
        "billing_account",
        "_pending",
        "_meta",
    ):
        for statement in writes_to(table):
            refused(w, statement)
    refused(w, "INSERT INTO active_series._outbox (organization_id) VALUES (1)")
    refused(w, "UPDATE active_series._period SET period_end = period_end")
    refused(w, "UPDATE active_series._relay_state SET organization_id = organization_id")
    for signature, call in routines(
        conn,
        "(p.proname IN ('set_stripe_customer', 'verify', 'backfill', 'relay_resume',"
        " '_record_activity', '_changed', '_period_for', '_split_period', '_merge_periods',"
        " '_recount_period', '_record_groups', '_resolve_shapes', '_forget_series'))",
    ):
        assert "permission denied for" in refused(w, call), signature
    assert snapshot(conn, BILLING_TABLES) == before
    # what it may read
    assert one(w, "SELECT active_series.period_usage(%s, '2024-05-01Z')", (ingested.id,)) == 1
    assert w.execute("SELECT * FROM active_series.relay_status").fetchall() != []


# --- the worker, end to end -----------------------------------------------------------------

CLOSED = (
    "SELECT count(*) FROM active_series._relay_period WHERE organization_id = %s"
    " AND closed_at IS NOT NULL"
)
PARKED = (
    "SELECT count(*) FROM active_series.relay_failures WHERE organization_id = %s"
    " AND kind = 'parked'"
)


def settled(conn: psycopg.Connection[Any], parked: int) -> bool:
    """No outbox rows (but those of the parked organization) and no post in doubt."""
    return (
        one(
            conn,
            "SELECT (SELECT count(*) FROM active_series._outbox WHERE organization_id <> %s)"
            " + (SELECT count(*) FROM active_series._ledger WHERE status = 'pending')",
            (parked,),
        )
        == 0
    )


def test_the_relay_runs_end_to_end_as_a_worker_role(
    conn, as_role, login, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    admin = as_role("admin")
    ingest_conn = as_role("ingest")
    steady, short, refused_org = (build_org(ingest_conn, n) for n in ("steady", "short", "bad"))
    billed = {steady.id: emu.customer("steady"), short.id: emu.customer("short")}
    for org_id, customer in billed.items():
        admin.execute("SELECT active_series.set_stripe_customer(%s, %s)", (org_id, customer))
    admin.execute("SELECT active_series.set_stripe_customer(%s, 'cus_unknown')", (refused_org.id,))
    short_periods(admin, short.id, 4)  # periods end and close while it runs

    worker = WorkerProcess(
        login("worker"),
        emu.url,
        tmp_path / "worker.log",
        "--grace",
        "1",
        "--poll-interval",
        "0.5",
        "--retry-min",
        "0.2",
    )
    with workers(worker.start()):
        for i in range(5):
            for org in (steady, short, refused_org):
                pairs = [(b, m) for b in org.benchmarks[: 1 + i % 3] for m in org.measures]
                rows = report_rows(ingest_conn, org, org.testbeds[i % 3], pairs)
                SHAPES[i % len(SHAPES)](ingest_conn, rows)
            time.sleep(0.5)
        wait_until(
            lambda: (
                settled(conn, parked=refused_org.id)
                and not mismatches(conn, emu, billed)
                and one(conn, CLOSED, (short.id,)) >= 2
                and one(conn, PARKED, (refused_org.id,)) == 1
            ),
            60,
            "Stripe to hold every period's usage, closed periods and the parked organization",
        )
        assert worker.alive()
        # the admin fixes the customer and resumes; the worker relays it
        customer = emu.customer("bad")
        admin.execute(
            "SELECT active_series.set_stripe_customer(%s, %s)", (refused_org.id, customer)
        )
        assert one(admin, "SELECT active_series.relay_resume(%s)", (refused_org.id,)) is True
        billed[refused_org.id] = customer
        wait_until(lambda: quiescent(conn) and not mismatches(conn, emu, billed), 60, "resume")
        assert worker.alive()
    assert mismatches(conn, emu, billed) == []
    assert_increasing_timestamps(emu, billing_periods(conn, billed))
    assert "permission denied" not in worker.log()
    # and its commands on the command line
    for command in (["relay", "status"], ["relay", "failures"]):
        done = run_ok(
            [sys.executable, "-m", "active_series.cli", *command, "--dsn", login("worker")]
        )
        assert "permission denied" not in done.stdout + done.stderr, command


def test_a_worker_role_follows_the_stripe_subscription_period(
    conn, as_role, login, relay_emulator: Emulator, tmp_path: Path
):
    emu = relay_emulator
    org = build_org(as_role("ingest"), "subscribed")
    customer = emu.customer("subscribed")
    price = emu.metered_price(unit_amount=10)
    sub = emu.client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": price.id}],
            "metadata": {"emulator_period_seconds": "3600"},
        }
    )
    as_role("admin").execute("SELECT active_series.set_stripe_customer(%s, %s)", (org.id, customer))
    c = as_role("ingest")
    SHAPES[0](c, report_rows(c, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])]))
    worker = WorkerProcess(
        login("worker"), emu.url, tmp_path / "worker.log", "--poll-interval", "0.5", "--grace", "1"
    )
    with workers(worker.start()):
        wait_until(lambda: quiescent(conn) and emu.events(customer), 30, "the first post")
    item = sub["items"]["data"][0]
    got = conn.execute(
        "SELECT extract(EPOCH FROM period_start)::bigint, extract(EPOCH FROM period_end)::bigint"
        " FROM active_series.current_period(%s)",
        (org.id,),
    ).fetchone()
    assert got == (item["current_period_start"], item["current_period_end"])
    assert mismatches(conn, emu, {org.id: customer}) == []


# --- the reader -----------------------------------------------------------------------------

#: What active_series_reader may call, with the arguments the tests pass.
READER_CALLS = {
    "period_usage": "SELECT active_series.period_usage(%(org)s, '2024-05-01Z')",
    "periods": "SELECT * FROM active_series.periods(%(org)s)",
    "period_series": "SELECT * FROM active_series.period_series(%(org)s, '2024-05-01Z')",
    "count_active": (
        "SELECT active_series.count_active(%(org)s, '2024-05-01Z', '2024-06-01Z', 'private')"
    ),
    "current_period": "SELECT * FROM active_series.current_period(%(org)s)",
    "price_preview": (
        "SELECT period_start, period_end, active_series, amount, currency"
        " FROM active_series.price_preview(%(org)s, '2024-05-01Z')"
    ),
    "usage_summary": (
        "SELECT organization_id, plan, active_series, private_series, public_series,"
        " stripe_value, stripe_in_sync FROM active_series.usage_summary(%(org)s)"
    ),
    # the attached tables' rows under the views usage and alerts (the reader reads those
    # tables anyway: these add nothing to what it sees)
    "_organization_rows": "SELECT * FROM active_series._organization_rows() WHERE id = %(org)s",
    "_project_rows": (
        "SELECT * FROM active_series._project_rows() WHERE organization_id = %(org)s"
    ),
    "_variant_rows": "SELECT count(*) FROM active_series._variant_rows()",
}
READER_VIEWS = {
    "usage": "SELECT * FROM active_series.usage ORDER BY 1",
    # not the age of the oldest change: it grows between two reads
    "relay_status": (
        "SELECT organization_id, period_start, period_usage, stripe_value, in_sync, parked"
        " FROM active_series.relay_status ORDER BY 1"
    ),
    "alerts": "SELECT * FROM active_series.alerts ORDER BY 1",
}
DATA_MODEL = (
    "organization",
    "project",
    "testbed",
    "benchmark",
    "measure",
    "branch",
    "report",
    "report_benchmark",
    "metric",
)
#: Implementation tables of the application side (prices, alerts, the cap's watch rows).
APP_TABLES = ("_price", "_price_tier", "_alert_threshold", "_alert", "_period_watch")


def test_a_reader_calls_every_read_function_and_reads_the_views(conn, as_role, ingested):
    r = as_role("reader")
    args = {"org": ingested.id}
    for name, call in READER_CALLS.items():
        got = r.execute(call, args).fetchall()
        assert got == conn.execute(call, args).fetchall(), name
        assert got, name
    assert one(r, READER_CALLS["period_usage"], args) == 1
    assert one(r, READER_CALLS["count_active"], args) == 1
    assert r.execute(READER_CALLS["price_preview"], args).fetchone()[2] == 1
    for view, query in READER_VIEWS.items():
        assert r.execute(query).fetchall() == conn.execute(query).fetchall(), view
    assert r.execute(
        "SELECT active_series FROM active_series.usage WHERE organization_id = %s",
        (ingested.id,),
    ).fetchall()
    for table in DATA_MODEL:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("active_series", table))
        assert one(r, query) == one(conn, query), table


#: What the CLI's read commands read besides the read API: the installed version, what is
#: attached (its checks before it reads), and the relay's failures (`relay failures`).
READER_METADATA = ("_meta", "_attachment")


def test_a_reader_reads_what_the_cli_read_commands_need(conn, as_role, ingested):
    r = as_role("reader")
    for table in (*READER_METADATA, "relay_failures"):
        query = sql.SQL("SELECT * FROM {}").format(sql.Identifier("active_series", table))
        assert r.execute(query).fetchall() == conn.execute(query).fetchall(), table


def test_a_reader_writes_nothing_reads_no_billing_table_and_calls_nothing_else(
    conn, as_role, ingested
):
    r = as_role("reader")
    watched = BILLING_TABLES + ("billing_account", "_ledger", "_relay_state") + DATA_MODEL
    before = snapshot(conn, watched)
    for table in PROTECTED_TABLES + APP_TABLES:
        if table not in READER_METADATA:
            refused(r, sql.SQL("SELECT * FROM {}").format(sql.Identifier("active_series", table)))
        for statement in writes_to(table):
            assert table in refused(r, statement)
    for table in DATA_MODEL:
        ident = sql.Identifier("active_series", table)
        for statement in (
            sql.SQL("INSERT INTO {} DEFAULT VALUES").format(ident),
            sql.SQL("UPDATE {} SET id = id").format(ident),
            sql.SQL("DELETE FROM {}").format(ident),
            sql.SQL("TRUNCATE {}").format(ident),
        ):
            assert table in refused(r, statement)
    for view in ("relay_periods", "series_last_seen", "_count_drift"):
        refused(r, sql.SQL("SELECT * FROM {}").format(sql.Identifier("active_series", view)))
    calls = routines(conn, "true")
    allowed = {s for s, _ in calls if s.split("(")[0].split(".")[1] in READER_CALLS}
    assert len(allowed) == len(READER_CALLS)
    for signature, call in calls:
        if signature not in allowed:
            assert "permission denied for" in refused(r, call), signature
    assert snapshot(conn, watched) == before


#: The history period_series reads with its caller's rights (docs/roles.md).
READER_HISTORY_VIEWS = ("_read_testbed_period", "_read_shape_seen", "_read_shape")


def test_a_reader_reads_the_history_through_the_views_of_period_series(conn, as_role, ingested):
    other = second_organization(conn)
    r = as_role("reader")
    for view in READER_HISTORY_VIEWS:
        query = sql.SQL("SELECT * FROM {} ORDER BY 1, 2, 3").format(
            sql.Identifier("active_series", view)
        )
        assert r.execute(query).fetchall() == conn.execute(query).fetchall(), view
    assert {
        row[0]
        for row in r.execute("SELECT organization_id FROM active_series._read_testbed_period")
    } == {ingested.id, other.id}
    for org in (ingested, other):
        assert (
            r.execute(
                "SELECT * FROM active_series.period_series(%s) ORDER BY 1, 2, 3, 4", (org.id,)
            ).fetchall()
            == conn.execute(
                "SELECT * FROM active_series.period_series(%s) ORDER BY 1, 2, 3, 4", (org.id,)
            ).fetchall()
        )


def second_organization(conn: psycopg.Connection[Any]) -> Org:
    """Another organization, with a series, a Stripe customer, a cap and an alert."""
    other = make_org(conn, "other")
    ingest(conn, other, other.testbeds[0], [(other.benchmarks[0], other.measures[0])])
    conn.execute("SELECT active_series.set_stripe_customer(%s, 'cus_other')", (other.id,))
    conn.execute("SELECT active_series.set_alert(%s, 1)", (other.id,))
    ingest(conn, other, other.testbeds[1], [(other.benchmarks[1], other.measures[1])])
    return other


def test_the_plain_reader_sees_every_organization_and_the_data_model(conn, as_role, ingested):
    """What docs/roles.md says of active_series_reader: every organization's usage row with
    its Stripe customer, every alert, and the rows of the data model (metric included)."""
    other = second_organization(conn)
    r = as_role("reader")
    rows = r.execute(
        "SELECT organization_id, stripe_customer_id FROM active_series.usage ORDER BY 1"
    ).fetchall()
    assert rows == [(ingested.id, "cus_victim"), (other.id, "cus_other")]
    assert one(
        r, "SELECT count(*) FROM active_series.alerts WHERE organization_id = %s", (other.id,)
    )
    metrics = one(
        r,
        "SELECT count(DISTINCT p.organization_id) FROM active_series.metric AS m"
        " JOIN active_series.report_benchmark AS rb ON rb.id = m.report_benchmark_id"
        " JOIN active_series.report AS rp ON rp.id = rb.report_id"
        " JOIN active_series.project AS p ON p.id = rp.project_id",
    )
    assert metrics == 2
    assert one(r, "SELECT active_series.period_usage(%s)", (other.id,)) == 2


TENANT_CALLS = {
    # tenant function -> the same question asked of the reader's API for one organization
    "tenant_usage": (
        "SELECT * FROM active_series.tenant_usage()",
        "SELECT organization_id, organization_name, plan, period_start, period_end,"
        " active_series, private_series, public_series FROM active_series.usage"
        " WHERE organization_id = %(org)s",
    ),
    "tenant_period_usage": (
        "SELECT active_series.tenant_period_usage()",
        "SELECT active_series.period_usage(%(org)s)",
    ),
    "tenant_period_usage(start)": (
        "SELECT active_series.tenant_period_usage('2024-05-01Z')",
        "SELECT active_series.period_usage(%(org)s, '2024-05-01Z')",
    ),
    "tenant_periods": (
        "SELECT * FROM active_series.tenant_periods()",
        "SELECT * FROM active_series.periods(%(org)s)",
    ),
    "tenant_period_series": (
        "SELECT * FROM active_series.tenant_period_series()",
        "SELECT * FROM active_series.period_series(%(org)s)",
    ),
    "tenant_period_series(start)": (
        "SELECT * FROM active_series.tenant_period_series('2024-05-01Z')",
        "SELECT * FROM active_series.period_series(%(org)s, '2024-05-01Z')",
    ),
    "tenant_price_preview": (
        "SELECT * FROM active_series.tenant_price_preview()",
        "SELECT * FROM active_series.price_preview(%(org)s)",
    ),
    "tenant_usage_summary": (
        "SELECT organization_id, plan, active_series, series_cap, next_alert"
        " FROM active_series.tenant_usage_summary()",
        "SELECT organization_id, plan, active_series, series_cap, next_alert"
        " FROM active_series.usage_summary(%(org)s)",
    ),
    "tenant_alerts": (
        "SELECT * FROM active_series.tenant_alerts()",
        "SELECT id, period_start, period_end, threshold, series_count, source, created"
        " FROM active_series.alerts WHERE organization_id = %(org)s ORDER BY id",
    ),
}


def test_a_tenant_sees_the_organization_its_connection_names_and_no_other(conn, as_role, ingested):
    other = second_organization(conn)
    t = as_role("tenant")
    # nothing until the application names the organization
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        t.execute("SELECT * FROM active_series.tenant_usage()")
    assert err.value.diag.message_hint and "active_series.organization_id" in (
        err.value.diag.message_hint
    )
    seen: dict[int, dict[str, list[tuple]]] = {}
    for org in (ingested, other):
        t.execute("SELECT set_config('active_series.organization_id', %s, false)", (str(org.id),))
        seen[org.id] = {}
        for name, (tenant_call, reader_call) in TENANT_CALLS.items():
            got = t.execute(tenant_call).fetchall()
            assert got == conn.execute(reader_call, {"org": org.id}).fetchall(), name
            seen[org.id][name] = got
    # each organization's answers are its own (the second has two series and an alert)
    assert seen[ingested.id]["tenant_period_usage"] != seen[other.id]["tenant_period_usage"]
    assert seen[other.id]["tenant_alerts"] and not seen[ingested.id]["tenant_alerts"]
    assert {r[0] for r in seen[other.id]["tenant_usage"]} == {other.id}
    # another organization cannot be named through the reader's API, views or tables
    for statement in (
        f"SELECT active_series.period_usage({ingested.id})",
        f"SELECT * FROM active_series.usage_summary({ingested.id})",
        "SELECT * FROM active_series.usage",
        "SELECT * FROM active_series.alerts",
        "SELECT * FROM active_series.metric",
        "SELECT * FROM active_series.organization",
        "SELECT * FROM active_series.billing_account",
        "SELECT * FROM active_series._read_testbed_period",
        "SELECT * FROM active_series._read_shape_seen",
        "SELECT * FROM active_series._read_shape",
    ):
        assert "permission denied" in refused(t, statement), statement
    # an id that is no organization, or not an id
    t.execute("SET active_series.organization_id = '987654321'")
    with pytest.raises(psycopg.errors.NoDataFound):
        t.execute("SELECT active_series.tenant_period_usage()")
    t.execute("SET active_series.organization_id = 'acme'")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        t.execute("SELECT active_series.tenant_period_usage()")


def test_a_tenant_calls_nothing_but_the_tenant_functions(conn, as_role, ingested):
    t = as_role("tenant")
    t.execute(f"SET active_series.organization_id = {ingested.id}")
    calls = routines(conn, "true")
    allowed = {s for s, _ in calls if s.startswith("active_series.tenant_")}
    assert {s.split("(")[0].removeprefix("active_series.") for s in allowed} == {
        name.split("(")[0] for name in TENANT_CALLS
    }
    for signature, call in calls:
        if signature not in allowed:
            assert "permission denied for" in refused(t, call), signature


# --- the admin ------------------------------------------------------------------------------


def test_an_admin_does_what_operators_do(conn, as_role):
    a = as_role("admin")
    org = build_org(a, "operated")
    a.execute("SET active_series.allow_explicit_created = on")
    for created in (utc(2024, 1, 10), utc(2024, 2, 10)):
        report = one(
            a,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
            " created) VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (org.project_id, org.testbeds[0], created, created, created),
        )
        assert (
            one(a, "SELECT created FROM active_series.report WHERE id = %s", (report,)) == created
        )
        rb = one(
            a,
            "INSERT INTO active_series.report_benchmark (report_id, benchmark_id)"
            " VALUES (%s, %s) RETURNING id",
            (report, org.benchmarks[0]),
        )
        a.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " VALUES (%s, %s, 1)",
            (rb, org.measures[0]),
        )
    a.execute("RESET active_series.allow_explicit_created")
    a.execute("SELECT active_series.set_stripe_customer(%s, 'cus_operated', 'pro')", (org.id,))
    a.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (org.id, utc(2024, 1, 15), utc(2024, 2, 15)),
    )
    assert one(a, "SELECT active_series.period_usage(%s, %s)", (org.id, utc(2024, 1, 15))) == 1
    assert a.execute("SELECT * FROM active_series.verify(%s)", (org.id,)).fetchall() == []
    a.execute("CALL active_series.backfill(10)")
    assert a.execute("SELECT * FROM active_series.verify()").fetchall() == []
    assert one(a, "SELECT active_series.relay_resume(%s)", (org.id,)) is False
    assert a.execute(
        "SELECT * FROM active_series.usage WHERE organization_id = %s", (org.id,)
    ).fetchall()
    assert a.execute("SELECT * FROM active_series.relay_status").fetchall()
    assert a.execute("SELECT * FROM active_series.periods(%s)", (org.id,)).fetchall()
    refused(a, "TRUNCATE active_series._ledger")


# --- search_path attacks --------------------------------------------------------------------

PLANTS = """
CREATE SCHEMA {schema};
CREATE SEQUENCE {schema}.calls;
GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE {schema}.calls TO PUBLIC;
CREATE FUNCTION {schema}.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION {schema}.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION {schema}.txid_current() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN pg_catalog.txid_current(); END $$;
CREATE FUNCTION {schema}.hashint8(bigint) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN pg_catalog.hashint8($1); END $$;
CREATE FUNCTION {schema}.pg_notify(text, text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); END $$;
CREATE FUNCTION {schema}.pg_advisory_xact_lock_shared(integer, integer) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); END $$;
CREATE FUNCTION {schema}.pg_advisory_xact_lock(integer, integer) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); END $$;
CREATE FUNCTION {schema}.pg_has_role(name, text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN true; END $$;
CREATE FUNCTION {schema}.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN 'on'; END $$;
CREATE FUNCTION {schema}.cardinality(bigint[]) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN pg_catalog.cardinality($1); END $$;
CREATE FUNCTION {schema}.isfinite(timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN true; END $$;
CREATE FUNCTION {schema}.unnest(bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN QUERY SELECT pg_catalog.unnest($1);
END $$;
CREATE FUNCTION {schema}.agg_step(bigint[], bigint) RETURNS bigint[] LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN pg_catalog.array_append($1, $2);
END $$;
CREATE FUNCTION {schema}.seen_ts(timestamptz) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN $1; END $$;
CREATE AGGREGATE {schema}.array_agg(bigint) (SFUNC = {schema}.agg_step, STYPE = bigint[]);
CREATE AGGREGATE {schema}.max(timestamptz) (
    SFUNC = pg_catalog.timestamptz_larger, STYPE = timestamptz,
    FINALFUNC = {schema}.seen_ts
);
CREATE FUNCTION {schema}.eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR {schema}.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = {schema}.eq);
CREATE FUNCTION {schema}.lt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN $1 OPERATOR(pg_catalog.<) $2; END $$;
CREATE OPERATOR {schema}.< (LEFTARG = timestamptz, RIGHTARG = timestamptz,
    FUNCTION = {schema}.lt);
CREATE FUNCTION {schema}.gt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN $1 OPERATOR(pg_catalog.>) $2; END $$;
CREATE OPERATOR {schema}.> (LEFTARG = timestamptz, RIGHTARG = timestamptz,
    FUNCTION = {schema}.gt);
CREATE FUNCTION {schema}.cat(bigint[], bigint[]) RETURNS bigint[] LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.nextval('{schema}.calls'); RETURN pg_catalog.array_cat($1, $2); END $$;
CREATE OPERATOR {schema}.|| (LEFTARG = bigint[], RIGHTARG = bigint[], FUNCTION = {schema}.cat);
"""


def calls(conn: psycopg.Connection[Any], schema: str) -> int:
    last, called = conn.execute(
        sql.SQL("SELECT last_value, is_called FROM {}.calls").format(sql.Identifier(schema))
    ).fetchone()  # type: ignore[misc]
    return int(last) if called else 0


@pytest.fixture
def attacker(conn, login) -> tuple[str, str]:
    """(conninfo, schema) of an ingest client that planted shadows of pg_catalog functions and
    operators in a schema of its own; each records its call in <schema>.calls."""
    info = login("ingest")
    user = conninfo_user(info)
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(one(conn, "SELECT current_database()")), sql.Identifier(user)
        )
    )
    schema = f"evil_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(info, autocommit=True) as c:
        c.execute(PLANTS.replace("{schema}", schema))
        # the plants work: an unqualified call from this search_path reaches them
        c.execute(sql.SQL("SET search_path = {}, pg_catalog").format(sql.Identifier(schema)))
        c.execute("SELECT now(), 1::bigint = 1::bigint")
        assert calls(c, schema) == 2
        c.execute(sql.SQL("ALTER SEQUENCE {}.calls RESTART").format(sql.Identifier(schema)))
    return info, schema


def on_path(conninfo: str, schema: str) -> str:
    return make_conninfo(conninfo, options=f"-csearch_path={schema},pg_catalog,active_series")


def test_planted_functions_and_operators_are_never_called_by_definer_code_or_triggers(
    conn, as_role, login, attacker
):
    # The statements the test itself sends avoid the planted names (pg_catalog.now(), no
    # unnest of a bigint[]): every call counted comes from the extension's code.
    info, schema = attacker
    with psycopg.connect(on_path(info, schema), autocommit=True) as c:
        assert one(c, "SHOW search_path").startswith(schema)
        org = build_org(c, "attacked")
        pairs = [(b, m) for b in org.benchmarks for m in org.measures]
        for shape in SHAPES:
            if shape.__name__ != "insert_select":  # its unnest(bigint[]) is the client's own
                shape(c, report_rows(c, org, org.testbeds[0], pairs))
        c.execute("SET active_series.allow_explicit_created = on")
        refused(
            c,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
            " created) VALUES (%s, %s, pg_catalog.now(), pg_catalog.now(), '2020-01-01Z')",
            (org.project_id, org.testbeds[0]),
        )
        c.execute("RESET active_series.allow_explicit_created")
        c.execute("UPDATE active_series.project SET deleted_at = pg_catalog.now()")
        c.execute("UPDATE active_series.project SET deleted_at = NULL")
        c.execute("DELETE FROM active_series.measure WHERE id = %s", (org.measures[0],))
        c.execute("DELETE FROM active_series.testbed WHERE id = %s", (org.testbeds[1],))
        assert calls(c, schema) == 0
    # the other roles' definer and invoker functions, with the plants first on their path
    admin_info = on_path(login("admin"), schema)
    with psycopg.connect(admin_info, autocommit=True) as a:
        a.execute("SELECT active_series.set_stripe_customer(%s, 'cus_attacked')", (org.id,))
        a.execute(
            "SELECT active_series.set_billing_period(%s, pg_catalog.now() - interval '10 days',"
            " pg_catalog.now() + interval '20 days')",
            (org.id,),
        )
        assert a.execute("SELECT * FROM active_series.verify(%s)", (org.id,)).fetchall() == []
        a.execute("SELECT * FROM active_series.usage").fetchall()
        a.execute("SELECT active_series.count_active(%s, '-infinity', 'infinity')", (org.id,))
    with psycopg.connect(on_path(login("worker"), schema), autocommit=True) as w:
        w.execute(
            "SELECT active_series.set_billing_period(%s, pg_catalog.now() - interval '5 days',"
            " pg_catalog.now() + interval '25 days')",
            (org.id,),
        )
        w.execute("SELECT * FROM active_series._relay_work('1 second', '1 hour')").fetchall()
        w.execute("SELECT * FROM active_series.relay_status").fetchall()
    # period_series is inlined into its caller's query, parsed on the caller's search_path:
    # its operators, functions and types are the catalog's all the same (a second set of
    # testbed 0 overlaps its first, so both of its ways of listing series run)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[1])])
    series = (
        "SELECT testbed_id, benchmark_id, variant_id, measure_id, first_seen, last_seen"
        " FROM active_series.period_series(%s) ORDER BY 1, 2, 3, 4"
    )
    want = conn.execute(series, (org.id,)).fetchall()
    assert len(want) == 6
    for group in ("reader", "worker", "admin"):
        with psycopg.connect(on_path(login(group), schema), autocommit=True) as r:
            assert r.execute(series, (org.id,)).fetchall() == want, group
    assert calls(conn, schema) == 0
    assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []
    # 3 benchmarks x 3 measures, one measure hard-deleted; the deleted testbed had none
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 6
