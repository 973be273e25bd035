"""Ingest throughput with the active_series tracking trigger on versus off, measured with pgbench.

Each pgbench transaction inserts one report of N metrics (N/10 measures for each of 10
benchmarks, on a testbed picked at random among four) with INSERT … SELECT over generate_series,
as a client ingesting benchmark results would.  For every (N, clients) configuration, runs with
``metric_track_ingest`` enabled and disabled alternate (the order flips each repeat), and the
median TPS of the repeats is compared.

    python bench/ingest_overhead.py --dsn "host=... dbname=..." --out bench/ingest_overhead.json

The database must have the active_series schema installed; the script creates its own
organization, project and entities, and leaves the trigger enabled when it ends.  It needs a
role that may ALTER the metric table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

PGBENCH_CANDIDATES = ("/usr/lib/postgresql/15/bin/pgbench", "/usr/bin/pgbench")
TRIGGER = "metric_track_ingest"
BENCHMARKS = 10
TESTBEDS = 4

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
    WHERE rb.report_id = :report_id;
END;
"""


def find_pgbench(explicit: str | None) -> str:
    for candidate in (explicit, *PGBENCH_CANDIDATES, shutil.which("pgbench")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("pgbench not found (use --pgbench)")


def one(conn: psycopg.Connection, query: str, params=None):
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def create_entities(conn: psycopg.Connection, max_metrics: int) -> dict:
    """A fresh organization with TESTBEDS testbeds, BENCHMARKS benchmarks, enough measures."""
    tag = time.strftime("%Y%m%d%H%M%S")
    org = one(
        conn,
        "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id",
        (f"bench-{tag}",),
    )
    project = one(
        conn,
        "INSERT INTO active_series.project (organization_id, name, visibility)"
        " VALUES (%s, 'ingest-overhead', 'private') RETURNING id",
        (org,),
    )

    def entities(table: str, n: int) -> list[int]:
        return [
            one(
                conn,
                f"INSERT INTO active_series.{table} (project_id, name) VALUES (%s, %s)"
                " RETURNING id",
                (project, f"{table}-{i}"),
            )
            for i in range(n)
        ]

    return {
        "organization": org,
        "project": project,
        "testbeds": entities("testbed", TESTBEDS),
        "benchmarks": entities("benchmark", BENCHMARKS),
        "measures": entities("measure", max_metrics // BENCHMARKS),
    }


def array(ids: list[int]) -> str:
    return "{" + ",".join(map(str, ids)) + "}"


def write_script(directory: Path, ent: dict, metrics: int) -> Path:
    per_benchmark = metrics // BENCHMARKS
    path = directory / f"ingest_{metrics}.sql"
    path.write_text(
        SCRIPT.format(
            testbeds=len(ent["testbeds"]),
            project=ent["project"],
            testbed_ids=array(ent["testbeds"]),
            benchmark_ids=array(ent["benchmarks"]),
            measure_ids=array(ent["measures"][:per_benchmark]),
            per_benchmark=per_benchmark,
        )
    )
    return path


def set_tracking(conn: psycopg.Connection, on: bool) -> None:
    action = "ENABLE" if on else "DISABLE"
    conn.execute(f"ALTER TABLE active_series.metric {action} TRIGGER {TRIGGER}")


def settle(conn: psycopg.Connection) -> None:
    """Start every run from the same point: dirty buffers flushed, statistics fresh."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")
    conn.execute("VACUUM ANALYZE active_series.metric, active_series.report_benchmark")


TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
FAILED = re.compile(r"number of failed transactions: (\d+)")


def pgbench(binary: str, dsn: str, script: Path, clients: int, seconds: int) -> float:
    cmd = [
        binary,
        "--no-vacuum",
        f"--client={clients}",
        f"--jobs={clients}",
        f"--time={seconds}",
        f"--file={script}",
        dsn,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"pgbench failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    failed = FAILED.search(proc.stdout)
    if failed and int(failed.group(1)):
        raise SystemExit(f"pgbench reported failed transactions:\n{proc.stdout}")
    match = TPS.search(proc.stdout)
    if match is None:
        raise SystemExit(f"cannot read tps from pgbench output:\n{proc.stdout}")
    return float(match.group(1))


def server_info(conn: psycopg.Connection) -> dict:
    names = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "wal_level")
    return {n: one(conn, f"SELECT current_setting('{n}')") for n in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--seconds", type=int, default=10, help="duration of one pgbench run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per size")
    parser.add_argument("--pgbench", help="path of the pgbench binary")
    args = parser.parse_args(argv)
    if any(m % BENCHMARKS for m in args.metrics):
        parser.error(f"--metrics must be multiples of {BENCHMARKS}")
    binary = find_pgbench(args.pgbench)

    results = []
    with (
        psycopg.connect(args.dsn, autocommit=True) as conn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        info = server_info(conn)
        ent = create_entities(conn, max(args.metrics))
        try:
            for metrics in args.metrics:
                script = write_script(Path(tmp), ent, metrics)
                # Warm-up with tracking on: every series exists before the measured runs, so
                # they measure the steady state (a known series reporting again).
                set_tracking(conn, True)
                pgbench(binary, args.dsn, script, 1, args.warmup)
                for clients in args.clients:
                    tps: dict[str, list[float]] = {"on": [], "off": []}
                    for repeat in range(args.repeats):
                        order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
                        for mode in order:
                            set_tracking(conn, mode == "on")
                            settle(conn)
                            tps[mode].append(
                                pgbench(binary, args.dsn, script, clients, args.seconds)
                            )
                            print(
                                f"  N={metrics} clients={clients} repeat={repeat + 1}"
                                f" tracking {mode}: {tps[mode][-1]:.1f} tps",
                                file=sys.stderr,
                            )
                    on, off = statistics.median(tps["on"]), statistics.median(tps["off"])
                    results.append(
                        {
                            "metrics_per_report": metrics,
                            "clients": clients,
                            "tps_on": tps["on"],
                            "tps_off": tps["off"],
                            "median_tps_on": on,
                            "median_tps_off": off,
                            "ratio_on_off": on / off,
                            "overhead_percent": (1 - on / off) * 100,
                        }
                    )
        finally:
            set_tracking(conn, True)

    print_table(results)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "benchmark": "ingest_overhead",
                    "seconds_per_run": args.seconds,
                    "repeats": args.repeats,
                    "server": info,
                    "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
                    "pgbench": binary,
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def print_table(results: list[dict]) -> None:
    header = (
        f"{'metrics/report':>14} {'clients':>7} {'tps off':>9} {'tps on':>9}"
        f" {'on/off':>7} {'overhead':>9} {'metrics/s on':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['metrics_per_report']:>14} {r['clients']:>7} {r['median_tps_off']:>9.1f}"
            f" {r['median_tps_on']:>9.1f} {r['ratio_on_off']:>7.3f}"
            f" {r['overhead_percent']:>8.1f}% {r['median_tps_on'] * r['metrics_per_report']:>12.0f}"
        )


if __name__ == "__main__":
    sys.exit(main())
