"""count_active and period_series are exact on the histories that take their slow paths.

count_active sizes each testbed's series seen since a bound from the sizes of its sets where
that is known (one set, the period's whole set, all of a period's sets, disjoint sets) and
unfolds the others; period_series unfolds disjoint sets as they are and groups overlapping
ones. Here every kind of testbed is present at once: a single set reported repeatedly,
disjoint parts, overlapping sets (the whole suite, a half, a quarter) with variants, activity
in two periods, a second project (public) and a soft-deleted one; and count_active is asked
about every window between the report times (each cuts some testbed's sets), against the
oracle's recomputation from the metrics.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from oracle import (
    Org,
    activity,
    allow_explicit_created,
    api_period_series,
    ingest,
    make_entities,
    make_org,
    make_project,
    make_variant,
    period_series,
    utc,
)

NOV = utc(2026, 11)
DEC = utc(2026, 12)
JAN = utc(2027, 1)


def _hours(start: dt.datetime, *hours: int) -> list[dt.datetime]:
    return [start + dt.timedelta(hours=h) for h in hours]


@pytest.fixture
def history(conn) -> Org:
    org = make_org(conn, "reads", testbeds=5, benchmarks=8, measures=3)
    allow_explicit_created(conn)
    b, m, t = org.benchmarks, org.measures, org.testbeds
    empty = make_variant(conn, b[0], "{}")
    cold = make_variant(conn, b[0], '{"mode": "cold"}')

    def suite(benchmarks: list[int]) -> list[tuple[int, int | None, int]]:
        return [(x, None, y) for x in benchmarks for y in m]

    # t0: one set, reported again and again (one _shape_seen row per period)
    for at in _hours(NOV, 5, 50) + _hours(DEC, 3, 40, 90):
        ingest(conn, org, t[0], suite(b[:4]), at)
    # t1: disjoint parts at different times (and one part twice)
    for part, at in zip((b[:3], b[3:6], b[6:], b[:3]), _hours(DEC, 2, 30, 60, 100), strict=True):
        ingest(conn, org, t[1], suite(part), at)
    # t2: overlapping sets (the whole suite, its first half, a quarter), with variants: the
    # empty one named and not, another one
    whole = [*suite(b), (b[0], empty, m[1]), (b[0], cold, m[0]), (b[0], cold, m[2])]
    for series, at in (
        (whole, DEC + dt.timedelta(hours=10)),
        (suite(b[:4]) + [(b[0], cold, m[0])], DEC + dt.timedelta(hours=70)),
        (suite(b[6:]), DEC + dt.timedelta(hours=45)),
        (suite(b[4:6]), DEC + dt.timedelta(hours=110)),
        (suite(b[3:5]), DEC + dt.timedelta(hours=120)),
    ):
        ingest(conn, org, t[2], series, at)
    # t3: overlapping sets in two periods (the same series in both)
    for series, at in (
        (suite(b[:5]), NOV + dt.timedelta(hours=20)),
        (suite(b[2:7]), NOV + dt.timedelta(hours=80)),
        (suite(b[1:3]), DEC + dt.timedelta(hours=25)),
        (suite(b[2:4]), DEC + dt.timedelta(hours=65)),
    ):
        ingest(conn, org, t[3], series, at)
    # t4: a single report
    ingest(conn, org, t[4], suite(b[5:7]), DEC + dt.timedelta(hours=55))

    # a public project: the whole suite and a half of it, overlapping
    public = make_project(conn, org.id, "public", "public")
    pt = make_entities(conn, "testbed", public, 1)[0]
    pb = make_entities(conn, "benchmark", public, 4)
    pm = make_entities(conn, "measure", public, 2)
    other = Org(org.id, public, [pt], pb, pm)
    ingest(conn, other, pt, [(x, None, y) for x in pb for y in pm], DEC + dt.timedelta(hours=35))
    ingest(
        conn, other, pt, [(x, None, y) for x in pb[:2] for y in pm], DEC + dt.timedelta(hours=95)
    )

    # a soft-deleted project, active in the same windows
    gone = make_project(conn, org.id, "gone", "private")
    gt = make_entities(conn, "testbed", gone, 1)[0]
    gb = make_entities(conn, "benchmark", gone, 2)
    gm = make_entities(conn, "measure", gone, 2)
    deleted = Org(org.id, gone, [gt], gb, gm)
    for at in _hours(DEC, 15, 75):
        ingest(conn, deleted, gt, [(x, None, y) for x in gb for y in gm], at)
    conn.execute("UPDATE active_series.project SET deleted_at = now() WHERE id = %s", (gone,))
    return org


def _bounds(conn, org: Org) -> list[dt.datetime]:
    """Every report time, a microsecond either side, the month starts, and far away."""
    times = {
        t
        for (created,) in conn.execute(
            "SELECT DISTINCT r.created FROM active_series.report AS r"
            " JOIN active_series.project AS p ON p.id = r.project_id"
            " WHERE p.organization_id = %s",
            (org.id,),
        )
        for t in (
            created - dt.timedelta(microseconds=1),
            created,
            created + dt.timedelta(microseconds=1),
        )
    }
    return sorted(times | {NOV, DEC, JAN, utc(1990, 1), utc(2200, 1)})


def test_count_active_is_exact_on_every_window_that_cuts_the_sets(conn, history):
    acts = activity(conn, history.id)
    bounds = _bounds(conn, history)
    windows = [(a, b) for i, a in enumerate(bounds) for b in bounds[i:]]
    got = {
        (f, t, v): n
        for f, t, v, n in conn.execute(
            "SELECT w.f, w.t, v.vis, active_series.count_active(%s, w.f, w.t, v.vis)"
            " FROM unnest(%s::timestamptz[], %s::timestamptz[]) AS w (f, t)"
            " CROSS JOIN (VALUES (NULL), ('public'), ('private')) AS v (vis)",
            (history.id, [w[0] for w in windows], [w[1] for w in windows]),
        )
    }
    assert len(got) == 3 * len(windows)
    nonzero = 0
    for (f, t, visibility), n in got.items():
        want = sum(
            1
            for a in acts.values()
            if not a.deleted
            and (visibility is None or a.visibility == visibility)
            and f <= max(a.created) < t
        )
        assert n == want, f"count_active {f}..{t} {visibility}"
        nonzero += want > 0
    assert nonzero > len(windows)  # the windows do count series, of both visibilities


@pytest.mark.parametrize("start", [NOV, DEC])
def test_period_series_is_exact_with_overlapping_and_disjoint_sets(conn, history, start):
    want = period_series(conn, history.id)[start]
    got = api_period_series(conn, history.id, start)
    assert got == want
    # one row per series: no series comes twice (from two of its testbed's sets)
    rows = conn.execute(
        "SELECT testbed_id, benchmark_id, variant_id, measure_id"
        " FROM active_series.period_series(%s, %s)",
        (history.id, start),
    ).fetchall()
    assert len(rows) == len(set(rows)) == len(want)


def test_period_series_names_the_empty_variant_and_keeps_its_columns(conn, history):
    b, m = history.benchmarks, history.measures
    cur = conn.execute(
        "SELECT * FROM active_series.period_series(%s, %s) WHERE testbed_id = %s",
        (history.id, DEC, history.testbeds[2]),
    )
    assert [c.name for c in cur.description] == [
        "project_id",
        "testbed_id",
        "benchmark_id",
        "variant_id",
        "measure_id",
        "first_seen",
        "last_seen",
    ]
    rows = cur.fetchall()
    empty, cold = (
        conn.execute(
            "SELECT id FROM active_series.variant WHERE benchmark_id = %s AND parameters = %s",
            (b[0], parameters),
        ).fetchone()[0]
        for parameters in ("{}", '{"mode": "cold"}')
    )
    first = sorted((r[3], r[4]) for r in rows if r[2] == b[0])
    # reported without a variant and with the empty one named: one series each, the empty
    # variant's id; the other variant's series of its own
    assert first == sorted([(empty, y) for y in m] + [(cold, m[0]), (cold, m[2])])
    assert len(rows) == len({r[2:5] for r in rows}) == len(b) * len(m) + 2


def test_period_series_is_inlined_into_the_callers_query(conn, history):
    # a set-returning function that is not inlined stores all its rows before the first
    # reaches the caller (a Function Scan); inlined, its query is the caller's
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN (VERBOSE, COSTS OFF) SELECT count(*) FROM active_series.period_series(%s, %s)",
            (history.id, DEC),
        ).fetchall()
    )
    assert "period_series" not in plan
    assert "_read_testbed_period" not in plan  # (views are planned as their tables)
    assert "_testbed_period" in plan


@pytest.mark.parametrize("start", [None, DEC])
def test_period_series_of_an_unknown_organization_raises_with_or_without_a_period(
    conn, history, start
):
    missing = history.id + 1000
    with pytest.raises(psycopg.errors.NoDataFound, match=f"organization {missing} does not"):
        conn.execute("SELECT * FROM active_series.period_series(%s, %s)", (missing, start))
    conn.rollback()
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute("SELECT count(*) FROM active_series.period_series(NULL, %s)", (start,))
    conn.rollback()


def test_period_series_without_a_period_reads_the_current_one(conn, history):
    ingest(conn, history, history.testbeds[3], [(history.benchmarks[7], None, history.measures[0])])
    current = conn.execute(
        "SELECT period_start FROM active_series.current_period(%s)", (history.id,)
    ).fetchone()[0]
    query = (
        "SELECT testbed_id, benchmark_id, variant_id, measure_id, first_seen, last_seen"
        " FROM active_series.period_series(%s{})"
    )
    got = sorted(conn.execute(query.format(""), (history.id,)).fetchall())
    assert got
    assert got == sorted(conn.execute(query.format(", %s"), (history.id, current)).fetchall())
