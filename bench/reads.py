"""Reads: period_usage, count_active and period_series against the from-scratch count.

One database holds an organization with 10^3, 10^4, … 10^max series each (all present while
any is measured, so table sizes are the same for every size).  The metrics are generated
set-based with the tracking trigger off, then the cache is filled set-based (what backfill
would write, directly: backfill is measured by backfill.py) and checked against the
from-scratch count for every organization, and with ``verify()`` where that is quick.

Per size, alternating within each repeat:

* ``period_usage(org, period_start)`` and ``count_active(org, period_start, period_end)``:
  server-side time per call, from a loop of calls in one statement (client round trips
  excluded; the round trip of a single call is reported as context);
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


def build(conn: psycopg.Connection, series: int) -> dict:
    t0 = time.perf_counter()
    set_tracking(conn, False)
    try:
        org = datagen.series_org(conn, series)
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
    return {
        "series": series,
        "organization": org,
        "period_start": start,
        "period_end": end,
        "generate_seconds": generated,
        "fill_seconds": time.perf_counter() - t1,
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
    p = {"org": org["organization"], "start": org["period_start"], "end": org["period_end"]}
    ops = {
        "period_usage": lambda: per_call(
            conn, "active_series.period_usage(%(org)s + 0 * g, %(start)s)", p, budget
        ),
        "count_active": lambda: per_call(
            conn, "active_series.count_active(%(org)s + 0 * g, %(start)s, %(end)s)", p, budget
        ),
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
    }
    return {
        "seconds": times,
        "median_seconds": med,
        "values": values,
        "exact": len({int(v) for v in values.values()}) == 1 and values["from_scratch"] > 0,
        "speedup_vs_scratch": {n: med["from_scratch"] / med[n] for n in names[:3]},
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
        orgs = []
        for series in sizes:
            org = build(conn, series)
            log(
                f"  built {series} series: generate {org['generate_seconds']:.1f} s,"
                f" fill {org['fill_seconds']:.1f} s"
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
                f"  {org['series']:>8} series: period_usage {med['period_usage'] * 1e6:.0f} us,"
                f" count_active {med['count_active'] * 1e3:.2f} ms,"
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
