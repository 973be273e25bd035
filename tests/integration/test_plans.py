"""The ingest trigger stays on index paths as tables grow, and writes no row it does not change."""

from __future__ import annotations

import re

import psycopg
import pytest
from oracle import (
    BILLING_TABLES,
    Org,
    allow_explicit_created,
    assert_matches_oracle,
    ingest,
    make_org,
    one,
    record_now,
    row_versions,
    utc,
)

FILL = """
SET active_series.allow_explicit_created = on;
ALTER TABLE active_series.metric DISABLE TRIGGER active_series_metric_inserted;
INSERT INTO active_series.testbed (project_id, name)
    SELECT %(project)s, 'tb-' || i FROM generate_series(1, 5) AS i;
INSERT INTO active_series.benchmark (project_id, name)
    SELECT %(project)s, 'bm-' || i FROM generate_series(1, 100) AS i;
INSERT INTO active_series.measure (project_id, name)
    SELECT %(project)s, 'ms-' || i FROM generate_series(1, 100) AS i;
-- 2,000 reports over ~3 months, 10 benchmarks each, 10 measures per benchmark: 200,000 metrics.
INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time, created)
    SELECT %(project)s, tb.ids[1 + i %% 5], t, t, t
    FROM generate_series(1, 2000) AS i,
         LATERAL (SELECT timestamptz '2024-01-01Z' + interval '1 hour' * i) AS ts(t),
         (SELECT array_agg(id ORDER BY id) FROM active_series.testbed
          WHERE project_id = %(project)s) AS tb(ids);
INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
    SELECT r.id, bm.ids[1 + (r.id * 7 + k) %% 100], 0
    FROM active_series.report AS r, generate_series(0, 9) AS k,
         (SELECT array_agg(id ORDER BY id) FROM active_series.benchmark
          WHERE project_id = %(project)s) AS bm(ids)
    WHERE r.project_id = %(project)s;
INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
    SELECT rb.id, ms.ids[1 + (rb.id * 13 + j) %% 100], j
    FROM active_series.report_benchmark AS rb
    JOIN active_series.report AS r ON r.id = rb.report_id,
         generate_series(0, 9) AS j,
         (SELECT array_agg(id ORDER BY id) FROM active_series.measure
          WHERE project_id = %(project)s) AS ms(ids)
    WHERE r.project_id = %(project)s;
ALTER TABLE active_series.metric ENABLE TRIGGER active_series_metric_inserted;
RESET active_series.allow_explicit_created;
"""

AUTO_EXPLAIN = """
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_analyze = off;
SET client_min_messages = log;
"""

SEQ_SCAN = re.compile(
    r"Seq Scan on (?:active_series\.)?"
    r"(report|report_benchmark|metric|variant|_shape|_shape_seen|_testbed_period)\b"
)


@pytest.fixture
def big(conn) -> Org:
    """An organization with 200,000 metrics, tracked by backfill, and fresh statistics."""
    org = make_org(conn, testbeds=0, benchmarks=0, measures=0)
    for statement in FILL.split(";\n"):
        if statement.strip():
            conn.execute(statement, {"project": org.project_id} if "%(" in statement else None)
    conn.execute("CALL active_series.backfill()")
    conn.execute("ANALYZE")
    for table, attr in [
        ("testbed", "testbeds"),
        ("benchmark", "benchmarks"),
        ("measure", "measures"),
    ]:
        ids = conn.execute(
            f"SELECT id FROM active_series.{table} WHERE project_id = %s ORDER BY id",
            (org.project_id,),
        ).fetchall()
        setattr(org, attr, [i for (i,) in ids])
    assert one(conn, "SELECT count(*) FROM active_series.metric") == 200_000
    return org


def test_the_ingest_trigger_never_scans_a_large_table_sequentially(conn, connect, big):
    ingester = connect(autocommit=True)
    plans: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "LOG":
            plans.append(diag.message_primary or "")

    ingester.add_notice_handler(collect)
    ingester.execute(AUTO_EXPLAIN)

    known = [(b, m) for b in big.benchmarks[:10] for m in big.measures[:60]]
    fresh_measures = conn.execute(
        "INSERT INTO active_series.measure (project_id, name)"
        " SELECT %s, 'fresh-' || i FROM generate_series(1, 60) AS i RETURNING id",
        (big.project_id,),
    ).fetchall()
    fresh = [(b, m) for b in big.benchmarks[10:20] for (m,) in fresh_measures]
    # Enough executions on one connection for PL/pgSQL to switch to generic plans.
    for series in [known, fresh, known, fresh, known, known, fresh, known]:
        ingest_by_unnest(ingester, big, series)

    trigger_plans = [p for p in plans if "_shape_seen" in p or "_testbed_period" in p]
    assert trigger_plans, "auto_explain logged no statement of the trigger"
    scans = sorted({m.group(0) for p in plans for m in SEQ_SCAN.finditer(p)})
    offending = [p for p in plans if SEQ_SCAN.search(p)]
    assert not scans, f"{scans} in:\n" + "\n\n".join(offending[:3])
    assert_matches_oracle(conn, big.id)


# Foreign-key checks: PostgreSQL's own statements, the same with tracking on or off.
RI_CHECK = re.compile(r"Query Text: SELECT 1 FROM ONLY ")
INDEX_SCAN = re.compile(
    r"(?:Index|Index Only) Scan(?: Backward)? using \w+ on (?:active_series\.)?"
    r"(report|report_benchmark|metric|variant|_shape|_shape_seen|_testbed_period)\b"
)


def whole_table_reads(plan: str) -> list[str]:
    """Sequential scans of the large tables, and index scans of them without a condition."""
    lines = plan.splitlines()
    found = [line.strip() for line in lines if SEQ_SCAN.search(line)]
    for i, line in enumerate(lines):
        if INDEX_SCAN.search(line):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if "Index Cond:" not in following:
                found.append(line.strip())
    return found


def test_plans_cached_while_the_tables_were_empty_stay_on_index_paths(conn, connect):
    # A new installation, or tables truncated: the statistics say empty, and a session
    # caches the trigger's plans at its first commit. They must not read whole tables
    # once the tables are large: no sequential scan anywhere, and no index scan without a
    # condition.
    org = make_org(conn, testbeds=2, benchmarks=3, measures=4)
    conn.execute(
        "VACUUM ANALYZE active_series.metric, active_series.report_benchmark,"
        " active_series.report, active_series.variant, active_series._shape,"
        " active_series._shape_seen, active_series._testbed_period"
    )
    ingester = connect(autocommit=True)
    plans: list[tuple[str, str]] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "LOG":
            plans.append((diag.message_primary or "", diag.context or ""))

    ingester.add_notice_handler(collect)
    ingester.execute(AUTO_EXPLAIN)

    everything = [(b, m) for b in org.benchmarks for m in org.measures]
    # first reports, the same again (the common case), a measure fewer (a new set)
    for series in [everything, everything, everything, everything[1:], everything]:
        with ingester.transaction():
            ingest(ingester, org, org.testbeds[0], series)

    ours = [(p, context) for p, context in plans if not RI_CHECK.search(p)]
    assert [p for p, _ in ours if "_shape_seen" in p], "auto_explain logged no trigger statement"
    offending = [p for p, _ in ours if SEQ_SCAN.search(p)]
    offending += [p for p, _ in ours if whole_table_reads(p)]
    assert not offending, "\n\n".join(offending[:3])
    assert_matches_oracle(conn, org.id)


def test_the_report_benchmark_project_check_is_part_of_its_triggers_plan(conn, connect):
    # The check runs on every insert of report_benchmarks, tracking on or off: the planner
    # inlines it into the trigger's query (no function call, no result set of its own), and
    # a benchmark of another project is still refused.
    org = make_org(conn, testbeds=1, benchmarks=3, measures=2)
    other = make_org(conn, "other", testbeds=1, benchmarks=1, measures=1)
    ingester = connect(autocommit=True)
    ingester.execute("SET track_functions = 'all'")
    with ingester.transaction():
        ingest(ingester, org, org.testbeds[0], [(b, org.measures[0]) for b in org.benchmarks])
        calls = one(
            ingester,
            "SELECT count(*) FROM pg_stat_xact_user_functions"
            " WHERE schemaname = 'active_series' AND funcname = '_benchmark_elsewhere'",
        )
    assert calls == 0
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="names benchmark"):
        ingest(ingester, org, org.testbeds[0], [(other.benchmarks[0], org.measures[0])])
    assert_matches_oracle(conn, org.id)


def ingest_by_unnest(conn: psycopg.Connection, org: Org, series) -> None:
    """One report of 600 metrics in one transaction; the metric insert reads only arrays."""
    with conn.transaction():
        report = one(
            conn,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
            " VALUES (%s, %s, now(), now()) RETURNING id",
            (org.project_id, org.testbeds[1]),
        )
        benchmarks = sorted({b for b, _ in series})
        rbs = dict(
            conn.execute(
                "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
                " SELECT %s, b, 0 FROM unnest(%s::bigint[]) AS b RETURNING benchmark_id, id",
                (report, benchmarks),
            ).fetchall()
        )
        conn.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " SELECT rb, ms, 1.0 FROM unnest(%s::bigint[], %s::bigint[]) AS u(rb, ms)",
            ([rbs[b] for b, _ in series], [m for _, m in series]),
        )


# --- no churn -------------------------------------------------------------------------------


def versions(conn: psycopg.Connection, org_id: int) -> dict:
    return {t: row_versions(conn, t, org_id) for t in BILLING_TABLES}


@pytest.fixture
def org(conn) -> Org:
    org = make_org(conn, testbeds=2, benchmarks=3, measures=4)
    allow_explicit_created(conn)
    return org


def test_a_report_dropping_measures_keeps_their_last_seen_apart(conn, org):
    everything = [(b, m) for b in org.benchmarks for m in org.measures]
    again = everything[:5]
    ingest(conn, org, org.testbeds[0], everything, utc(2024, 1, 5))
    before = versions(conn, org.id)

    ingest(conn, org, org.testbeds[0], again, utc(2024, 1, 6))

    after = versions(conn, org.id)
    for table in ("_testbed_period", "_period_usage", "_period", "_outbox"):
        assert after[table] == before[table], table
    rewritten = {
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT testbed_id, benchmark_id, measure_id FROM active_series.series_last_seen"
            " WHERE organization_id = %s AND last_seen = %s",
            (org.id, utc(2024, 1, 6)),
        )
    }
    assert rewritten == {(org.testbeds[0], b, m) for b, m in again}
    assert_matches_oracle(conn, org.id)


def test_an_older_report_inside_the_known_bounds_writes_nothing(conn, org):
    series = [(b, m) for b in org.benchmarks[:2] for m in org.measures]
    ingest(conn, org, org.testbeds[0], series, utc(2024, 1, 5))
    ingest(conn, org, org.testbeds[0], series, utc(2024, 1, 20))
    before = versions(conn, org.id)

    ingest(conn, org, org.testbeds[0], series, utc(2024, 1, 10))

    assert versions(conn, org.id) == before
    assert_matches_oracle(conn, org.id)


def test_a_second_statement_for_the_same_series_in_one_transaction_writes_nothing(
    conn, connect, org
):
    series = [(b, m) for b in org.benchmarks for m in org.measures[:2]]
    ingester = connect(autocommit=False)
    record_now(ingester)  # and after every later statement of this transaction
    ingest(ingester, org, org.testbeds[0], series)
    before = versions(ingester, org.id)
    assert before["_shape_seen"] and before["_testbed_period"]

    ingest(ingester, org, org.testbeds[0], series)  # another report, same transaction time
    ingest(ingester, org, org.testbeds[0], series[:3])

    assert versions(ingester, org.id) == before
    ingester.commit()
    assert_matches_oracle(conn, org.id)
