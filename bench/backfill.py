"""Backfill: ``CALL active_series.backfill()`` over 10^5, 10^6 (10^7) metrics of history,
against the from-scratch count over the same data, with the backend's memory sampled.

Per size, a fresh database gets 90 days of ingest history (datagen.history: 10
organizations, reports of 600 metrics, 2,400 series per organization and period) with the
tracking trigger off.  Then, alternating within each repeat:

* the from-scratch count: every (organization, calendar month)'s distinct series, one query;
* ``CALL active_series.backfill()`` from an empty cache (the cache tables are truncated
  before each run), while a thread samples the backend's private memory (``RssAnon`` in
  /proc/<pg_backend_pid()>/status, so it needs to run on the database host as root or as
  the server's user).

The backfilled counts are checked against the from-scratch ones.

A second shape, ``new_series``: every metric is a new series (datagen.series_org: reports of
1,000 metrics, all series new), so one backfill batch (500 reports) records up to 500,000
new series in one transaction, at 10^4, 3x10^4 and 6x10^4 series (``--new-series``).

    python bench/backfill.py --dsn "dbname=bench" --max-exponent 6
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
    RssSampler,
    connect,
    drop_database,
    fresh_database,
    log,
    median,
    server_info,
    set_tracking,
    write_run,
)

SCRATCH = """
SELECT p.organization_id,
    date_trunc('month', r.created AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start,
    count(DISTINCT (r.testbed_id, rb.benchmark_id, m.measure_id)) AS series
FROM active_series.project AS p
INNER JOIN active_series.report AS r ON r.project_id = p.id
INNER JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id
INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
WHERE p.deleted_at IS NULL
GROUP BY 1, 2
ORDER BY 1, 2
"""

CACHED = """
SELECT organization_id, period_start,
    active_series.period_usage(organization_id, period_start) AS series
FROM active_series._period
ORDER BY 1, 2
"""

EMPTY_CACHE = """
TRUNCATE active_series._shape_seen, active_series._testbed_period, active_series._shape,
    active_series._period_usage, active_series._outbox, active_series._period CASCADE
"""


def scratch(conn: psycopg.Connection) -> tuple[float, list[tuple]]:
    t0 = time.perf_counter()
    rows = conn.execute(SCRATCH).fetchall()
    return time.perf_counter() - t0, [tuple(r) for r in rows]


def backfill(conn: psycopg.Connection, batch: int) -> dict:
    conn.execute(EMPTY_CACHE)
    conn.execute("CHECKPOINT")
    sampler = RssSampler(conn.info.backend_pid)
    before = sampler.read()
    t0 = time.perf_counter()
    with sampler.running(0.05):
        conn.execute("CALL active_series.backfill(%s)", (batch,))
    elapsed = time.perf_counter() - t0
    after = sampler.read()
    return {
        "seconds": elapsed,
        "rss_anon_kb_before": before.get("RssAnon"),
        "rss_anon_kb_peak": sampler.peak_anon_kb,
        "vm_hwm_kb": after.get("VmHWM"),
        "rss_samples": sampler.samples[:: max(1, len(sampler.samples) // 200)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument(
        "--out", type=Path, help="result JSON (default bench/results/backfill.json)"
    )
    parser.add_argument("--max-exponent", type=int, default=6, help="largest size: 10^this")
    parser.add_argument("--repeats", type=int, default=3, help="repeats below 10^6 metrics")
    parser.add_argument("--batch-size", type=int, default=500, help="backfill's p_batch_size")
    parser.add_argument("--database", default="bench_backfill", help="scratch database to create")
    parser.add_argument(
        "--new-series",
        type=int,
        nargs="*",
        default=[10_000, 30_000, 60_000],
        help="sizes of the all-new-series shape",
    )
    args = parser.parse_args(argv)

    started = time.time()
    results = []
    info: dict = {}
    for exponent in range(5, args.max_exponent + 1):
        metrics = 10**exponent
        dsn = fresh_database(args.dsn, args.database)
        with connect(dsn) as conn:
            info = server_info(conn)
            t0 = time.perf_counter()
            data = datagen.history(conn, metrics)
            generate = time.perf_counter() - t0
            log(f"  generated {data['metrics']} metrics in {generate:.1f} s")
            repeats = args.repeats if exponent < 6 else 1
            runs, scratch_times = [], []
            expected: list[tuple] = []
            for repeat in range(repeats):
                order = ("scratch", "backfill") if repeat % 2 == 0 else ("backfill", "scratch")
                for what in order:
                    if what == "scratch":
                        elapsed, expected = scratch(conn)
                        scratch_times.append(elapsed)
                    else:
                        runs.append(backfill(conn, args.batch_size))
                        log(
                            f"  {metrics} metrics: backfill {runs[-1]['seconds']:.1f} s,"
                            f" peak RssAnon {runs[-1]['rss_anon_kb_peak'] / 1024:.0f} MiB"
                        )
            got = [tuple(r) for r in conn.execute(CACHED).fetchall()]
            exact = got == expected
            if not exact:
                raise SystemExit(f"backfilled counts differ from scratch: {got} vs {expected}")
            seconds = median([r["seconds"] for r in runs])
            scratch_s = median(scratch_times)
            results.append(
                {
                    **data,
                    "generate_seconds": generate,
                    "batch_size": args.batch_size,
                    "runs": runs,
                    "backfill_seconds": seconds,
                    "metrics_per_second": data["metrics"] / seconds,
                    "scratch_seconds": scratch_times,
                    "median_scratch_seconds": scratch_s,
                    "backfill_over_scratch": seconds / scratch_s,
                    "peak_rss_anon_kb": max(r["rss_anon_kb_peak"] for r in runs),
                    "periods": len(expected),
                    "exact": exact,
                }
            )
            log(
                f"  {metrics} metrics: backfill {seconds:.1f} s"
                f" ({data['metrics'] / seconds:.0f} metrics/s),"
                f" from scratch {scratch_s:.2f} s, ratio {seconds / scratch_s:.0f}x"
            )
        drop_database(args.dsn, args.database)
    new_series = []
    for series in args.new_series:
        dsn = fresh_database(args.dsn, args.database)
        with connect(dsn) as conn:
            set_tracking(conn, False)
            try:
                datagen.series_org(conn, series)
            finally:
                set_tracking(conn, True)
            conn.execute("ANALYZE")
            elapsed, expected = scratch(conn)
            run = backfill(conn, args.batch_size)
            got = [tuple(r) for r in conn.execute(CACHED).fetchall()]
            if got != expected:
                raise SystemExit(f"backfilled counts differ from scratch: {got} vs {expected}")
            new_series.append(
                {
                    "series": series,
                    "metrics": series,
                    "backfill_seconds": run["seconds"],
                    "metrics_per_second": series / run["seconds"],
                    "scratch_seconds": elapsed,
                    "backfill_over_scratch": run["seconds"] / elapsed,
                    "peak_rss_anon_kb": run["rss_anon_kb_peak"],
                    "exact": True,
                }
            )
            log(
                f"  new series {series}: backfill {run['seconds']:.1f} s"
                f" ({series / run['seconds']:.0f}/s), from scratch {elapsed:.2f} s"
            )
        drop_database(args.dsn, args.database)
    write_run(
        "backfill",
        started,
        info,
        {
            "results": results,
            "new_series": new_series,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
