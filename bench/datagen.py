"""Set-based data generation for the read and backfill benchmarks (tracking trigger off).

Reports get explicit ``created`` times (``active_series.allow_explicit_created``, which needs a
superuser or ``active_series_admin``), so the data spans billing periods as real history does.
"""

from __future__ import annotations

import psycopg
from common import one, set_tracking

MEASURES_PER_BENCHMARK = 10
TESTBEDS = 10
BENCHMARKS_PER_REPORT = 100


def new_project(conn: psycopg.Connection, name: str) -> tuple[int, int]:
    """A fresh organization with one private project; returns (organization, project)."""
    org = one(
        conn, "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id", (name,)
    )
    project = one(
        conn,
        "INSERT INTO active_series.project (organization_id, name, visibility)"
        " VALUES (%s, %s, 'private') RETURNING id",
        (org, name),
    )
    return org, project


def entities(conn: psycopg.Connection, project: int, table: str, n: int) -> None:
    conn.execute(
        f"INSERT INTO active_series.{table} (project_id, name)"
        " SELECT %s, %s || '-' || i FROM generate_series(1, %s) AS i",
        (project, table, n),
    )


def series_org(conn: psycopg.Connection, series: int) -> int:
    """An organization with exactly ``series`` series active in the current calendar month.

    10 testbeds x series/100 benchmarks x 10 measures; one metric per series, in reports of
    100 benchmarks (1,000 metrics) of one testbed, created at random moments of the current
    month so far.  The tracking trigger must be off (the caller backfills afterwards).
    """
    if series % (TESTBEDS * MEASURES_PER_BENCHMARK):
        raise ValueError("series must be a multiple of 100")
    benchmarks = series // (TESTBEDS * MEASURES_PER_BENCHMARK)
    chunks = -(-benchmarks // BENCHMARKS_PER_REPORT)
    org, project = new_project(conn, f"reads-{series}")
    entities(conn, project, "testbed", TESTBEDS)
    entities(conn, project, "benchmark", benchmarks)
    entities(conn, project, "measure", MEASURES_PER_BENCHMARK)
    with conn.transaction():
        conn.execute("SET LOCAL active_series.allow_explicit_created = on")
        # the chunk of benchmarks a report carries is kept in start_time (seconds after epoch)
        conn.execute(
            """
            INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,
                created)
            SELECT t.project_id, t.id, 'epoch'::timestamptz + ch * interval '1 s',
                'epoch'::timestamptz + ch * interval '1 s', c.created
            FROM active_series.testbed AS t
            CROSS JOIN generate_series(0, %(chunks)s - 1) AS ch
            CROSS JOIN LATERAL (
                SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                    + (now() - (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
                    * (0.01 + 0.98 * random() + 0 * ch) AS created
            ) AS c
            WHERE t.project_id = %(project)s
            """,
            {"project": project, "chunks": chunks},
        )
        conn.execute(
            """
            INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
            SELECT r.id, b.id, 0
            FROM active_series.report AS r
            INNER JOIN (
                SELECT id, (row_number() OVER (ORDER BY id) - 1) / %(per)s AS chunk
                FROM active_series.benchmark WHERE project_id = %(project)s
            ) AS b ON b.chunk = extract(epoch FROM r.start_time)::bigint
            WHERE r.project_id = %(project)s
            """,
            {"project": project, "per": BENCHMARKS_PER_REPORT},
        )
        conn.execute(
            """
            INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
            SELECT rb.id, m.id, 1.0
            FROM active_series.report AS r
            INNER JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id
            CROSS JOIN active_series.measure AS m
            WHERE r.project_id = %(project)s AND m.project_id = %(project)s
            """,
            {"project": project},
        )
    return org


def history(
    conn: psycopg.Connection, metrics: int, *, orgs: int = 10, metrics_per_report: int = 600
) -> dict[str, int]:
    """Ingest history of ``metrics`` metrics over the last 90 days, spread over ``orgs``
    organizations: reports of 10 benchmarks x 60 measures (of 100 benchmarks, 60 measures,
    4 testbeds per project), as a continuous-benchmarking service accumulates them."""
    benchmarks_per_report = 10
    measures = metrics_per_report // benchmarks_per_report
    reports = -(-metrics // metrics_per_report)
    projects = []
    for i in range(orgs):
        _, project = new_project(conn, f"history-{i}")
        entities(conn, project, "testbed", 4)
        entities(conn, project, "benchmark", 100)
        entities(conn, project, "measure", measures)
        projects.append(project)
    set_tracking(conn, False)
    try:
        with conn.transaction():
            conn.execute("SET LOCAL active_series.allow_explicit_created = on")
            conn.execute(
                """
                INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,
                    created)
                SELECT p.project_id, t.id, c.created, c.created, c.created
                FROM generate_series(0, %(reports)s - 1) AS i
                CROSS JOIN LATERAL (
                    SELECT (%(projects)s::bigint[])[1 + i %% %(orgs)s] AS project_id
                ) AS p
                CROSS JOIN LATERAL (
                    SELECT id FROM active_series.testbed
                    WHERE project_id = p.project_id ORDER BY id OFFSET (i / %(orgs)s) %% 4 LIMIT 1
                ) AS t
                CROSS JOIN LATERAL (
                    SELECT now() - interval '90 days' * (1 - i::float8 / %(reports)s)
                        AS created
                ) AS c
                ORDER BY i
                """,
                {"reports": reports, "projects": projects, "orgs": orgs},
            )
            conn.execute(
                """
                INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
                SELECT r.id, b.id, 0
                FROM active_series.report AS r
                CROSS JOIN generate_series(0, %(per)s - 1) AS k
                CROSS JOIN LATERAL (
                    SELECT id FROM active_series.benchmark
                    WHERE project_id = r.project_id
                    ORDER BY id OFFSET (r.id * %(per)s + k) %% 100 LIMIT 1
                ) AS b
                ORDER BY r.id, k
                """,
                {"per": benchmarks_per_report},
            )
            conn.execute(
                """
                INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
                SELECT rb.id, m.id, random()
                FROM active_series.report_benchmark AS rb
                INNER JOIN active_series.report AS r ON r.id = rb.report_id
                INNER JOIN active_series.measure AS m ON m.project_id = r.project_id
                ORDER BY rb.id, m.id
                """
            )
    finally:
        set_tracking(conn, True)
    conn.execute("ANALYZE")
    return {
        "reports": reports,
        "metrics": int(one(conn, "SELECT count(*) FROM active_series.metric")),
        "organizations": orgs,
    }
