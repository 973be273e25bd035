"""Ingest throughput: active_series tracking on vs off, against two baselines, side by side.

Each transaction ingests one report of N metrics (N/B measures for each of B = min(10, N)
benchmarks, on a testbed picked at random among four), the way a client ingesting benchmark
results does, by one of two methods:

* ``insert``: ``INSERT … SELECT`` over generate_series, driven by real pgbench;
* ``copy``: ``COPY metric FROM STDIN``, driven by a Python client (one process per client,
  pgbench cannot COPY from a script), the report and report_benchmark rows inserted first.

Modes, alternated within each repeat (the order rotates every repeat):

* ``off``: no tracking (``active_series_metric_inserted`` disabled): the reference throughput;
* ``on``: active_series tracking (the statement trigger and the commit-time flush);
* ``upsert``: tracking off; after the metric insert the client upserts one row per series
  into a per-series ``last_seen`` table (``INSERT … ON CONFLICT (series) DO UPDATE SET
  last_seen = GREATEST(…)``) in the same transaction, as one set-based statement (the
  per-series upsert of the seed alone: bench/shapes.py measures the seed as it shipped);
* ``row``: tracking off, a plain ``FOR EACH ROW`` trigger on metric doing the same upsert.

Every run starts from the same state: metric, report_benchmark and report truncated (the
series and their cache rows stay, so tracked runs measure the steady state: known series
reporting again), then CHECKPOINT.  Result: the median transactions/s of the repeats per mode,
and each mode's ratio to ``off``.

    python bench/ingest.py --dsn "dbname=bench" --out bench/results/ingest.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from common import (
    RESULTS,
    connect,
    host_info,
    log,
    median,
    one,
    server_info,
    set_tracking,
    write_result,
)

PGBENCH_CANDIDATES = ("/usr/lib/postgresql/15/bin/pgbench", "/usr/bin/pgbench")
TESTBEDS = 4
MODES = ("off", "on", "upsert", "row")
METHODS = ("insert", "copy")

BASELINE_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_baseline;
CREATE TABLE IF NOT EXISTS bench_baseline.series_last_seen (
    organization_id bigint NOT NULL,
    testbed_id bigint NOT NULL,
    benchmark_id bigint NOT NULL,
    measure_id bigint NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (testbed_id, benchmark_id, measure_id)
);
-- the seed's count of an organization's active series: a range scan of this index
CREATE INDEX IF NOT EXISTS series_last_seen_organization_id_last_seen_idx
    ON bench_baseline.series_last_seen (organization_id, last_seen);
CREATE OR REPLACE FUNCTION bench_baseline.row_upsert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_baseline.series_last_seen AS s
        (organization_id, testbed_id, benchmark_id, measure_id, last_seen)
    SELECT p.organization_id, r.testbed_id, rb.benchmark_id, NEW.measure_id, r.created
    FROM active_series.report_benchmark AS rb
    INNER JOIN active_series.report AS r ON r.id = rb.report_id
    INNER JOIN active_series.project AS p ON p.id = r.project_id
    WHERE rb.id = NEW.report_benchmark_id
    ON CONFLICT (testbed_id, benchmark_id, measure_id)
    DO UPDATE SET last_seen = greatest(s.last_seen, excluded.last_seen);
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS bench_row_upsert ON active_series.metric;
CREATE TRIGGER bench_row_upsert AFTER INSERT ON active_series.metric
FOR EACH ROW EXECUTE FUNCTION bench_baseline.row_upsert();
ALTER TABLE active_series.metric DISABLE TRIGGER bench_row_upsert;
"""

DROP_BASELINE_SQL = """
DROP TRIGGER IF EXISTS bench_row_upsert ON active_series.metric;
DROP SCHEMA IF EXISTS bench_baseline CASCADE;
"""

# The per-series upsert alone, as one client-side statement after the metric insert (one row
# per series, in key order): mode ``upsert``.
UPSERT_SQL = """\
INSERT INTO bench_baseline.series_last_seen AS s
    (organization_id, testbed_id, benchmark_id, measure_id, last_seen)
SELECT p.organization_id, r.testbed_id, rb.benchmark_id, m.measure_id, max(r.created)
FROM active_series.report AS r
INNER JOIN active_series.project AS p ON p.id = r.project_id
INNER JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id
INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
WHERE r.id = {report_id}
GROUP BY 1, 2, 3, 4
ORDER BY 2, 3, 4
ON CONFLICT (testbed_id, benchmark_id, measure_id)
DO UPDATE SET last_seen = greatest(s.last_seen, excluded.last_seen)"""

SCRIPT = """\
\\set tb random(1, {testbeds})
BEGIN;
INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)
    VALUES ({project}, ('{testbed_ids}'::bigint[])[:tb], now(), now())
    RETURNING id AS report_id \\gset
INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
    SELECT :report_id, b, 0 FROM unnest('{benchmark_ids}'::bigint[]) AS b;
INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
    SELECT rb.id, ('{measure_ids}'::bigint[])[j], random()
    FROM active_series.report_benchmark AS rb, generate_series(1, {per_benchmark}) AS j
    WHERE rb.report_id = :report_id
    ORDER BY rb.id, j;
{upsert}END;
"""


def shape(metrics: int) -> tuple[int, int]:
    """(benchmarks, measures per benchmark) of a report of ``metrics`` metrics."""
    benchmarks = min(10, metrics)
    if metrics % benchmarks:
        raise SystemExit(f"{metrics} metrics: not a multiple of {benchmarks} benchmarks")
    return benchmarks, metrics // benchmarks


def find_pgbench(explicit: str | None) -> str:
    for candidate in (explicit, *PGBENCH_CANDIDATES, shutil.which("pgbench")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("pgbench not found (use --pgbench)")


def create_entities(conn: psycopg.Connection, max_metrics: int) -> dict[str, Any]:
    tag = time.strftime("%Y%m%d%H%M%S")
    org = one(
        conn,
        "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id",
        (f"bench-ingest-{tag}",),
    )
    project = one(
        conn,
        "INSERT INTO active_series.project (organization_id, name, visibility)"
        " VALUES (%s, 'ingest', 'private') RETURNING id",
        (org,),
    )

    def entities(table: str, n: int) -> list[int]:
        rows = conn.execute(
            f"INSERT INTO active_series.{table} (project_id, name)"
            " SELECT %s, %s || '-' || i FROM generate_series(1, %s) AS i RETURNING id",
            (project, table, n),
        ).fetchall()
        return sorted(r[0] for r in rows)

    return {
        "organization": org,
        "project": project,
        "testbeds": entities("testbed", TESTBEDS),
        "benchmarks": entities("benchmark", 10),
        "measures": entities("measure", max(shape(m)[1] for m in max_metrics)),
    }


def array(ids: list[int]) -> str:
    return "{" + ",".join(map(str, ids)) + "}"


def write_script(directory: Path, ent: dict[str, Any], metrics: int, upsert: bool) -> Path:
    benchmarks, per_benchmark = shape(metrics)
    path = directory / f"ingest_{metrics}_{'upsert' if upsert else 'plain'}.sql"
    path.write_text(
        SCRIPT.format(
            testbeds=len(ent["testbeds"]),
            project=ent["project"],
            testbed_ids=array(ent["testbeds"]),
            benchmark_ids=array(ent["benchmarks"][:benchmarks]),
            measure_ids=array(ent["measures"][:per_benchmark]),
            per_benchmark=per_benchmark,
            upsert=UPSERT_SQL.format(report_id=":report_id").replace("\n", "\n    ") + ";\n"
            if upsert
            else "",
        )
    )
    return path


def set_mode(conn: psycopg.Connection, mode: str) -> None:
    set_tracking(conn, mode == "on")
    action = "ENABLE" if mode == "row" else "DISABLE"
    conn.execute(f"ALTER TABLE active_series.metric {action} TRIGGER bench_row_upsert")


def reset_tables(conn: psycopg.Connection) -> None:
    conn.execute(
        "TRUNCATE active_series.metric, active_series.report_benchmark, active_series.report"
    )
    conn.execute("CHECKPOINT")


TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
FAILED = re.compile(r"number of failed transactions: (\d+)")
RETRIED = re.compile(r"number of transactions retried: (\d+)")


def run_pgbench(binary: str, dsn: str, script: Path, clients: int, seconds: int) -> dict:
    cmd = [
        binary,
        "--no-vacuum",
        f"--client={clients}",
        f"--jobs={clients}",
        f"--time={seconds}",
        "--max-tries=10",
        f"--file={script}",
        dsn,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"pgbench failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    match = TPS.search(proc.stdout)
    if match is None:
        raise SystemExit(f"cannot read tps from pgbench output:\n{proc.stdout}")
    failed = FAILED.search(proc.stdout)
    retried = RETRIED.search(proc.stdout)
    return {
        "tps": float(match.group(1)),
        "failed": int(failed.group(1)) if failed else 0,
        "retried": int(retried.group(1)) if retried else 0,
    }


# ----------------------------------------------------------------------------- COPY driver
def _copy_client(
    dsn: str,
    ent: dict[str, Any],
    metrics: int,
    upsert: bool,
    start_at: float,
    seconds: float,
    index: int,
    out: Any,
) -> None:
    """One COPY client (a forked process): reports until the deadline; puts its count."""
    try:
        done, retried = _copy_loop(dsn, ent, metrics, upsert, start_at, seconds, index)
    except Exception as exc:  # reported to the parent, which fails the run
        out.put((index, -1, repr(exc)))
    else:
        out.put((index, done, retried))


def _copy_loop(
    dsn: str,
    ent: dict[str, Any],
    metrics: int,
    upsert: bool,
    start_at: float,
    seconds: float,
    index: int,
) -> tuple[int, int]:
    import random

    benchmarks, per_benchmark = shape(metrics)
    bench_ids = ent["benchmarks"][:benchmarks]
    suffixes = [f"\t{m}\t0.5\n" for m in ent["measures"][:per_benchmark]]
    rng = random.Random(index)
    done = retried = 0
    with psycopg.connect(dsn) as conn:
        while time.time() < start_at:
            time.sleep(0.001)
        deadline = start_at + seconds
        while time.time() < deadline:
            try:
                with conn.transaction():
                    report = one(
                        conn,
                        "INSERT INTO active_series.report (project_id, testbed_id, start_time,"
                        " end_time) VALUES (%s, %s, now(), now()) RETURNING id",
                        (ent["project"], rng.choice(ent["testbeds"])),
                    )
                    rbs = conn.execute(
                        "INSERT INTO active_series.report_benchmark"
                        " (report_id, benchmark_id, iteration)"
                        " SELECT %s, b, 0 FROM unnest(%s::bigint[]) AS b RETURNING id",
                        (report, bench_ids),
                    ).fetchall()
                    payload = "".join(
                        f"{rb}{suffix}" for rb in sorted(r[0] for r in rbs) for suffix in suffixes
                    )
                    with conn.cursor().copy(
                        "COPY active_series.metric (report_benchmark_id, measure_id, value)"
                        " FROM STDIN"
                    ) as copy:
                        copy.write(payload)
                    if upsert:
                        conn.execute(UPSERT_SQL.format(report_id=int(report)))
                done += 1
            except psycopg.errors.DeadlockDetected:
                retried += 1
    return done, retried


def run_copy(
    dsn: str, ent: dict[str, Any], metrics: int, clients: int, seconds: int, upsert: bool
) -> dict:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [
        ctx.Process(
            target=_copy_client,
            args=(dsn, ent, metrics, upsert, start_at, seconds, i, queue),
        )
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    errors = [r[2] for r in results if r[1] < 0]
    if errors:
        raise SystemExit(f"COPY client failed: {errors[0]}")
    done = sum(r[1] for r in results)
    return {"tps": done / seconds, "failed": 0, "retried": sum(r[2] for r in results)}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/ingest.json)")
    parser.add_argument("--seconds", type=int, default=3, help="duration of one run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", type=int, nargs="+", default=[1, 60, 600, 6000])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--pgbench", help="path of the pgbench binary")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the measured configurations in an existing result file",
    )
    args = parser.parse_args(argv)
    for m in args.metrics:
        shape(m)
    modes = ["off", *[m for m in args.modes if m != "off"]]
    binary = find_pgbench(args.pgbench)

    results = []
    started = time.time()
    with connect(args.dsn) as conn, tempfile.TemporaryDirectory() as tmp:
        info = server_info(conn)
        conn.execute(BASELINE_SQL)
        ent = create_entities(conn, args.metrics)
        try:
            for metrics in args.metrics:
                scripts = {
                    flag: write_script(Path(tmp), ent, metrics, flag) for flag in (False, True)
                }

                def run(
                    mode: str,
                    method: str,
                    clients: int,
                    seconds: int,
                    metrics: int = metrics,
                    scripts: dict = scripts,
                ) -> dict:
                    set_mode(conn, mode)
                    reset_tables(conn)
                    if method == "insert":
                        return run_pgbench(
                            binary, args.dsn, scripts[mode == "upsert"], clients, seconds
                        )
                    return run_copy(args.dsn, ent, metrics, clients, seconds, mode == "upsert")

                # warm-up: every series and cache row exists before the measured runs
                for mode in modes:
                    run(mode, "insert", 1, 1)
                for method in args.methods:
                    for clients in args.clients:
                        runs: dict[str, list[dict]] = {m: [] for m in modes}
                        for repeat in range(args.repeats):
                            k = repeat % len(modes)
                            for mode in modes[k:] + modes[:k]:
                                r = run(mode, method, clients, args.seconds)
                                runs[mode].append(r)
                                log(
                                    f"  {method} N={metrics} clients={clients}"
                                    f" repeat={repeat + 1} {mode}: {r['tps']:.1f} tps"
                                )
                        med = {m: median([r["tps"] for r in runs[m]]) for m in modes}
                        results.append(
                            {
                                "seconds_per_run": args.seconds,
                                "repeats": args.repeats,
                                "method": method,
                                "metrics_per_report": metrics,
                                "clients": clients,
                                "tps": {m: [r["tps"] for r in runs[m]] for m in modes},
                                "retried": {m: sum(r["retried"] for r in runs[m]) for m in modes},
                                "failed": {m: sum(r["failed"] for r in runs[m]) for m in modes},
                                "median_tps": med,
                                "ratio_to_off": {m: med[m] / med["off"] for m in modes},
                            }
                        )
        finally:
            set_tracking(conn, True)
            conn.execute(DROP_BASELINE_SQL)
            reset_tables(conn)

    print_table(results, modes)
    out = args.out or RESULTS / "ingest.json"
    if args.merge and out.exists():
        key = ("method", "metrics_per_report", "clients")
        fresh = {tuple(r[k] for k in key) for r in results}
        previous = json.loads(out.read_text())
        kept = [
            {
                "seconds_per_run": previous["seconds_per_run"],
                "repeats": previous["repeats"],
                **r,
            }
            for r in previous["results"]
            if tuple(r[k] for k in key) not in fresh
        ]
        order = {m: i for i, m in enumerate(METHODS)}
        results = sorted(
            kept + results,
            key=lambda r: (order[r["method"]], r["metrics_per_report"], r["clients"]),
        )
    write_result(
        "ingest",
        {
            "seconds_per_run": args.seconds,
            "repeats": args.repeats,
            "wall_seconds": time.time() - started,
            "server": info,
            "host": host_info(),
            "pgbench": binary,
            "results": results,
        },
        out,
    )
    return 0


def print_table(results: list[dict], modes: list[str]) -> None:
    header = f"{'method':>6} {'metrics':>7} {'clients':>7} {'tps off':>9} " + " ".join(
        f"{m + '/off':>9}" for m in modes[1:]
    )
    print(header)
    for r in results:
        print(
            f"{r['method']:>6} {r['metrics_per_report']:>7} {r['clients']:>7}"
            f" {r['median_tps']['off']:>9.1f} "
            + " ".join(f"{r['ratio_to_off'][m]:>9.3f}" for m in modes[1:])
        )


if __name__ == "__main__":
    sys.exit(main())
