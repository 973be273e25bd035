"""Backend CPU instructions per report: tracking off, on and the seed as shipped, counted by
valgrind in a single-user backend, for one or more builds of the install script side by side.

Wall-clock ratios on a shared two-core machine move by a few hundredths from run to run; a
change to the recorder that saves 2% of a report cannot be seen there. Instruction counts
can: the same statements on the same data give the same count to within a few hundred
instructions. This is the tool to decide between two versions of the recorder before the
shape matrix (bench/shapes.py) judges the result.

For each install script given (``NAME=PATH``; default: the built
``python/active_series/sql/active_series--<version>.sql`` as ``built``), a throwaway
server gets a database with that script and the reference model, and the shape matrix's
organizations and testbeds (bench/shapes.py) for one shape. For each scenario (first,
rollover, steady) and mode (off, on, seed) it writes two scripts of whole-report
transactions, N and 2N reports to fresh (or prepared) testbeds, the way a client sends them
(report, report_benchmark, metric; the seed's upsert inside the metric statement and its
count after the commit). The server stops; each script then runs through ``postgres
--single`` under ``valgrind --tool=callgrind``, counting only the statements (parse, plan,
execute, commit). Per report = (I(2N) - I(N)) / N: start-up and the cold caches cancel.

Callgrind files are kept (``--keep DIR``) for ``callgrind_annotate``: the difference of two
runs' inclusive counts by function shows where the instructions go.

    python bench/instructions.py                           # the built script, 1x1
    python bench/instructions.py a=old.sql b=new.sql --scenarios first steady
    N=100 python bench/instructions.py --shape 50x1

Needs valgrind (``apt-get install valgrind``); runs as root (the backends run as the
postgres system user) or as a non-root user.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
from active_series import __version__
from active_series.devtools.testpg import TestServer
from common import connect, with_dbname
from ingest import BASELINE_SQL
from shapes import ORGANIZATIONS, SCHEMA_SQL, Bench, Shape

SCENARIOS = ("first", "rollover", "steady")
MODES = ("off", "on", "seed")
# what callgrind counts: the statements, not the backend's start and stop
COUNTED = (
    "pg_parse_query",
    "pg_analyze_and_rewrite_fixedparams",
    "pg_plan_queries",
    "PortalStart",
    "PortalRun",
    "PortalDrop",
    "StartTransactionCommand",
    "CommitTransactionCommand",
)


def install(dsn: str, name: str, script: Path) -> str:
    """Database ``name`` with the install script and the reference model."""
    with connect(with_dbname(dsn, "postgres")) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    target = with_dbname(dsn, name)
    text = "".join(
        line for line in script.read_text().splitlines(True) if not line.startswith("\\echo")
    )
    with psycopg.connect(target) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS active_series")
        conn.execute(text)
        conn.commit()
        conn.execute("SELECT active_series.create_reference_model('active_series')")
    return target


def report_lines(testbed: int, org: int, mode: str, period_start: str, report: int) -> list[str]:
    """One report's transaction (and, for the seed, its count after the commit)."""
    metrics = (
        "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
        " SELECT rb.id, m.id, random() FROM active_series.report_benchmark AS rb,"
        " bench_shapes.testbed AS s, unnest(s.measure_ids) AS m (id)"
        f" WHERE rb.report_id = {report} AND s.testbed_id = {testbed} ORDER BY rb.id, m.id"
    )
    if mode == "seed":
        metrics = (
            f"WITH m AS ({metrics} RETURNING report_benchmark_id, measure_id)"
            " INSERT INTO bench_baseline.series_last_seen AS l"
            " (organization_id, testbed_id, benchmark_id, measure_id, last_seen)"
            f" SELECT {org}, {testbed}, rb.benchmark_id, m.measure_id, now()"
            " FROM m INNER JOIN active_series.report_benchmark AS rb"
            " ON rb.id = m.report_benchmark_id ORDER BY rb.benchmark_id, m.measure_id"
            " ON CONFLICT (testbed_id, benchmark_id, measure_id)"
            " DO UPDATE SET last_seen = greatest(l.last_seen, excluded.last_seen)"
        )
    lines = [
        "BEGIN",
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
        " SELECT s.project_id, s.testbed_id, now(), now() FROM bench_shapes.testbed AS s"
        f" WHERE s.testbed_id = {testbed}",
        "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
        f" SELECT {report}, b.id, 0 FROM bench_shapes.testbed AS s,"
        f" unnest(s.benchmark_ids) AS b (id) WHERE s.testbed_id = {testbed} ORDER BY b.id",
        metrics,
        "COMMIT",
    ]
    if mode == "seed":
        lines.append(
            "SELECT count(*) FROM bench_baseline.series_last_seen"
            f" WHERE organization_id = {org} AND last_seen >= '{period_start}'::timestamptz"
        )
    return lines


def prefix(mode: str, first_id: int) -> list[str]:
    """A run starts from emptied report tables, its ids from first_id, tracking per mode."""
    action = "ENABLE" if mode == "on" else "DISABLE"
    return [
        "TRUNCATE active_series.metric, active_series.report_benchmark, active_series.report",
        f"SELECT setval(pg_get_serial_sequence('active_series.report', 'id'), {first_id})",
        "SELECT setval(pg_get_serial_sequence('active_series.report_benchmark', 'id'),"
        f" {first_id})",
        f"ALTER TABLE active_series.metric {action} TRIGGER active_series_metric_inserted",
        "ALTER TABLE active_series.metric DISABLE TRIGGER bench_row_upsert",
    ]


def write_scripts(
    dsn: str, shape: Shape, scenarios: list[str], n: int, out: Path, name: str, start: int
) -> list[tuple[str, str, int, Path]]:
    """The (scenario, mode, reports, script) runs of one database."""
    runs = []
    with connect(dsn) as conn:
        conn.execute(BASELINE_SQL)
        conn.execute(SCHEMA_SQL)
        bench = Bench(conn, dsn, "pgbench", out)
        bench.create_shape(shape)
        period_start = bench.period_start[shape.name]
        for scenario in scenarios:
            for mode in MODES:
                for reports in (n, 2 * n):
                    per_org = math.ceil(reports / ORGANIZATIONS)
                    testbeds = bench.new_testbeds(shape, per_org * ORGANIZATIONS)[:reports]
                    bench.queue(testbeds)
                    if scenario != "first":
                        bench.prepare_reports(
                            previous_period=scenario == "rollover",
                            track=mode == "on",
                            baseline=mode == "seed",
                        )
                    orgs = dict(
                        conn.execute(
                            "SELECT testbed_id, organization_id FROM bench_shapes.testbed"
                            " WHERE testbed_id = ANY(%s)",
                            (testbeds,),
                        ).fetchall()
                    )
                    first_id = (start + len(runs) + 1) * 1_000_000
                    lines = prefix(mode, first_id)
                    for i, testbed in enumerate(testbeds):
                        lines += report_lines(
                            testbed, orgs[testbed], mode, period_start, first_id + 1 + i
                        )
                    script = out / f"{name}-{scenario}-{mode}-{reports}.sql"
                    script.write_text("\n".join(lines) + "\n")
                    runs.append((scenario, mode, reports, script))
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    return runs


def count(postgres: str, data: Path, database: str, script: Path) -> int:
    """Instructions of one script's statements in a single-user backend."""
    command = [
        "valgrind",
        "--tool=callgrind",
        *(f"--toggle-collect={f}" for f in COUNTED),
        f"--callgrind-out-file={script.with_suffix('.cg')}",
        postgres,
        "--single",
        "-D",
        str(data),
        "-c",
        "fsync=off",
        database,
    ]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    with script.open() as stdin:
        done = subprocess.run(command, stdin=stdin, capture_output=True, text=True, check=False)
    found = re.search(r"Collected\s*:\s*([\d,]+)", done.stderr)
    if done.returncode != 0 or not found or "ERROR" in done.stdout:
        raise SystemExit(f"{script}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", metavar="NAME=PATH", help="install scripts")
    parser.add_argument("--shape", type=Shape.parse, default=Shape.parse("1x1"))
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("-n", type=int, default=int(os.environ.get("N", "50")), help="reports")
    parser.add_argument("--keep", type=Path, help="keep the scripts and callgrind files here")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    built = (
        Path(__file__).parent.parent / f"python/active_series/sql/active_series--{__version__}.sql"
    )
    scripts = dict(s.split("=", 1) for s in args.scripts) or {"built": str(built)}

    out = args.keep or Path(tempfile.mkdtemp(prefix="instructions-"))
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o777)
    server = TestServer(postgres_args="-h 127.0.0.1 -F -c logging_collector=off")
    runs: list[tuple[str, str, str, int, Path]] = []
    try:
        for name, path in scripts.items():
            dsn = install(server.dsn(), name, Path(path))
            made = write_scripts(dsn, args.shape, args.scenarios, args.n, out, name, len(runs))
            runs += [(name, *run) for run in made]
        # stopped by hand: TestServer.stop would remove the data directory
        server.child_process.send_signal(signal.SIGINT)
        server.child_process.wait()
        data = Path(server.base_dir) / "data"
        # builds alternate run by run
        counts = {
            (name, scenario, mode, reports): count(server.postgres, data, name, script)
            for name, scenario, mode, reports, script in sorted(
                runs, key=lambda r: (r[1], r[2], r[3], r[0])
            )
        }
    finally:
        shutil.rmtree(server.base_dir, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)

    print(f"thousands of instructions per {args.shape.name} report, (I(2N) - I(N)) / N, N={args.n}")
    for scenario in args.scenarios:
        for name in scripts:
            per = {
                m: (counts[(name, scenario, m, 2 * args.n)] - counts[(name, scenario, m, args.n)])
                / args.n
                / 1000
                for m in MODES
            }
            cells = "  ".join(f"{m} {per[m]:7.1f}" for m in MODES)
            extra = "  ".join(f"{m}-off {per[m] - per['off']:6.1f}" for m in ("on", "seed"))
            print(f"{scenario:8} {name:8} {cells}   {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
