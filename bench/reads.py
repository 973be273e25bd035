"""Reads: period_usage, count_active and period_series against the from-scratch count.

One database holds, per size of 10^3, 10^4, … 10^max series, two organizations (all present
while any is measured, so table sizes are the same for every size), one per layout:

* ``disjoint``: 10 testbeds, each reporting its benchmarks in chunks of 100 (each testbed's
  sets of series in the period are disjoint);
* ``overlapping``: 100 testbeds (10 at 10^3), each reporting its whole suite once, the first
  half of it once and each quarter of it once, at random moments: every series is in two or
  three of its testbed's sets, and a window starting mid-period cuts them.

The metrics are generated set-based with the tracking trigger off, then the cache is filled
set-based (what backfill would write, directly: backfill is measured by backfill.py) and
checked against the from-scratch count for every organization, and with ``verify()`` where
that is quick.  Beside it, the seed's design is rebuilt from the same metrics: a table with one
row per series and its last_seen, indexed on (organization_id, last_seen).

Per organization, alternating within each repeat:

* ``period_usage(org, period_start)`` and ``count_active(org, from, to)`` over the period
  ``[period_start, period_end)`` and over its second half ``[mid, period_end)`` (``mid``
  halfway between the period's start and its last report), each beside the seed's
  ``count(*)`` over its index range for the same window: server-side time per call, from a loop
  of calls in one statement (client round trips excluded; the round trip of a single call is
  reported as context);
* ``period_series(org, period_start)``: all rows, counted server-side;
* from scratch: ``count(DISTINCT (testbed, benchmark, measure))`` over the period's metrics.

    python bench/reads.py --dsn "dbname=bench" --max-exponent 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import datagen
import psycopg
from common import (
    connect,
    drop_database,
    fresh_database,
    log,
    median,
    one,
    server_info,
    set_tracking,
    write_run,
)

SCRATCH = """
SELECT count(DISTINCT (r.testbed_id, rb.benchmark_id, m.measure_id))
FROM active_series.project AS p
INNER JOIN active_series.report AS r ON r.project_id = p.id
INNER JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id
INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
WHERE p.organization_id = %(org)s AND p.deleted_at IS NULL
    AND r.created >= %(start)s AND r.created < %(end)s
"""

# The seed's design: one row per series with its last_seen, an index range scan per window.
SEED_TABLE = """
CREATE TABLE IF NOT EXISTS public.seed_series (
    organization_id bigint NOT NULL,
    testbed_id bigint NOT NULL,
    benchmark_id bigint NOT NULL,
    variant_id bigint NOT NULL,
    measure_id bigint NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (testbed_id, benchmark_id, variant_id, measure_id)
);
CREATE INDEX IF NOT EXISTS seed_series_organization_id_last_seen_idx
ON public.seed_series (organization_id, last_seen);
"""

SEED_FILL = """
INSERT INTO public.seed_series
SELECT p.organization_id, r.testbed_id, rb.benchmark_id, coalesce(rb.variant_id, 0),
    m.measure_id, max(r.created)
FROM active_series.project AS p
INNER JOIN active_series.report AS r ON r.project_id = p.id
INNER JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id
INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
WHERE p.organization_id = %(org)s
GROUP BY p.organization_id, r.testbed_id, rb.benchmark_id, coalesce(rb.variant_id, 0),
    m.measure_id
"""

SEED_COUNT = (
    "(SELECT count(*) FROM public.seed_series AS s WHERE s.organization_id = %(org)s + 0 * g"
    " AND s.last_seen >= {lo} AND s.last_seen < %(end)s)"
)

# every metric of the organization's project recorded as ingest records it
FILL = [
    """
    SELECT active_series._record_activity(array_agg(m.report_benchmark_id), array_agg(m.measure_id))
    FROM active_series.report AS r
    INNER JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id
    INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
    WHERE r.project_id = %(project)s
    """,
]


def overlapping_org(conn: psycopg.Connection, series: int) -> int:
    """An organization with exactly ``series`` series active in the current calendar month,
    on 100 testbeds (10 below 10^4 series) of series/testbeds/10 benchmarks x 10 measures,
    each testbed reporting its whole suite once, the first half of its benchmarks once and each
    quarter of them once, at random moments of the month so far: overlapping sets."""
    testbeds = 100 if series >= 10**4 else 10
    measures = datagen.MEASURES_PER_BENCHMARK
    if series % (testbeds * measures):
        raise ValueError(f"series must be a multiple of {testbeds * measures}")
    benchmarks = series // (testbeds * measures)
    org, project = datagen.new_project(conn, f"reads-overlapping-{series}")
    datagen.entities(conn, project, "testbed", testbeds)
    datagen.entities(conn, project, "benchmark", benchmarks)
    datagen.entities(conn, project, "measure", measures)
    with conn.transaction():
        conn.execute("SET LOCAL active_series.allow_explicit_created = on")
        # the report's kind is kept in start_time (seconds after epoch): 0 the whole suite,
        # 1 its first half, 2..5 its quarters
        conn.execute(
            """
            INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,
                created)
            SELECT t.project_id, t.id, 'epoch'::timestamptz + k * interval '1 s',
                'epoch'::timestamptz + k * interval '1 s', c.created
            FROM active_series.testbed AS t
            CROSS JOIN generate_series(0, 5) AS k
            CROSS JOIN LATERAL (
                SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                    + (now() - (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
                    * (0.01 + 0.98 * random() + 0 * k + 0 * t.id) AS created
            ) AS c
            WHERE t.project_id = %(project)s
            """,
            {"project": project},
        )
        conn.execute(
            """
            INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
            SELECT r.id, b.id, 0
            FROM active_series.report AS r
            CROSS JOIN LATERAL (SELECT extract(epoch FROM r.start_time)::int AS kind) AS k
            INNER JOIN (
                SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn
                FROM active_series.benchmark WHERE project_id = %(project)s
            ) AS b ON k.kind = 0
                OR (k.kind = 1 AND b.rn < (%(n)s + 1) / 2)
                OR (k.kind >= 2 AND b.rn * 4 / %(n)s = k.kind - 2)
            WHERE r.project_id = %(project)s
            """,
            {"project": project, "n": benchmarks},
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


LAYOUTS = {"disjoint": datagen.series_org, "overlapping": overlapping_org}


def build(conn: psycopg.Connection, series: int, layout: str) -> dict:
    t0 = time.perf_counter()
    set_tracking(conn, False)
    try:
        org = LAYOUTS[layout](conn, series)
    finally:
        set_tracking(conn, True)
    generated = time.perf_counter() - t0
    project = one(conn, "SELECT id FROM active_series.project WHERE organization_id = %s", (org,))
    created = one(
        conn, "SELECT max(created) FROM active_series.report WHERE project_id = %s", (project,)
    )
    t1 = time.perf_counter()
    with conn.transaction():
        start, end = conn.execute(
            "SELECT period_start, period_end FROM active_series._period_for(%s, %s)",
            (org, created),
        ).fetchone()  # type: ignore[misc]
        for sql in FILL:
            conn.execute(sql, {"org": org, "project": project, "start": start})
    filled = time.perf_counter() - t1
    conn.execute(SEED_FILL, {"org": org})
    first = one(
        conn, "SELECT min(created) FROM active_series.report WHERE project_id = %s", (project,)
    )
    return {
        "series": series,
        "layout": layout,
        "organization": org,
        "period_start": start,
        "period_end": end,
        # the second half of the period's activity: a window that cuts testbeds' sets
        "mid": first + (created - first) / 2,
        "generate_seconds": generated,
        "fill_seconds": filled,
    }


def per_call(conn: psycopg.Connection, call: str, params: dict, budget: float) -> float:
    """Server-side seconds per call of ``call`` (an expression using %(org)s + 0 * g)."""
    n = 1
    while True:
        t0 = time.perf_counter()
        conn.execute(f"SELECT count({call}) FROM generate_series(1, {n}) AS g", params)
        elapsed = time.perf_counter() - t0
        if elapsed >= budget or n >= 100_000:
            return elapsed / n
        n = min(100_000, max(n * 2, int(n * budget / max(elapsed, 1e-6))))


def roundtrip(conn: psycopg.Connection, sql: str, params: dict, n: int = 50) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.execute(sql, params).fetchone()
        times.append(time.perf_counter() - t0)
    return median(times)


def timed_query(conn: psycopg.Connection, sql: str, params: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    value = one(conn, sql, params)
    return time.perf_counter() - t0, int(value)


def measure(conn: psycopg.Connection, org: dict, repeats: int, budget: float) -> dict:
    p = {
        "org": org["organization"],
        "start": org["period_start"],
        "end": org["period_end"],
        "mid": org["mid"],
    }
    ops = {
        "period_usage": lambda: per_call(
            conn, "active_series.period_usage(%(org)s + 0 * g, %(start)s)", p, budget
        ),
        "count_active": lambda: per_call(
            conn, "active_series.count_active(%(org)s + 0 * g, %(start)s, %(end)s)", p, budget
        ),
        "seed_count": lambda: per_call(conn, SEED_COUNT.format(lo="%(start)s"), p, budget),
        "count_active_cut": lambda: per_call(
            conn, "active_series.count_active(%(org)s + 0 * g, %(mid)s, %(end)s)", p, budget
        ),
        "seed_count_cut": lambda: per_call(conn, SEED_COUNT.format(lo="%(mid)s"), p, budget),
        "period_series": lambda: timed_query(
            conn, "SELECT count(*) FROM active_series.period_series(%(org)s, %(start)s)", p
        )[0],
        "from_scratch": lambda: timed_query(conn, SCRATCH, p)[0],
    }
    names = list(ops)
    times: dict[str, list[float]] = {n: [] for n in names}
    for repeat in range(repeats):
        k = repeat % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(ops[name]())
    med = {n: median(times[n]) for n in names}
    values = {
        "period_usage": one(conn, "SELECT active_series.period_usage(%(org)s, %(start)s)", p),
        "count_active": one(
            conn, "SELECT active_series.count_active(%(org)s, %(start)s, %(end)s)", p
        ),
        "period_series": one(
            conn, "SELECT count(*) FROM active_series.period_series(%(org)s, %(start)s)", p
        ),
        "from_scratch": one(conn, SCRATCH, p),
        "seed_count": one(conn, SEED_COUNT.format(lo="%(start)s").replace("+ 0 * g", ""), p),
    }
    cut = {
        "count_active_cut": one(
            conn, "SELECT active_series.count_active(%(org)s, %(mid)s, %(end)s)", p
        ),
        "seed_count_cut": one(conn, SEED_COUNT.format(lo="%(mid)s").replace("+ 0 * g", ""), p),
    }
    return {
        "seconds": times,
        "median_seconds": med,
        "values": {**values, **cut},
        "exact": len({int(v) for v in values.values()}) == 1
        and values["from_scratch"] > 0
        and len({int(v) for v in cut.values()}) == 1,
        "speedup_vs_scratch": {
            n: med["from_scratch"] / med[n]
            for n in ("period_usage", "count_active", "period_series")
        },
        # < 1: faster than the seed's index range scan, than recomputing
        "ratio_vs_seed": {
            "count_active": med["count_active"] / med["seed_count"],
            "count_active_cut": med["count_active_cut"] / med["seed_count_cut"],
        },
        "period_series_vs_scratch": med["period_series"] / med["from_scratch"],
        "roundtrip_seconds": {
            "period_usage": roundtrip(
                conn, "SELECT active_series.period_usage(%(org)s, %(start)s)", p
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/reads.json)")
    parser.add_argument("--max-exponent", type=int, default=6, help="largest size: 10^this")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per timing loop")
    parser.add_argument("--database", default="bench_reads", help="scratch database to create")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)

    started = time.time()
    dsn = fresh_database(args.dsn, args.database)
    sizes = [10**e for e in range(3, args.max_exponent + 1)]
    with connect(dsn) as conn:
        info = server_info(conn)
        conn.execute(SEED_TABLE)
        orgs = []
        for series in sizes:
            for layout in LAYOUTS:
                org = build(conn, series, layout)
                log(
                    f"  built {series} series ({layout}): generate"
                    f" {org['generate_seconds']:.1f} s, fill {org['fill_seconds']:.1f} s"
                )
                orgs.append(org)
        conn.execute("VACUUM ANALYZE")
        for org in orgs:
            if org["series"] <= 10**4:
                t0 = time.perf_counter()
                problems = conn.execute(
                    "SELECT * FROM active_series.verify(%s)", (org["organization"],)
                ).fetchall()
                org["verify_seconds"] = time.perf_counter() - t0
                org["verify_problems"] = len(problems)
                if problems:
                    raise SystemExit(f"verify() found drift in the generated cache: {problems}")
        results = []
        for org in orgs:
            # the 10^6 from-scratch count takes seconds: fewer repeats there
            repeats = args.repeats if org["series"] < 10**6 else max(3, args.repeats // 2)
            r = measure(conn, org, repeats, args.budget)
            if not r["exact"]:
                raise SystemExit(f"counts disagree at {org['series']} series: {r['values']}")
            results.append({**org, **r})
            med = r["median_seconds"]
            log(
                f"  {org['series']:>8} series ({org['layout']}):"
                f" period_usage {med['period_usage'] * 1e6:.0f} us,"
                f" count_active {med['count_active'] * 1e3:.2f} ms"
                f" (seed {med['seed_count'] * 1e3:.2f} ms),"
                f" cut {med['count_active_cut'] * 1e3:.2f} ms"
                f" (seed {med['seed_count_cut'] * 1e3:.2f} ms),"
                f" period_series {med['period_series'] * 1e3:.1f} ms,"
                f" from scratch {med['from_scratch'] * 1e3:.1f} ms"
                f" ({r['speedup_vs_scratch']['period_usage']:.0f}x)"
            )
        sizes_db = {
            t: one(conn, f"SELECT pg_total_relation_size('active_series.{t}')")
            for t in ("metric", "_shape", "_shape_seen", "_testbed_period", "_period_usage")
        }
    if not args.keep:
        drop_database(args.dsn, args.database)
    write_run(
        "reads",
        started,
        info,
        {
            "repeats": args.repeats,
            "relation_bytes": sizes_db,
            "results": results,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
