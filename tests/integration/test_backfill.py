"""backfill() rebuilds exactly what the ingest trigger maintains; verify() finds what differs."""

from __future__ import annotations

import random
import uuid

import psycopg
import pytest
from oracle import (
    HISTORY_TABLES,
    STATE_QUERIES,
    Org,
    allow_explicit_created,
    assert_matches_oracle,
    ingest,
    make_org,
    make_project,
    make_report,
    make_report_benchmark,
    row_versions,
    state,
    utc,
    verify,
)
from psycopg import sql

DISABLE = "ALTER TABLE active_series.metric DISABLE TRIGGER active_series_metric_inserted"
ENABLE = "ALTER TABLE active_series.metric ENABLE TRIGGER active_series_metric_inserted"
TRUNCATE = (
    "TRUNCATE active_series._shape_seen, active_series._testbed_period, active_series._shape,"
    " active_series._period_usage, active_series._period, active_series._relay_period,"
    " active_series._outbox"
)
MONTHS = [utc(2024, 1, 5), utc(2024, 1, 28, 23, 59), utc(2024, 2, 1), utc(2024, 3, 15, 12)]


def fill(conn: psycopg.Connection, seed: int = 7) -> list[Org]:
    """Deterministic data over three organizations, four periods and every statement shape.

    Every report has an explicit ``created``, so two fresh databases filled by this function
    hold identical rows with identical ids."""
    rng = random.Random(seed)
    allow_explicit_created(conn)
    orgs = [
        make_org(conn, "acme", testbeds=3, benchmarks=4, measures=4),
        make_org(conn, "globex", testbeds=2, benchmarks=3, measures=3, visibility="public"),
        make_org(conn, "initech", testbeds=1, benchmarks=2, measures=2),
    ]
    second = make_project(conn, orgs[0].id, "second", "public")
    tb = one_entity(conn, "testbed", second)
    bm = one_entity(conn, "benchmark", second)
    ms = one_entity(conn, "measure", second)
    extra = Org(orgs[0].id, second, [tb], [bm], [ms])
    shapes = ["single", "values", "select", "copy"]
    # Out of period order on purpose: late arrivals for earlier periods.
    for created in [MONTHS[2], MONTHS[0], MONTHS[3], MONTHS[1], MONTHS[0]]:
        for org in [*orgs, extra]:
            for _ in range(2):
                pairs = [(b, m) for b in org.benchmarks for m in org.measures]
                chosen = rng.sample(pairs, rng.randint(1, len(pairs)))
                insert_report(
                    conn, org, rng.choice(org.testbeds), chosen, created, rng.choice(shapes)
                )
    conn.execute("UPDATE active_series.project SET deleted_at = now() WHERE id = %s", (second,))
    return orgs


def one_entity(conn: psycopg.Connection, table: str, project_id: int) -> int:
    query = sql.SQL("INSERT INTO {} (project_id, name) VALUES (%s, 'x') RETURNING id").format(
        sql.Identifier("active_series", table)
    )
    row = conn.execute(query, (project_id,)).fetchone()
    assert row is not None
    return row[0]


def insert_report(conn, org: Org, testbed: int, pairs, created, shape: str) -> None:
    report = make_report(conn, org.project_id, testbed, created)
    rbs = {b: make_report_benchmark(conn, report, b) for b in sorted({b for b, _ in pairs})}
    # A benchmark run twice in one report: the same series twice in one statement.
    again = make_report_benchmark(conn, report, pairs[0][0], 1)
    rows = [(rbs[b], m, 1.0) for b, m in pairs] + [(again, pairs[0][1], 2.0)]
    insert = "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
    if shape == "single":
        for row in rows:
            conn.execute(insert + " VALUES (%s, %s, %s)", row)
    elif shape == "values":
        conn.execute(
            insert + " VALUES " + ", ".join(["(%s, %s, %s)"] * len(rows)),
            [v for row in rows for v in row],
        )
    elif shape == "select":
        conn.execute(
            insert + " SELECT rb, ms, v FROM unnest(%s::bigint[], %s::bigint[], %s::float8[])"
            " AS u(rb, ms, v)",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
        )
    else:
        with conn.cursor().copy(
            "COPY active_series.metric (report_benchmark_id, measure_id, value) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)


def backfill(conn: psycopg.Connection) -> list[str]:
    """CALL backfill() on an autocommit connection; return its notices."""
    assert conn.autocommit
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("CALL active_series.backfill()")
    return notices


@pytest.fixture
def twin(pg_cluster, template_db):
    """The conninfo of a second fresh database cloned from the same template as ``dsn``."""
    name = f"active_series_twin_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        yield pg_cluster.dsn(name)
    finally:
        with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_backfill_of_a_database_filled_without_tracking_equals_the_tracked_twin(twin, dsn, connect):
    untracked = connect(autocommit=True)
    tracked = psycopg.connect(twin, autocommit=True)
    try:
        untracked.execute(DISABLE)
        orgs = fill(untracked)
        untracked.execute(ENABLE)
        assert state(untracked) == {t: [] for t in STATE_QUERIES}
        fill(tracked)

        notices = backfill(untracked)

        assert notices, "backfill reports progress"
        assert state(untracked) == state(tracked)
        for org in orgs:
            assert_matches_oracle(untracked, org.id)
        assert verify(untracked) == []
    finally:
        tracked.close()


def test_backfill_after_truncating_the_billing_tables_rebuilds_the_tracked_state(conn):
    orgs = fill(conn)
    tracked = state(conn)
    for org in orgs:
        assert_matches_oracle(conn, org.id)

    conn.execute(TRUNCATE)
    backfill(conn)

    assert state(conn) == tracked


def test_a_second_backfill_writes_no_row_version(conn):
    conn.execute(DISABLE)
    orgs = fill(conn)
    conn.execute(ENABLE)
    backfill(conn)
    before = state(conn)
    versions = {t: row_versions(conn, t) for t in HISTORY_TABLES}

    backfill(conn)

    assert state(conn) == before
    assert {t: row_versions(conn, t) for t in HISTORY_TABLES} == versions
    for org in orgs:
        assert_matches_oracle(conn, org.id)


def test_backfill_over_trigger_maintained_state_writes_no_row_version(conn):
    orgs = fill(conn)
    versions = {t: row_versions(conn, t) for t in HISTORY_TABLES}
    backfill(conn)
    assert {t: row_versions(conn, t) for t in HISTORY_TABLES} == versions
    assert_matches_oracle(conn, orgs[0].id)


# The organization's rows of _shape_seen, through its testbeds' histories.
ORG_SHAPE_SEEN = (
    "SELECT s.ctid FROM active_series._shape_seen AS s"
    " JOIN active_series._testbed_period AS t"
    " ON t.testbed_id = s.testbed_id AND t.period_start = s.period_start"
    " WHERE t.organization_id = %(org)s"
)

CORRUPTIONS = {
    # (A raised last_seen, or a lowered first_seen, is not a detectable corruption: deleting a
    # report never narrows the history, so a history wider than the remaining metrics is a
    # legitimate state.)
    "last_seen lowered": (
        "UPDATE active_series._shape_seen SET last_seen = last_seen - interval '1 second'"
        " WHERE ctid = (" + ORG_SHAPE_SEEN + " AND s.first_seen < s.last_seen - interval '1 second'"
        " ORDER BY s.last_seen DESC LIMIT 1)"
    ),
    "first_seen after a metric": (
        "UPDATE active_series._shape_seen SET first_seen = first_seen + interval '1 second'"
        " WHERE ctid = (" + ORG_SHAPE_SEEN + " AND s.first_seen < s.last_seen - interval '1 second'"
        " ORDER BY s.period_start, s.first_seen LIMIT 1)"
    ),
    "_period_usage count off by one": (
        "UPDATE active_series._period_usage SET series_count = series_count + 1"
        " WHERE ctid = (SELECT ctid FROM active_series._period_usage"
        " WHERE organization_id = %(org)s ORDER BY period_start LIMIT 1)"
    ),
    "history row missing": (
        "DELETE FROM active_series._shape_seen"
        " WHERE ctid = (" + ORG_SHAPE_SEEN + " ORDER BY s.period_start, s.first_seen LIMIT 1)"
    ),
}


def corrupt(conn: psycopg.Connection, statement: str, org_id: int) -> None:
    """Write one billing table behind the triggers' back (replica role skips any guard)."""
    conn.execute("SET session_replication_role = replica")
    try:
        cur = conn.execute(statement, {"org": org_id})
        assert cur.rowcount == 1
    finally:
        conn.execute("RESET session_replication_role")


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_verify_reports_a_corrupted_row_of_the_corrupted_organization_only(conn, corruption):
    orgs = fill(conn)
    assert verify(conn) == []

    corrupt(conn, CORRUPTIONS[corruption], orgs[0].id)

    problems = verify(conn)
    assert problems, "verify() found nothing"
    assert {p[0] for p in problems} == {orgs[0].id}
    assert all(p[1] for p in problems), "every problem is named"
    assert sorted(map(repr, verify(conn, orgs[0].id))) == sorted(map(repr, problems))
    assert verify(conn, orgs[1].id) == []


def test_verify_reports_a_sighting_without_its_testbed_history(conn):
    # (no foreign key holds a sighting to its history: the deletes of histories delete their
    # sightings, and verify() finds one left behind)
    orgs = fill(conn)
    corrupt(
        conn,
        "INSERT INTO active_series._shape_seen"
        " (testbed_id, period_start, shape_id, first_seen, last_seen)"
        " SELECT s.testbed_id, s.period_start - interval '100 years', s.shape_id,"
        " s.first_seen - interval '100 years', s.last_seen - interval '100 years'"
        " FROM (" + ORG_SHAPE_SEEN.replace("s.ctid", "s.*") + " LIMIT 1) AS s",
        orgs[0].id,
    )

    problems = verify(conn)
    assert [p[:2] for p in problems] == [(orgs[0].id, "sighting")]
    assert verify(conn, orgs[1].id) == []


def test_deleting_a_testbed_history_deletes_its_sightings(conn):
    orgs = fill(conn)
    before = conn.execute("SELECT count(*) FROM active_series._shape_seen").fetchone()[0]
    gone = conn.execute(
        "WITH d AS (DELETE FROM active_series._testbed_period WHERE organization_id = %s"
        " RETURNING testbed_id, period_start)"
        " SELECT count(*) FROM active_series._shape_seen AS s"
        " JOIN d ON d.testbed_id = s.testbed_id AND d.period_start = s.period_start",
        (orgs[0].id,),
    ).fetchone()[0]
    assert gone > 0
    after = conn.execute("SELECT count(*) FROM active_series._shape_seen").fetchone()[0]
    assert after == before - gone
    assert [p[1] for p in verify(conn, orgs[0].id) if p[1] == "sighting"] == []


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_backfill_repairs_a_corrupted_row(conn, corruption):
    orgs = fill(conn)
    tracked = state(conn)
    corrupt(conn, CORRUPTIONS[corruption], orgs[0].id)
    assert state(conn) != tracked

    backfill(conn)

    assert state(conn) == tracked
    assert verify(conn) == []


def test_backfill_after_a_report_delete_keeps_the_deleted_reports_activity(conn):
    org = make_org(conn, testbeds=1, benchmarks=2, measures=2)
    allow_explicit_created(conn)
    only_in_deleted = [(org.benchmarks[0], org.measures[0])]
    shared = [(org.benchmarks[1], org.measures[1])]
    deleted = ingest(conn, org, org.testbeds[0], only_in_deleted + shared, utc(2024, 1, 10))
    ingest(conn, org, org.testbeds[0], shared, utc(2024, 1, 20))
    ingest(conn, org, org.testbeds[0], shared, utc(2024, 2, 3))
    before = state(conn, org.id)
    series_jan = conn.execute(
        "SELECT * FROM active_series.period_series(%s, %s) ORDER BY 1, 2, 3, 4",
        (org.id, utc(2024, 1)),
    ).fetchall()
    assert len(series_jan) == 2

    conn.execute("DELETE FROM active_series.report WHERE id = %s", (deleted,))
    assert state(conn, org.id) == before
    backfill(conn)

    assert state(conn, org.id) == before
    assert conn.execute(
        "SELECT active_series.period_usage(%s, %s)", (org.id, utc(2024, 1))
    ).fetchone() == (2,)
    assert (
        conn.execute(
            "SELECT * FROM active_series.period_series(%s, %s) ORDER BY 1, 2, 3, 4",
            (org.id, utc(2024, 1)),
        ).fetchall()
        == series_jan
    )
    assert verify(conn, org.id) == []


def test_backfill_has_its_own_lock_class(conn, connect):
    """A transaction holding an organization's period lock (shared, as every ingest commit
    does) does not stop a backfill, whatever the organization's lock key (0 here: the key
    backfill takes in its own class); a second backfill is refused."""
    classes = conn.execute(
        "SELECT active_series._lock_key(n) FROM unnest("
        "ARRAY['period', 'period_creation', 'testbed_history', 'backfill']) AS n"
    ).fetchall()
    assert len({c for (c,) in classes}) == 4
    with pytest.raises(psycopg.errors.InternalError, match="no advisory lock named"):
        conn.execute("SELECT active_series._lock_key('nothing')")

    other = connect(autocommit=False)
    other.execute("SELECT pg_advisory_xact_lock_shared(active_series._lock_key('period'), 0)")
    try:
        backfill(conn)
    finally:
        other.rollback()

    other.execute("SELECT pg_advisory_lock(active_series._lock_key('backfill'), 0)")
    try:
        with pytest.raises(psycopg.errors.LockNotAvailable, match="another backfill"):
            backfill(conn)
    finally:
        other.execute("SELECT pg_advisory_unlock(active_series._lock_key('backfill'), 0)")
