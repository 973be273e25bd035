"""Ingest shape matrix: tracking cost per report shape, scenario, mode and server setting.

A report shape is B benchmarks × M measures (B·M metrics per report). Every shape gets its own
20 organizations, each with one project holding the shape's B benchmarks and M measures; every
report of a testbed carries the whole shape (one metric per benchmark and measure). Each
report is one transaction of three statements, the way a client ingests a report:
``INSERT INTO report …`` (which also names the testbed's organization, as a request's context
would), ``INSERT INTO report_benchmark … SELECT``, ``INSERT INTO metric … SELECT`` (no
``variant_id``: the column's default), driven by real pgbench.

Scenarios (what the testbed already reported):

* ``steady``: the 5 testbeds of each organization (100 per shape) reported the same shape in
  the current billing period before the runs; the run cycles through them for ``--seconds``.
* ``first``: every report goes to a testbed that never reported: the first report of each
  (testbed, benchmark). Fresh testbeds are created in the same organizations for every run.
* ``rollover``: the first report of each testbed after its billing period changed: fresh
  testbeds whose only history is one report of the same shape in the previous billing period,
  written before the run by a privileged session (``SET active_series.allow_explicit_created
  = on``, ``created`` one hour before the start of the organization's current period, from
  ``current_period()``), recorded by the baseline's upsert for the baseline modes and by
  active_series for the tracked run (the other modes would not read it), then the report,
  report_benchmark and metric tables are emptied as before any run.

Every scenario runs at ``--clients`` (default 2); first and rollover also at
``--fresh-clients`` (default 8, more clients than a small machine's cores: contention), with
modes off, on and seed only. ``first`` and ``rollover`` runs ingest a fixed number of reports
(each testbed once, the same number in both settings); ``steady`` runs last ``--seconds``.
Every run starts from emptied report, report_benchmark and metric tables and a CHECKPOINT;
each pgbench client's first ``--warmup`` transactions (to testbeds of the same kind) warm its
connection's caches and are not counted: the time per report is the wall time of the counted
transactions (from pgbench's per-transaction log) over their number.

Settings (``--settings``): every cell runs in both, side by side: in each repeat both
settings in turn (their order alternating between repeats), switched by ``ALTER SYSTEM`` and
``pg_reload_conf()`` (all reload settings) and confirmed by ``SHOW`` on a new connection
before the runs; each result row records what ``SHOW`` gave.

* ``production``: fsync, synchronous_commit and full_page_writes on (the headline);
* ``cpu-only``: all three off (the disk taken out).

A server started with ``-F`` (fsync off on its command line, as the test servers are) cannot
switch: ``--server`` measures on a throwaway local server of its own (database ``bench``,
removed at the end), as ``make bench`` does. Against ``--dsn`` the settings are reset
(``ALTER SYSTEM RESET``) at the end.

Modes, in rotating order within each repeat and setting, on the same data:

* ``off``: tracking off (``active_series_metric_inserted`` disabled): the reference;
* ``on``: active_series tracking;
* ``seed``: the seed as it shipped, tracking off: its per-series ``last_seen`` upsert inside
  the ingest statement (the metric INSERT as a data-modifying CTE feeding ``INSERT INTO
  series_last_seen … ON CONFLICT DO UPDATE SET last_seen = greatest(…)``), then after the
  commit, on the same connection, its count of the organization's active series
  (``SELECT count(*) … WHERE organization_id = :org AND last_seen >= <period start>``, a range
  scan of the ``(organization_id, last_seen)`` index);
* ``upsert``: tracking off, that per-series upsert alone as one set-based statement at the
  end of the ingest transaction (no count);
* ``row``: tracking off, a plain ``FOR EACH ROW`` trigger on metric doing that upsert.

The baseline table (bench/ingest.py) keys on (testbed, benchmark, measure) and has no
periods: for the baseline modes a rollover is a steady report and a first report inserts new
rows. It holds the steady testbeds' series; a first/rollover run's rows are deleted after it,
so every organization's count scans the same rows whatever ran before. Figures per cell and
setting: the median time per report of the repeats, and the ratio off ÷ mode (the mode's
throughput relative to tracking off); the range of the per-repeat ratios is the noise. Next to
it, as a cross-check that other load on a shared machine disturbs less: the CPU time per
transaction of the server (the postmaster, its children and the backends it reaped; local
servers only) and of pgbench.

With ``--profile SHAPE SCENARIO`` it measures one cell instead (1 client unless --clients; in
the server's settings, or the first of --settings): tracking off, then on with
``track_functions = all``, and prints each active_series function's calls, total and self
time per report (``pg_stat_user_functions``) and the rows written per report into the
extension's own tables (``pg_stat_user_tables``).

    python bench/shapes.py --server                        # the matrix, ~12 min
    python bench/shapes.py --server --quick                # one short repeat, ~3 min
    python bench/shapes.py --server --profile 200x3 first
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
    throwaway_server,
    write_result,
)
from ingest import BASELINE_SQL, DROP_BASELINE_SQL, UPSERT_SQL, find_pgbench, set_mode
from psycopg import sql

MODES = ("off", "on", "seed", "upsert", "row")
# modes that write the baseline's last_seen table
BASELINE_MODES = ("seed", "upsert", "row")
# modes of the first/rollover cells at more clients (--fresh-clients): the must compares on
# with off; the seed beside them as context (upsert and row: at --clients only)
CONTENTION_MODES = ("off", "on", "seed")
SCENARIOS = ("steady", "first", "rollover")
DEFAULT_SHAPES = ("200x3", "50x1", "10x60", "1x1")
ORGANIZATIONS = 20
STEADY_TESTBEDS = 5  # per organization
# Reports per first/rollover run (a multiple of the organizations), by metrics per report,
# the same in both settings: enough that the tracking-off run of the smallest shapes lasts
# about half a second or more. (Production runs of 500 one-metric reports, a third of a
# second with this machine's commit flush, gave repeats from 0.57 to 0.98 of tracking off.)
FRESH_REPORTS = ((600, 100), (50, 300), (10, 600), (1, 1500))

# The server settings every cell is measured in, side by side (ALTER SYSTEM + reload; all
# three are sighup settings). "production" is the headline; "cpu-only" takes the disk out.
SETTINGS: dict[str, dict[str, str]] = {
    "production": {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"},
    "cpu-only": {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
}

# Goals (ratio off ÷ on, i.e. throughput relative to tracking off), production setting.
STEADY_GOAL = 0.90
FRESH_GOAL = 0.80

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS bench_shapes CASCADE;
CREATE SCHEMA bench_shapes;
CREATE TABLE bench_shapes.testbed (
    testbed_id bigint PRIMARY KEY,
    project_id bigint NOT NULL,
    organization_id bigint NOT NULL,
    benchmark_ids bigint[] NOT NULL,
    measure_ids bigint[] NOT NULL
);
-- the testbeds of the next run, in the order the clients take them
CREATE TABLE bench_shapes.queue (pos integer PRIMARY KEY, testbed_id bigint NOT NULL);
CREATE SEQUENCE bench_shapes.pos;
"""

DROP_SCHEMA_SQL = "DROP SCHEMA IF EXISTS bench_shapes CASCADE"

# One report per transaction; the testbed is the queue's next one (round robin). The first
# statement also names the testbed's organization (:org), as the request's context would.
SCRIPT = """\
BEGIN;
WITH q AS MATERIALIZED (
    SELECT s.project_id, s.testbed_id, s.organization_id
    FROM bench_shapes.queue AS q
    INNER JOIN bench_shapes.testbed AS s ON s.testbed_id = q.testbed_id
    WHERE q.pos = (SELECT (nextval('bench_shapes.pos') - 1) % {queue} + 1)
), r AS (
    INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)
    SELECT q.project_id, q.testbed_id, now(), now() FROM q
    RETURNING id, testbed_id
)
SELECT r.id AS report_id, r.testbed_id AS tb, q.organization_id AS org
FROM r CROSS JOIN q \\gset
INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
    SELECT :report_id, b.id, 0
    FROM bench_shapes.testbed AS s, unnest(s.benchmark_ids) AS b (id)
    WHERE s.testbed_id = :tb
    ORDER BY b.id;
{metrics};
{after}END;
{count}"""

METRICS_SQL = """\
INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
    SELECT rb.id, m.id, random()
    FROM active_series.report_benchmark AS rb,
        bench_shapes.testbed AS s, unnest(s.measure_ids) AS m (id)
    WHERE rb.report_id = :report_id AND s.testbed_id = :tb
    ORDER BY rb.id, m.id"""

# The seed as it shipped, 1: its per-series upsert inside the ingest statement (the metric
# INSERT carries it as a data-modifying CTE), stamped with the report's time.
SEED_METRICS_SQL = """\
WITH m AS (
{metrics}
    RETURNING report_benchmark_id, measure_id
)
INSERT INTO bench_baseline.series_last_seen AS l
    (organization_id, testbed_id, benchmark_id, measure_id, last_seen)
SELECT :org, :tb, rb.benchmark_id, m.measure_id, now()
FROM m INNER JOIN active_series.report_benchmark AS rb ON rb.id = m.report_benchmark_id
ORDER BY rb.benchmark_id, m.measure_id
ON CONFLICT (testbed_id, benchmark_id, measure_id)
DO UPDATE SET last_seen = greatest(l.last_seen, excluded.last_seen)"""

# The seed as it shipped, 2: after each report, on the request's connection, its count of
# the organization's active series: a range scan of (organization_id, last_seen).
SEED_COUNT_SQL = """\
SELECT count(*) FROM bench_baseline.series_last_seen
WHERE organization_id = :org AND last_seen >= '{period_start}'::timestamptz;
"""


def script_text(mode: str, queue: int, period_start: str) -> str:
    """The pgbench script of one report in ``mode`` over a queue of ``queue`` testbeds."""
    metrics, after, count = METRICS_SQL, "", ""
    if mode == "seed":
        metrics = SEED_METRICS_SQL.format(metrics="    " + metrics.replace("\n", "\n    "))
        count = SEED_COUNT_SQL.format(period_start=period_start)
    elif mode == "upsert":
        after = UPSERT_SQL.format(report_id=":report_id").replace("\n", "\n    ") + ";\n"
    return SCRIPT.format(queue=queue, metrics=metrics, after=after, count=count)


# The reports of the queued testbeds, all in one transaction (preparation, not measured).
PREPARE_SQL = """\
WITH r AS (
    INSERT INTO active_series.report
        (project_id, testbed_id, start_time, end_time, created)
    SELECT s.project_id, s.testbed_id, t.at, t.at, t.at
    FROM bench_shapes.queue AS q
    INNER JOIN bench_shapes.testbed AS s ON s.testbed_id = q.testbed_id
    CROSS JOIN LATERAL (
        SELECT {created} AS at
    ) AS t
    ORDER BY q.pos
    RETURNING id, testbed_id
)
SELECT array_agg(id ORDER BY id) FROM r"""


# one hour before the current billing period of testbed s's organization
PERIOD_BEFORE = (
    "(SELECT c.period_start - interval '1 hour'"
    " FROM active_series.current_period(s.organization_id) AS c)"
)

# The baseline's rows of one report of its shape per queued testbed, at {created} (what the
# upsert of such a report writes, without the report).
BASELINE_HISTORY_SQL = """\
INSERT INTO bench_baseline.series_last_seen AS l
    (organization_id, testbed_id, benchmark_id, measure_id, last_seen)
SELECT s.organization_id, s.testbed_id, b.id, m.id, t.at
FROM bench_shapes.queue AS q
INNER JOIN bench_shapes.testbed AS s ON s.testbed_id = q.testbed_id
CROSS JOIN LATERAL (SELECT {created} AS at) AS t
CROSS JOIN unnest(s.benchmark_ids) AS b (id)
CROSS JOIN unnest(s.measure_ids) AS m (id)
ORDER BY 2, 3, 4
ON CONFLICT (testbed_id, benchmark_id, measure_id)
DO UPDATE SET last_seen = greatest(l.last_seen, excluded.last_seen)"""


@dataclass(frozen=True)
class Shape:
    benchmarks: int
    measures: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        match = re.fullmatch(r"(\d+)[x×](\d+)", text.strip())
        if not match or not int(match.group(1)) or not int(match.group(2)):
            raise argparse.ArgumentTypeError(f"shape {text!r}: expected BENCHMARKSxMEASURES")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def name(self) -> str:
        return f"{self.benchmarks}x{self.measures}"

    @property
    def metrics(self) -> int:
        return self.benchmarks * self.measures

    def fresh_reports(self, scale: float) -> int:
        base = next(n for at_least, n in FRESH_REPORTS if self.metrics >= at_least)
        return max(ORGANIZATIONS, round(base * scale / ORGANIZATIONS) * ORGANIZATIONS)


def target(scenario: str) -> float:
    """The goal of a cell's on/off ratio (production setting)."""
    return STEADY_GOAL if scenario == "steady" else FRESH_GOAL


# ----------------------------------------------------------------------------- state
class Bench:
    """The organizations, projects and testbeds of the shapes, and the runs on them."""

    def __init__(self, conn: psycopg.Connection, dsn: str, pgbench: str, tmp: Path) -> None:
        self.conn = conn
        self.dsn = dsn
        self.pgbench = pgbench
        self.tmp = tmp
        self.tag = time.strftime("%Y%m%d%H%M%S")
        self.projects: dict[str, list[int]] = {}
        self.steady: dict[str, list[int]] = {}
        # the start of the shape's organizations' current billing period (the seed's count)
        self.period_start: dict[str, str] = {}
        self.batch = 0
        self.cpu = ServerCpu(conn)

    def create_shape(self, shape: Shape) -> None:
        """20 organizations with one project each, the shape's benchmarks and measures."""
        conn = self.conn
        projects = []
        for i in range(ORGANIZATIONS):
            org = one(
                conn,
                "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id",
                (f"shapes-{self.tag}-{shape.name}-{i}",),
            )
            project = one(
                conn,
                "INSERT INTO active_series.project (organization_id, name, visibility)"
                " VALUES (%s, %s, 'private') RETURNING id",
                (org, f"suite-{shape.name}"),
            )
            projects.append(project)
            for table, n in (("benchmark", shape.benchmarks), ("measure", shape.measures)):
                conn.execute(
                    f"INSERT INTO active_series.{table} (project_id, name)"
                    " SELECT %s, %s || '-' || i FROM generate_series(1, %s) AS i",
                    (project, table, n),
                )
        self.projects[shape.name] = projects
        starts = conn.execute(
            "SELECT DISTINCT c.period_start::text FROM active_series.project AS p,"
            " active_series.current_period(p.organization_id) AS c WHERE p.id = ANY(%s)",
            (projects,),
        ).fetchall()
        if len(starts) != 1:
            raise SystemExit(f"shape {shape.name}: organizations in different periods {starts}")
        self.period_start[shape.name] = starts[0][0]
        self.steady[shape.name] = self.new_testbeds(shape, STEADY_TESTBEDS * ORGANIZATIONS)
        # the steady testbeds report the shape once in the current period, every mechanism on
        self.queue(self.steady[shape.name])
        self.prepare_reports(previous_period=False)

    def new_testbeds(self, shape: Shape, n: int) -> list[int]:
        """n fresh testbeds spread over the shape's organizations, interleaved."""
        self.batch += 1
        per_org = math.ceil(n / ORGANIZATIONS)
        rows = self.conn.execute(
            """
            WITH p AS (
                SELECT p.id AS project_id, p.organization_id, o.ord
                FROM unnest(%(projects)s::bigint[]) WITH ORDINALITY AS o (id, ord)
                INNER JOIN active_series.project AS p ON p.id = o.id
            ), t AS (
                INSERT INTO active_series.testbed (project_id, name)
                SELECT p.project_id, %(prefix)s || i
                FROM p CROSS JOIN generate_series(1, %(per_org)s) AS i
                RETURNING id, project_id, name
            ), s AS (
                INSERT INTO bench_shapes.testbed
                    (testbed_id, project_id, organization_id, benchmark_ids, measure_ids)
                SELECT t.id, t.project_id, p.organization_id,
                    (SELECT array_agg(b.id ORDER BY b.id) FROM active_series.benchmark AS b
                     WHERE b.project_id = t.project_id),
                    (SELECT array_agg(m.id ORDER BY m.id) FROM active_series.measure AS m
                     WHERE m.project_id = t.project_id)
                FROM t INNER JOIN p ON p.project_id = t.project_id
                RETURNING testbed_id
            )
            SELECT t.id
            FROM t INNER JOIN p ON p.project_id = t.project_id
            ORDER BY substring(t.name FROM '[0-9]+$')::int, p.ord
            """,
            {
                "projects": self.projects[shape.name],
                "prefix": f"tb-{self.batch}-",
                "per_org": per_org,
            },
        ).fetchall()
        return [r[0] for r in rows][:n]

    def queue(self, testbeds: list[int]) -> None:
        self.conn.execute("TRUNCATE bench_shapes.queue")
        self.conn.execute(
            "INSERT INTO bench_shapes.queue (pos, testbed_id)"
            " SELECT o.pos, o.id FROM unnest(%s::bigint[]) WITH ORDINALITY AS o (id, pos)",
            (testbeds,),
        )
        self.conn.execute("SELECT setval('bench_shapes.pos', 1, false)")

    def prepare_reports(
        self, previous_period: bool, track: bool = True, baseline: bool = True
    ) -> None:
        """One report of its shape per queued testbed, recorded, with baseline, in the
        baseline's last_seen table (as every baseline mode would have it) and, with track, by
        active_series.

        previous_period: ``created`` one hour before the organization's current billing
        period starts (a privileged, explicit ``created``), else the transaction time.
        Without track, the reports themselves are not needed (a run starts from emptied
        report tables): the baseline's rows are written directly, or nothing at all.
        """
        conn = self.conn
        if not track:
            if baseline:
                conn.execute(
                    BASELINE_HISTORY_SQL.format(
                        created=PERIOD_BEFORE if previous_period else "now()"
                    )
                )
            return
        set_mode(conn, "on")
        created = PERIOD_BEFORE if previous_period else "now()"
        with conn.transaction():
            if previous_period:
                conn.execute("SET LOCAL active_series.allow_explicit_created = on")
            reports = one(conn, PREPARE_SQL.format(created=created))
            conn.execute(
                "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
                " SELECT r.id, b.id, 0 FROM active_series.report AS r"
                " INNER JOIN bench_shapes.testbed AS s ON s.testbed_id = r.testbed_id,"
                " unnest(s.benchmark_ids) AS b (id)"
                " WHERE r.id = ANY(%s) ORDER BY r.id, b.id",
                (reports,),
            )
            conn.execute(
                "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
                " SELECT rb.id, m.id, random() FROM active_series.report_benchmark AS rb"
                " INNER JOIN active_series.report AS r ON r.id = rb.report_id"
                " INNER JOIN bench_shapes.testbed AS s ON s.testbed_id = r.testbed_id,"
                " unnest(s.measure_ids) AS m (id)"
                " WHERE rb.report_id = ANY(%s) ORDER BY rb.id, m.id",
                (reports,),
            )
            if baseline:
                # the baseline's table, as the seed (or the upsert, or the row trigger) would
                # have it
                conn.execute(
                    UPSERT_SQL.replace("WHERE r.id = {report_id}", "WHERE r.id = ANY(%s)"),
                    (reports,),
                )

    def reset(self) -> None:
        self.conn.execute(
            "TRUNCATE active_series.metric, active_series.report_benchmark, active_series.report"
        )
        self.conn.execute("CHECKPOINT")

    # ------------------------------------------------------------------------- one run
    def run(
        self,
        shape: Shape,
        scenario: str,
        mode: str,
        clients: int,
        *,
        reports: int,
        seconds: float,
        warmup: int,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Prepare the scenario's testbeds, set the mode and run pgbench; one result."""
        if scenario == "steady":
            testbeds = self.steady[shape.name]
            self.queue(testbeds)
        else:
            # each transaction takes the next fresh testbed; room for retries
            n = reports + clients * warmup + 2 * clients
            testbeds = self.new_testbeds(shape, math.ceil(n / ORGANIZATIONS) * ORGANIZATIONS)
            self.queue(testbeds)
            if scenario == "rollover":
                # tracking's history matters to the tracked run only (the others run with
                # it off), the baseline table's to the baseline modes: recording them for
                # the other modes too would only lengthen the preparation
                self.prepare_reports(
                    previous_period=True, track=mode == "on", baseline=mode in BASELINE_MODES
                )
        self.reset()
        set_mode(self.conn, mode)
        script = self.tmp / f"shape_{shape.name}_{mode}.sql"
        script.write_text(script_text(mode, len(testbeds), self.period_start[shape.name]))
        if scenario == "steady":
            limit = [f"--time={max(1, math.ceil(seconds))}"]
        else:
            limit = [f"--transactions={warmup + math.ceil(reports / clients)}"]
        result = run_pgbench(
            self.pgbench,
            self.dsn,
            script,
            clients,
            limit,
            warmup,
            self.tmp,
            env=env,
            conn=self.conn,
            cpu=self.cpu,
        )
        if scenario != "steady" and mode in BASELINE_MODES:
            # the baseline table keeps the steady testbeds' series only: each organization's
            # count in a run scans the steady series and the run's own, whatever ran before
            self.conn.execute(
                "DELETE FROM bench_baseline.series_last_seen WHERE testbed_id = ANY(%s)",
                (testbeds,),
            )
            self.conn.execute("VACUUM bench_baseline.series_last_seen")
        return result


# ----------------------------------------------------------------------------- CPU time
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


class ServerCpu:
    """CPU seconds used by a local server: the postmaster, its live children and the
    children it has reaped (backends of finished connections). None when the server is not
    on this machine (or /proc is not readable)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.postmaster: int | None = None
        backend = one(conn, "SELECT pg_backend_pid()")
        stat = _proc_stat(backend)
        try:
            comm = Path(f"/proc/{backend}/comm").read_text().strip()
        except OSError:
            comm = ""
        if stat is not None and comm.startswith("postgres"):
            self.postmaster = int(stat[1])

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        pm = _proc_stat(self.postmaster)
        if pm is None:
            return None
        ticks = sum(int(x) for x in pm[11:15])  # utime, stime, cutime, cstime
        with os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit():
                    stat = _proc_stat(entry.name)
                    if stat is not None and int(stat[1]) == self.postmaster:
                        ticks += int(stat[11]) + int(stat[12])
        return ticks / CLOCK_TICKS


def wait_for_pgbench_backends(conn: psycopg.Connection, timeout: float = 10.0) -> None:
    """Until the run's backends have exited (and their CPU time is the postmaster's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not one(
            conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'"
        ):
            break
        time.sleep(0.01)
    time.sleep(0.05)


# ----------------------------------------------------------------------------- pgbench
def run_pgbench(
    binary: str,
    dsn: str,
    script: Path,
    clients: int,
    limit: list[str],
    warmup: int,
    tmp: Path,
    env: dict[str, str] | None = None,
    conn: psycopg.Connection | None = None,
    cpu: ServerCpu | None = None,
) -> dict[str, Any]:
    """Run pgbench with a per-transaction log; time per report over the counted ones, and
    the CPU time (server and pgbench) per transaction over all of them."""
    import resource

    logdir = Path(tempfile.mkdtemp(dir=tmp))
    cmd = [
        binary,
        "--no-vacuum",
        f"--client={clients}",
        f"--jobs={clients}",
        *limit,
        "--max-tries=10",
        "--log",
        f"--log-prefix={logdir / 'tx'}",
        f"--file={script}",
        dsn,
    ]
    server_before = cpu.seconds() if cpu else None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_before = usage.ru_utime + usage.ru_stime
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = usage.ru_utime + usage.ru_stime - client_before
    if proc.returncode != 0:
        raise SystemExit(f"pgbench failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    server_cpu = None
    if cpu and conn is not None and server_before is not None:
        wait_for_pgbench_backends(conn)
        after = cpu.seconds()
        server_cpu = after - server_before if after is not None else None
    starts: list[float] = []
    ends: list[float] = []
    failed = retried = transactions = 0
    for path in logdir.iterdir():
        for line in path.read_text().splitlines():
            fields = line.split()
            tx_no = int(fields[1])
            transactions += 1
            if not fields[2].isdigit():  # failed or skipped
                failed += 1
                continue
            if len(fields) > 6:
                retried += int(fields[6])
            if tx_no <= warmup:  # numbered from 1
                continue
            end = int(fields[4]) + int(fields[5]) / 1e6
            ends.append(end)
            starts.append(end - int(fields[2]) / 1e6)
    for path in logdir.iterdir():
        path.unlink()
    logdir.rmdir()
    if not ends:
        raise SystemExit(f"pgbench ran no counted transaction:\n{proc.stdout}")
    wall = max(ends) - min(starts)
    return {
        "reports": len(ends),
        "seconds": wall,
        "per_report": wall / len(ends),
        # every transaction of the run, the warm-up ones included
        "transactions": transactions,
        "server_cpu_seconds": server_cpu,
        "client_cpu_seconds": client_cpu,
        "cpu_per_report": (server_cpu + client_cpu) / transactions
        if server_cpu is not None and transactions
        else None,
        "failed": failed,
        "retried": retried,
    }


# ----------------------------------------------------------------------------- settings
def show_settings(dsn: str) -> dict[str, str]:
    """The settings a new connection (as pgbench's) gets."""
    with connect(dsn) as conn:
        return {name: one(conn, f"SHOW {name}") for name in SETTINGS["production"]}


def apply_settings(conn: psycopg.Connection, dsn: str, name: str) -> dict[str, str]:
    """ALTER SYSTEM to the setting ``name``, reload, and wait until a new connection shows
    it; returns what SHOW says."""
    wanted = SETTINGS[name]
    for key, value in wanted.items():
        conn.execute(
            sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(key), sql.Literal(value))
        )
    conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10.0
    while (shown := show_settings(dsn)) != wanted:
        if time.monotonic() > deadline:
            sources = conn.execute(
                "SELECT name, setting, source FROM pg_settings WHERE name = ANY(%s)",
                (list(wanted),),
            ).fetchall()
            raise SystemExit(
                f"setting {name} did not take: SHOW gives {shown} (pg_settings: {sources});"
                " a server started with -F (fsync off on its command line, as the test servers"
                " are) cannot switch: use --server"
            )
        time.sleep(0.05)
    return shown


def reset_settings(conn: psycopg.Connection) -> None:
    for key in SETTINGS["production"]:
        conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(key)))
    conn.execute("SELECT pg_reload_conf()")


# ----------------------------------------------------------------------------- matrix
@dataclass(frozen=True)
class Cell:
    scenario: str
    clients: int
    modes: tuple[str, ...]


def cells(args: argparse.Namespace) -> list[Cell]:
    """Every scenario at each of --clients, then first and rollover at each of
    --fresh-clients (the contention cells: off, on and the seed)."""
    modes = ("off", *[m for m in MODES if m in args.modes and m != "off"])
    out = [Cell(s, c, modes) for c in args.clients for s in args.scenarios]
    fresh = tuple(m for m in modes if m in CONTENTION_MODES)
    out += [
        Cell(s, c, fresh)
        for c in args.fresh_clients
        if c not in args.clients
        for s in args.scenarios
        if s != "steady"
    ]
    return out


def matrix(
    args: argparse.Namespace, bench: Bench, shapes: list[Shape], settings: list[str]
) -> list[dict]:
    """Every cell in every setting: per repeat, the settings in turn (their order alternating
    between repeats), the modes in rotating order within each."""
    results = []
    current: str | None = None
    shown: dict[str, dict[str, str]] = {}
    for shape in shapes:
        log(f"shape {shape.name}: creating {ORGANIZATIONS} organizations")
        bench.create_shape(shape)
        for cell in cells(args):
            modes = list(cell.modes)
            runs: dict[str, dict[str, list[dict]]] = {s: {m: [] for m in modes} for s in settings}
            for repeat in range(args.repeats):
                order = settings if repeat % 2 == 0 else settings[::-1]
                for setting in order:
                    if setting != current:
                        seen = apply_settings(bench.conn, bench.dsn, setting)
                        if shown.setdefault(setting, seen) != seen:
                            raise SystemExit(f"setting {setting}: {seen} != {shown[setting]}")
                        current = setting
                    k = repeat % len(modes)
                    for mode in modes[k:] + modes[:k]:
                        r = bench.run(
                            shape,
                            cell.scenario,
                            mode,
                            cell.clients,
                            reports=shape.fresh_reports(args.scale),
                            seconds=args.seconds,
                            warmup=args.warmup,
                        )
                        runs[setting][mode].append(r)
                        log(
                            f"  {shape.name} {cell.scenario} clients={cell.clients} {setting}"
                            f" repeat={repeat + 1} {mode}: {r['reports']} reports,"
                            f" {r['per_report'] * 1e3:.2f} ms/report"
                            + (
                                f", CPU {r['cpu_per_report'] * 1e3:.2f} ms/report"
                                if r["cpu_per_report"]
                                else ""
                            )
                        )
            for setting in settings:
                reports = shape.fresh_reports(args.scale)
                results.append(
                    summarize(args, shape, cell, reports, setting, shown[setting], runs[setting])
                )
                r = results[-1]
                log(
                    f"{shape.name} {cell.scenario} clients={cell.clients} {setting}: "
                    + ", ".join(f"{m} {r['ratio_to_off'][m]:.2f}" for m in modes[1:])
                    + (
                        "; CPU: "
                        + ", ".join(f"{m} {r['cpu_ratio_to_off'][m]:.2f}" for m in modes[1:])
                        if r["cpu_ratio_to_off"]
                        else ""
                    )
                )
    return results


def summarize(
    args: argparse.Namespace,
    shape: Shape,
    cell: Cell,
    reports: int,
    setting: str,
    shown: dict[str, str],
    runs: dict[str, list[dict]],
) -> dict[str, Any]:
    """One result row: a cell in one setting."""
    modes = list(runs)
    med = {m: median([r["per_report"] for r in runs[m]]) for m in modes}
    cpu_med = (
        {m: median([r["cpu_per_report"] for r in runs[m]]) for m in modes}
        if all(r["cpu_per_report"] for m in modes for r in runs[m])
        else None
    )
    return {
        "shape": shape.name,
        "benchmarks": shape.benchmarks,
        "measures": shape.measures,
        "metrics_per_report": shape.metrics,
        "scenario": cell.scenario,
        "clients": cell.clients,
        "setting": setting,
        # what SHOW gave a new connection in this setting
        "server_settings": shown,
        "repeats": args.repeats,
        "run": f"{args.seconds:g} s" if cell.scenario == "steady" else f"{reports} reports",
        "runs": runs,
        "median_seconds_per_report": med,
        "ratio_to_off": {m: med["off"] / med[m] for m in modes},
        "median_cpu_seconds_per_report": cpu_med,
        "cpu_ratio_to_off": {m: cpu_med["off"] / cpu_med[m] for m in modes} if cpu_med else None,
        # off ÷ mode within each repeat (the spread of the pairs)
        "paired_ratios": {
            m: [
                a["per_report"] / b["per_report"] for a, b in zip(runs["off"], runs[m], strict=True)
            ]
            for m in modes
        },
        "target": target(cell.scenario),
    }


def print_matrix(results: list[dict]) -> None:
    modes = [m for m in MODES if m != "off"]
    print(
        f"{'shape':>6} {'scenario':>8} {'clients':>7} {'setting':>10} {'ms off':>8} "
        + " ".join(f"{m + '/off':>10}" for m in modes)
        + f" {'goal':>5}"
    )
    for r in results:
        ratio = r["ratio_to_off"]
        print(
            f"{r['shape']:>6} {r['scenario']:>8} {r['clients']:>7} {r['setting']:>10}"
            f" {r['median_seconds_per_report']['off'] * 1e3:>8.2f} "
            + " ".join(f"{ratio[m]:>10.2f}" if m in ratio else f"{'–':>10}" for m in modes)
            + f" {r['target']:>5.2f}"
        )


# ----------------------------------------------------------------------------- profile
PROFILE_SQL = """
SELECT f.funcname, f.calls, f.total_time, f.self_time,
    p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype AS is_trigger
FROM pg_stat_user_functions AS f
INNER JOIN pg_catalog.pg_proc AS p ON p.oid = f.funcid
WHERE f.schemaname = 'active_series'
ORDER BY f.self_time DESC
"""


# rows written per report into the extension's own tables (cache, history, counts, outbox)
PROFILE_TABLES_SQL = """
SELECT t.relname, t.n_tup_ins, t.n_tup_upd, t.n_tup_hot_upd, t.n_tup_del
FROM pg_stat_user_tables AS t
WHERE t.schemaname = 'active_series' AND t.relname LIKE '\\_%'
    AND t.n_tup_ins + t.n_tup_upd + t.n_tup_del > 0
ORDER BY t.relname
"""


def profile(
    args: argparse.Namespace, bench: Bench, shape: Shape, scenario: str, setting: str
) -> int:
    """One cell with track_functions = all: the active_series functions' times per report."""
    conn = bench.conn
    bench.create_shape(shape)
    reports = shape.fresh_reports(args.scale)
    clients = args.clients[0]
    kw: dict[str, Any] = {
        "reports": reports,
        "seconds": args.seconds,
        "warmup": args.warmup,
    }
    off = bench.run(shape, scenario, "off", clients, **kw)
    # preparation (rollover) records with tracking on: reset the counters after it
    if scenario == "rollover":
        n = reports + clients * args.warmup + 2 * clients
        bench.queue(bench.new_testbeds(shape, math.ceil(n / ORGANIZATIONS) * ORGANIZATIONS))
        bench.prepare_reports(previous_period=True)
    conn.execute("SELECT pg_stat_reset()")
    env = {"PGOPTIONS": (os.environ.get("PGOPTIONS", "") + " -c track_functions=all").strip()}
    on = _profiled_run(bench, shape, scenario, clients, env, kw)
    time.sleep(1.0)  # the pgbench backends flush their statistics as they exit
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(PROFILE_SQL).fetchall()
    n = on["reports"] + clients * args.warmup
    print(
        f"profile {shape.name} {scenario}, {clients} client(s), tracking on:"
        f" {on['reports']} counted reports ({n} with the warm-up ones)"
    )
    print(
        f"time per report: on {on['per_report'] * 1e3:.2f} ms, off"
        f" {off['per_report'] * 1e3:.2f} ms (off ÷ on = {off['per_report'] / on['per_report']:.2f})"
    )
    print("per report, over every transaction of the run (warm-up included):")
    print(
        f"{'function':<34} {'calls/report':>12} {'total ms/report':>16} {'self ms/report':>15}"
        f" {'total ms/call':>14} {'self ms/call':>13}"
    )
    for name, calls, total, self_, _ in rows:
        if not calls:
            continue
        print(
            f"{name:<34} {calls / n:>12.2f} {total / n:>16.3f} {self_ / n:>15.3f}"
            f" {total / calls:>14.4f} {self_ / calls:>13.4f}"
        )
    triggers = sum(total for _, calls, total, _, is_trigger in rows if is_trigger and calls)
    print(
        f"trigger functions (what the triggers call, all nested calls included):"
        f" {triggers / n:.3f} ms/report; on − off: "
        f"{(on['per_report'] - off['per_report']) * 1e3:.3f} ms/report (wall, {clients}"
        " client(s), runs not alternated: context)"
    )
    print("rows written per report into the extension's tables:")
    print(f"{'table':<34} {'inserted':>12} {'updated':>12} {'HOT':>12} {'deleted':>12}")
    for name, ins, upd, hot, dele in conn.execute(PROFILE_TABLES_SQL).fetchall():
        print(f"{name:<34} {ins / n:>12.2f} {upd / n:>12.2f} {hot / n:>12.2f} {dele / n:>12.2f}")
    return 0


def _profiled_run(
    bench: Bench,
    shape: Shape,
    scenario: str,
    clients: int,
    env: dict[str, str],
    kw: dict[str, Any],
) -> dict[str, Any]:
    if scenario != "rollover":
        return bench.run(shape, scenario, "on", clients, env=env, **kw)
    # the testbeds prepared above (before the counters were reset) are the run's
    queued = [r[0] for r in bench.conn.execute("SELECT testbed_id FROM bench_shapes.queue")]
    bench.reset()
    set_mode(bench.conn, "on")
    script = bench.tmp / f"profile_{shape.name}.sql"
    script.write_text(script_text("on", len(queued), bench.period_start[shape.name]))
    limit = [f"--transactions={kw['warmup'] + math.ceil(kw['reports'] / clients)}"]
    return run_pgbench(
        bench.pgbench, bench.dsn, script, clients, limit, kw["warmup"], bench.tmp, env=env
    )


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument(
        "--server",
        action="store_true",
        help="measure on a new throwaway local server (database bench; ignores --dsn) whose "
        "fsync the settings can switch",
    )
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/shapes.json)")
    parser.add_argument(
        "--shapes", type=Shape.parse, nargs="+", default=[Shape.parse(s) for s in DEFAULT_SHAPES]
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        help="server settings to measure every cell in (default both; --profile: the first "
        "given, else the server's own)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        help="pgbench clients of every cell (default 2; --profile: 1)",
    )
    parser.add_argument(
        "--fresh-clients",
        type=int,
        nargs="*",
        default=[8],
        help="pgbench clients of further first and rollover cells, modes off, on and seed "
        "(default 8; none without a value)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2, help="duration of a steady run")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies the reports of a first/rollover run (100 at 200x3 and 10x60; "
        "50x1: 300, production 200; 1x1: 1,500, production 500)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="uncounted first transactions per client"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repeat, 1 s steady runs, a quarter of the reports",
    )
    parser.add_argument(
        "--profile",
        nargs=2,
        metavar=("SHAPE", "SCENARIO"),
        help="profile one cell (tracking on, track_functions = all) instead of the matrix",
    )
    parser.add_argument("--pgbench", help="path of the pgbench binary")
    args = parser.parse_args(argv)
    if not args.clients:
        args.clients = [1] if args.profile else [2]
    if args.quick:
        args.repeats, args.seconds, args.scale = 1, 1.0, args.scale / 4
    binary = find_pgbench(args.pgbench)
    if args.profile:
        settings = (args.settings or [])[:1]
    else:
        settings = list(dict.fromkeys(args.settings or SETTINGS))

    started = time.time()
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(throwaway_server("bench")) if args.server else args.dsn
        conn = stack.enter_context(connect(dsn))
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        info = server_info(conn)
        conn.execute(BASELINE_SQL)
        conn.execute(SCHEMA_SQL)
        bench = Bench(conn, dsn, binary, Path(tmp))
        try:
            if args.profile:
                shape = Shape.parse(args.profile[0])
                if args.profile[1] not in SCENARIOS:
                    raise SystemExit(f"scenario: one of {', '.join(SCENARIOS)}")
                if settings:
                    apply_settings(conn, dsn, settings[0])
                return profile(args, bench, shape, args.profile[1], settings[0] if settings else "")
            results = matrix(args, bench, args.shapes, settings)
        finally:
            if settings:
                reset_settings(conn)
            set_tracking(conn, True)
            conn.execute(DROP_BASELINE_SQL)
            conn.execute(DROP_SCHEMA_SQL)
            bench.reset()

    print_matrix(results)
    write_result(
        "shapes",
        {
            # 2: settings per cell ("setting", "server_settings"), mode seed = the seed as
            # shipped, upsert = its per-series upsert alone
            "format": 2,
            "organizations_per_shape": ORGANIZATIONS,
            "steady_testbeds_per_organization": STEADY_TESTBEDS,
            "repeats": args.repeats,
            "seconds_per_steady_run": args.seconds,
            "warmup_transactions_per_client": args.warmup,
            "quick": args.quick,
            "settings": {name: SETTINGS[name] for name in settings},
            "own_server": args.server,
            "wall_seconds": time.time() - started,
            "server": info,
            "host": host_info(),
            "pgbench": binary,
            "results": results,
        },
        args.out or RESULTS / "shapes.json",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
