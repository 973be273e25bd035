"""Writing to schema ``app`` (active_series.devtools.app_schema), an application's own
schema, as the application does: ``create(conn)`` makes and attaches it; ``Org``/``ingest``
write to it with the application's own statements; ``oracle`` counts from its rows alone,
independently of everything the extension keeps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from active_series.devtools.app_schema import ATTACH, COLUMNS, DDL, TABLES, attach_app, create

__all__ = [
    "ATTACH",
    "COLUMNS",
    "DDL",
    "TABLES",
    "Org",
    "attach_app",
    "create",
    "ingest",
    "make_org",
    "one",
    "oracle",
]


@dataclass
class Org:
    id: int
    project: int
    testbeds: list[int] = field(default_factory=list)
    benchmarks: list[int] = field(default_factory=list)
    measures: list[int] = field(default_factory=list)


def make_org(
    conn: psycopg.Connection[Any],
    name: str,
    testbeds: int = 2,
    benchmarks: int = 3,
    measures: int = 2,
) -> Org:
    """An organization with one project and its testbeds, benchmarks and measures."""
    org_id = one(conn, "INSERT INTO app.orgs (display_name) VALUES (%s) RETURNING org_id", name)
    project = one(
        conn, "INSERT INTO app.projects (org_id, slug) VALUES (%s, %s) RETURNING id", org_id, name
    )
    org = Org(org_id, project)
    for i in range(testbeds):
        org.testbeds.append(
            one(
                conn,
                "INSERT INTO app.testbeds (proj, label) VALUES (%s, %s) RETURNING tb_id",
                project,
                f"tb{i}",
            )
        )
    for i in range(benchmarks):
        org.benchmarks.append(
            one(
                conn,
                "INSERT INTO app.benchmarks (proj, label) VALUES (%s, %s) RETURNING bench_id",
                project,
                f"bench{i}",
            )
        )
    for i in range(measures):
        org.measures.append(
            one(
                conn,
                "INSERT INTO app.measures (proj, units) VALUES (%s, %s) RETURNING measure_key",
                project,
                f"unit{i}",
            )
        )
    return org


def ingest(
    conn: psycopg.Connection[Any],
    org: Org,
    testbed: int,
    series: Sequence[tuple[int, int]],
    created: dt.datetime | None = None,
) -> int:
    """One run of ``(benchmark, measure)`` pairs on ``testbed``, as the application writes
    it: the run, a run_benchmark per benchmark, a result per measure (two for the first, a
    named lower bound: still one series). Returns the run's id."""
    with conn.transaction():
        if created is None:
            run = one(
                conn,
                "INSERT INTO app.runs (proj, tb, git_hash) VALUES (%s, %s, 'abc') RETURNING run_id",
                org.project,
                testbed,
            )
        else:
            run = one(
                conn,
                "INSERT INTO app.runs (proj, tb, created_at) VALUES (%s, %s, %s) RETURNING run_id",
                org.project,
                testbed,
                created,
            )
        by_bench: dict[int, list[int]] = {}
        for bench, measure in series:
            by_bench.setdefault(bench, []).append(measure)
        for bench, measures in by_bench.items():
            rb = one(
                conn,
                "INSERT INTO app.run_benchmarks (run, bench) VALUES (%s, %s) RETURNING rb",
                run,
                bench,
            )
            rows = [(rb, m, None, 1.0) for m in measures] + [(rb, measures[0], 0.5, 0.9)]
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO app.results (run_benchmark, measure, lower_value, v)"
                    " VALUES (%s, %s, %s, %s)",
                    rows,
                )
    return run


def oracle(conn: psycopg.Connection[Any], org: int, start: dt.datetime, end: dt.datetime) -> int:
    """Distinct (testbed, benchmark, measure) with a result in a run created in [start, end)
    of the organization's live projects, from the application's rows alone."""
    return one(
        conn,
        """
        SELECT count(DISTINCT (r.tb, rb.bench, x.measure))
        FROM app.results AS x
        JOIN app.run_benchmarks AS rb ON rb.rb = x.run_benchmark
        JOIN app.runs AS r ON r.run_id = rb.run
        JOIN app.projects AS p ON p.id = r.proj
        WHERE p.org_id = %s AND p.removed_at IS NULL
            AND r.created_at >= %s AND r.created_at < %s
        """,
        org,
        start,
        end,
    )


def one(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]
