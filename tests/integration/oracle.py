"""An independent oracle for the integration tests, and helpers to build and snapshot data.

The oracle recomputes everything from the reference data model (metric ⋈ report_benchmark ⋈
report ⋈ project) with plain SQL and Python; it never reads the billing tables, so it cannot
share a bug with the triggers.  Periods are calendar months in UTC (no billing account period is
set in the tests that use it).

The snapshot helpers read the billing tables directly, including each row's ``xmin`` and
``ctid``: two snapshots are equal only when no row version was written in between.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

SCHEMA = "active_series"

#: The tables the ingest trigger maintains.
BILLING_TABLES = (
    "_shape",
    "_shape_seen",
    "_testbed_period",
    "_period_usage",
    "_period",
    "_outbox",
)

#: The tables holding the history and the counts.
HISTORY_TABLES = ("_period", "_shape", "_shape_seen", "_testbed_period", "_period_usage")

#: The trigger-maintained state that a backfill must rebuild identically, by value: the
#: history unfolded per series (how it is grouped into sets, and the sets' surrogate keys, are
#: implementation details), each testbed's set of series per period, and the counts.
STATE_QUERIES = {
    "_period": "SELECT organization_id, period_start, period_end FROM active_series._period",
    "_series_history": (
        "SELECT organization_id, period_start, project_id, testbed_id, benchmark_id,"
        " variant_id, measure_id, first_seen, last_seen FROM active_series._series_history"
    ),
    "_testbed_period": (
        "SELECT t.organization_id, t.period_start, t.project_id, t.testbed_id,"
        " s.benchmark_ids, s.variant_ids, s.measure_ids"
        " FROM active_series._testbed_period AS t"
        " JOIN active_series._shape AS s ON s.id = t.shape_id"
    ),
    "_period_usage": (
        "SELECT organization_id, period_start, project_id, series_count"
        " FROM active_series._period_usage"
    ),
}

Series = tuple[int, int, int, int]  # (testbed_id, benchmark_id, variant_id, measure_id)


def month_start(ts: dt.datetime) -> dt.datetime:
    """The start of the calendar month in UTC that contains ``ts``."""
    u = ts.astimezone(dt.UTC)
    return dt.datetime(u.year, u.month, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------

# A report_benchmark without variant_id reports its benchmark's empty variant ({}); before
# 0.3.0 there were no variants (the variant is then NULL on both sides).
_VARIANT = """coalesce(rb.variant_id, (SELECT v.id FROM active_series.variant AS v
                                WHERE v.benchmark_id = rb.benchmark_id AND v.parameters = '{}'))"""
_ACTIVITY = """
SELECT p.id, r.testbed_id, rb.benchmark_id, {variant},
       m.measure_id, r.created, p.visibility, p.deleted_at IS NOT NULL
FROM active_series.metric AS m
JOIN active_series.report_benchmark AS rb ON rb.id = m.report_benchmark_id
JOIN active_series.report AS r ON r.id = rb.report_id
JOIN active_series.project AS p ON p.id = r.project_id
WHERE p.organization_id = %s
"""


@dataclass
class SeriesActivity:
    project_id: int
    visibility: str
    deleted: bool
    created: list[dt.datetime] = field(default_factory=list)


def has_variants(conn: psycopg.Connection) -> bool:
    """Whether the installed schema knows variants (0.3.0 and later)."""
    return one(conn, "SELECT to_regclass('active_series.variant') IS NOT NULL")


def _variant_column(conn: psycopg.Connection, column: str = "variant_id") -> str:
    return column if has_variants(conn) else "NULL::bigint"


def activity(conn: psycopg.Connection, org_id: int) -> dict[Series, SeriesActivity]:
    """Every series of the organization with the ``report.created`` of each of its metrics."""
    out: dict[Series, SeriesActivity] = {}
    query = _ACTIVITY.format(variant=_VARIANT if has_variants(conn) else "NULL::bigint")
    for project_id, tb, bm, vr, ms, created, visibility, deleted in conn.execute(query, (org_id,)):
        act = out.setdefault((tb, bm, vr, ms), SeriesActivity(project_id, visibility, deleted))
        act.created.append(created)
    return out


def period_series(
    conn: psycopg.Connection, org_id: int
) -> dict[dt.datetime, set[tuple[int, int, int, int, int, dt.datetime, dt.datetime]]]:
    """Per period start: (project, testbed, benchmark, variant, measure, first_seen, last_seen)
    of every series active in the period, soft-deleted projects excluded."""
    out: dict[dt.datetime, set] = defaultdict(set)
    for (tb, bm, vr, ms), act in activity(conn, org_id).items():
        if act.deleted:
            continue
        by_period: dict[dt.datetime, list[dt.datetime]] = defaultdict(list)
        for created in act.created:
            by_period[month_start(created)].append(created)
        for start, times in by_period.items():
            out[start].add((act.project_id, tb, bm, vr, ms, min(times), max(times)))
    return dict(out)


def period_usage(conn: psycopg.Connection, org_id: int) -> dict[dt.datetime, int]:
    """Per period start: the number of distinct series active in it."""
    return {start: len(rows) for start, rows in period_series(conn, org_id).items()}


def count_active(
    conn: psycopg.Connection,
    org_id: int,
    start: dt.datetime,
    end: dt.datetime,
    visibility: str | None = None,
) -> int:
    """Series whose greatest ``report.created`` lies in [start, end)."""
    return sum(
        1
        for act in activity(conn, org_id).values()
        if not act.deleted
        and (visibility is None or act.visibility == visibility)
        and start <= max(act.created) < end
    )


def last_seen(conn: psycopg.Connection, org_id: int) -> dict[Series, dt.datetime]:
    """Greatest ``report.created`` per series, soft-deleted projects included."""
    return {s: max(a.created) for s, a in activity(conn, org_id).items()}


# --------------------------------------------------------------------------------------------
# Reading the extension's public API
# --------------------------------------------------------------------------------------------


def api_period_usage(conn: psycopg.Connection, org_id: int, start: dt.datetime | None) -> int:
    row = conn.execute("SELECT active_series.period_usage(%s, %s)", (org_id, start)).fetchone()
    assert row is not None
    return row[0]


def api_period_series(
    conn: psycopg.Connection, org_id: int, start: dt.datetime | None
) -> set[tuple[int, int, int, int, int, dt.datetime, dt.datetime]]:
    return set(
        conn.execute(
            "SELECT project_id, testbed_id, benchmark_id, " + _variant_column(conn) + ","
            " measure_id, first_seen, last_seen FROM active_series.period_series(%s, %s)",
            (org_id, start),
        ).fetchall()
    )


def api_count_active(
    conn: psycopg.Connection,
    org_id: int,
    start: dt.datetime,
    end: dt.datetime,
    visibility: str | None = None,
) -> int:
    row = conn.execute(
        "SELECT active_series.count_active(%s, %s, %s, %s)", (org_id, start, end, visibility)
    ).fetchone()
    assert row is not None
    return row[0]


def recorded_periods(conn: psycopg.Connection, org_id: int) -> list[dt.datetime]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT period_start FROM active_series._period WHERE organization_id = %s"
            " ORDER BY period_start",
            (org_id,),
        )
    ]


def verify(conn: psycopg.Connection, org_id: int | None = None) -> list[tuple]:
    return conn.execute(
        "SELECT organization_id, problem, detail FROM active_series.verify(%s)", (org_id,)
    ).fetchall()


def assert_matches_oracle(conn: psycopg.Connection, org_id: int) -> None:
    """period_usage and period_series for every period (the oracle's and every recorded one),
    count_active over several windows, last_seen per series, and verify() all agree."""
    expected_series = period_series(conn, org_id)
    starts = set(expected_series) | set(recorded_periods(conn, org_id))
    assert starts, "the organization has no activity at all"
    for start in sorted(starts):
        want = expected_series.get(start, set())
        assert api_period_series(conn, org_id, start) == want, f"period_series at {start}"
        assert api_period_usage(conn, org_id, start) == len(want), f"period_usage at {start}"

    cache = dict(
        ((tb, bm, vr, ms), seen)
        for tb, bm, vr, ms, seen in conn.execute(
            "SELECT testbed_id, benchmark_id, " + _variant_column(conn) + ", measure_id, last_seen"
            " FROM active_series.series_last_seen WHERE organization_id = %s",
            (org_id,),
        )
    )
    assert cache == last_seen(conn, org_id), "series_last_seen"

    edges = sorted({month_start(t) for a in activity(conn, org_id).values() for t in a.created})
    far_past = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    far_future = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
    windows = [(far_past, far_future)] + [(start, _next_month(start)) for start in edges]
    for start, end in windows:
        for visibility in (None, "public", "private"):
            assert api_count_active(conn, org_id, start, end, visibility) == count_active(
                conn, org_id, start, end, visibility
            ), f"count_active {start}..{end} {visibility}"
    assert verify(conn, org_id) == []


def _next_month(start: dt.datetime) -> dt.datetime:
    return (start + dt.timedelta(days=32)).replace(day=1)


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------


def snapshot(conn: psycopg.Connection, tables: Iterable[str] = BILLING_TABLES) -> dict:
    """Every row (all columns, with ctid and xmin) of the given tables."""
    out = {}
    for table in tables:
        query = sql.SQL(
            "SELECT t.ctid::text, t.xmin::text, to_jsonb(t)::text FROM {} AS t ORDER BY 3, 1"
        ).format(sql.Identifier(SCHEMA, table))
        out[table] = conn.execute(query).fetchall()
    return out


def state(conn: psycopg.Connection, org_id: int | None = None) -> dict:
    """The trigger-maintained state by value (no row versions), optionally of one organization."""
    out = {}
    for name, query in STATE_QUERIES.items():
        where = sql.SQL("WHERE organization_id = {}").format(org_id) if org_id else sql.SQL("")
        out[name] = sorted(
            conn.execute(sql.SQL("SELECT * FROM ({}) AS q {}").format(sql.SQL(query), where))
        )
    return out


def row_versions(conn: psycopg.Connection, table: str, org_id: int | None = None) -> dict:
    """(ctid, xmin) of every row of the table keyed by the row's value (of one organization
    where the table has the column)."""
    scoped = org_id and table not in ("_shape", "_shape_seen")
    where = sql.SQL("WHERE t.organization_id = {}").format(org_id) if scoped else sql.SQL("")
    query = sql.SQL("SELECT to_jsonb(t)::text, t.ctid::text, t.xmin::text FROM {} AS t {}").format(
        sql.Identifier(SCHEMA, table), where
    )
    return {value: (ctid, xmin) for value, ctid, xmin in conn.execute(query)}


# --------------------------------------------------------------------------------------------
# Building data through the ingest contract
# --------------------------------------------------------------------------------------------


def one(conn: psycopg.Connection, query: str, params: Sequence | None = None):
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@dataclass
class Org:
    """An organization with one project and named testbeds, benchmarks and measures."""

    id: int
    project_id: int
    testbeds: list[int]
    benchmarks: list[int]
    measures: list[int]


def make_org(
    conn: psycopg.Connection,
    name: str = "acme",
    *,
    testbeds: int = 2,
    benchmarks: int = 3,
    measures: int = 3,
    visibility: str = "private",
) -> Org:
    org = one(
        conn, "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id", (name,)
    )
    project = make_project(conn, org, "p", visibility)
    return Org(
        org,
        project,
        make_entities(conn, "testbed", project, testbeds),
        make_entities(conn, "benchmark", project, benchmarks),
        make_entities(conn, "measure", project, measures),
    )


def make_project(conn: psycopg.Connection, org_id: int, name: str, visibility: str) -> int:
    return one(
        conn,
        "INSERT INTO active_series.project (organization_id, name, visibility)"
        " VALUES (%s, %s, %s) RETURNING id",
        (org_id, name, visibility),
    )


def make_entities(conn: psycopg.Connection, table: str, project_id: int, n: int) -> list[int]:
    query = sql.SQL("INSERT INTO {} (project_id, name) VALUES (%s, %s) RETURNING id").format(
        sql.Identifier(SCHEMA, table)
    )
    return [one(conn, query, (project_id, f"{table}-{i}")) for i in range(n)]


def make_report(
    conn: psycopg.Connection,
    project_id: int,
    testbed_id: int,
    created: dt.datetime | None = None,
) -> int:
    """A report; with ``created`` the session must allow explicit values."""
    if created is None:
        return one(
            conn,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
            " VALUES (%s, %s, now(), now()) RETURNING id",
            (project_id, testbed_id),
        )
    return one(
        conn,
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time, created)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (project_id, testbed_id, created, created, created),
    )


def make_report_benchmark(
    conn: psycopg.Connection,
    report_id: int,
    benchmark_id: int,
    iteration: int = 0,
    variant_id: int | None = None,
) -> int:
    """A report_benchmark; without ``variant_id`` (the ingest contract before variants) it
    reports the benchmark's empty variant."""
    if variant_id is None:
        return one(
            conn,
            "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
            " VALUES (%s, %s, %s) RETURNING id",
            (report_id, benchmark_id, iteration),
        )
    return one(
        conn,
        "INSERT INTO active_series.report_benchmark"
        " (report_id, benchmark_id, iteration, variant_id) VALUES (%s, %s, %s, %s) RETURNING id",
        (report_id, benchmark_id, iteration, variant_id),
    )


def make_variant(conn: psycopg.Connection, benchmark_id: int, parameters: str) -> int:
    return one(
        conn,
        "INSERT INTO active_series.variant (benchmark_id, parameters) VALUES (%s, %s) RETURNING id",
        (benchmark_id, parameters),
    )


def insert_metrics(conn: psycopg.Connection, rows: Sequence[tuple[int, int, float]]) -> None:
    """One multi-row INSERT … VALUES of (report_benchmark_id, measure_id, value)."""
    if not rows:
        return
    values = sql.SQL(", ").join(sql.SQL("(%s, %s, %s)") for _ in rows)
    conn.execute(
        sql.SQL(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value) VALUES {}"
        ).format(values),
        [v for row in rows for v in row],
    )


def ingest(
    conn: psycopg.Connection,
    org: Org,
    testbed_id: int,
    series: Iterable[tuple[int, int] | tuple[int, int | None, int]],
    created: dt.datetime | None = None,
) -> int:
    """One report of ``testbed_id`` with a metric for each (benchmark, measure), or
    (benchmark, variant or None, measure); returns its id.

    Runs in the connection's current transaction state (several statements)."""
    report = make_report(conn, org.project_id, testbed_id, created)
    rbs: dict[tuple[int, int | None], int] = {}
    rows = []
    for item in series:
        bm, vr, ms = item if len(item) == 3 else (item[0], None, item[1])
        if (bm, vr) not in rbs:
            rbs[bm, vr] = make_report_benchmark(conn, report, bm, variant_id=vr)
        rows.append((rbs[bm, vr], ms, 1.5))
    insert_metrics(conn, rows)
    return report


def record_now(conn: psycopg.Connection) -> None:
    """Record the transaction's activity now rather than at commit (still inside it)."""
    conn.execute("SET CONSTRAINTS active_series.pending_flush IMMEDIATE")


def allow_explicit_created(conn: psycopg.Connection) -> None:
    conn.execute("SET active_series.allow_explicit_created = on")


def utc(year: int, month: int, day: int = 1, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)
