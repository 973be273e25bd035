"""Ingest on an application's own schema vs the reference model, side by side.

Two databases on one server: ``<db>_ref`` with the reference model (create_reference_model)
and ``<db>_app`` with schema ``app`` (active_series.devtools.app_schema: its own table and
column names, integer keys on some tables, attached). Both get the same organizations, shapes
and testbeds; each report is one transaction of three statements, as a client writes it (the
run, its benchmarks, their metrics), driven by pgbench. For every shape and scenario, each
repeat runs the reference model and the attached schema alternately, tracking off then on in
each (same order in every repeat), and the figures are medians of the repeats:

* ``off/on`` of each model: the throughput with tracking relative to the same schema
  without it, as in bench/shapes.py: the figure that must be within noise of each other;
* ``added ms``: tracking's time per report (on − off) in each model;
* ``app÷ref off``: the schemas' own difference with tracking off (their indexes and
  foreign keys: the reference model has more), context for the rest.

Scenarios: ``steady`` (testbeds that reported the shape already this period), ``first`` (a new
testbed's first report), ``rollover`` (a testbed's first report of a new billing period: its
only report is from before the period started, written by a privileged loader).

    python bench/attached.py --dsn "dbname=bench"            # ~6 min
    python bench/attached.py --dsn "dbname=bench" --quick    # one short repeat
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from active_series.devtools import app_schema
from common import (
    connect,
    drop_database,
    fresh_database,
    host_info,
    log,
    median,
    one,
    server_info,
    write_result,
)
from ingest import find_pgbench
from shapes import DEFAULT_SHAPES, Shape, run_pgbench

ORGANIZATIONS = 10
STEADY_TESTBEDS = 4  # per organization
SCENARIOS = ("steady", "first", "rollover")


@dataclass(frozen=True)
class Model:
    """One side of the comparison: the statements that write its tables."""

    name: str
    org: str  # -> id, from %(name)s
    project: str  # -> id, from %(org)s
    entities: str  # (kind, table, key, project column) rows
    testbed: str  # -> id, from %(project)s, %(name)s
    report: str  # pgbench: a report of :tb (project :pj) -> :report_id
    report_benchmarks: str  # pgbench
    metrics: str  # pgbench
    backdated: str  # a report of testbed %(tb)s at %(at)s -> id (rollover preparation)
    reset: str  # empty the report tables
    trigger_table: str


REF = Model(
    name="ref",
    org="INSERT INTO active_series.organization (name) VALUES (%(name)s) RETURNING id",
    project="INSERT INTO active_series.project (organization_id, name, visibility)"
    " VALUES (%(org)s, 'suite', 'private') RETURNING id",
    entities="INSERT INTO active_series.{kind} (project_id, name) SELECT %(project)s, 'e' || i"
    " FROM generate_series(1, %(n)s) AS i RETURNING id",
    testbed="INSERT INTO active_series.testbed (project_id, name) VALUES (%(project)s, %(name)s)"
    " RETURNING id",
    report="INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
    " VALUES (:pj, :tb, now(), now()) RETURNING id AS report_id \\gset",
    report_benchmarks="INSERT INTO active_series.report_benchmark (report_id, benchmark_id,"
    " iteration) SELECT :report_id, b.id, 0 FROM bench_attached.testbed AS s,"
    " unnest(s.benchmark_ids) AS b (id) WHERE s.testbed_id = :tb ORDER BY b.id;",
    metrics="INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
    " SELECT rb.id, m.id, random() FROM active_series.report_benchmark AS rb,"
    " bench_attached.testbed AS s, unnest(s.measure_ids) AS m (id)"
    " WHERE rb.report_id = :report_id AND s.testbed_id = :tb ORDER BY rb.id, m.id;",
    backdated="INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
    " created) VALUES (%(project)s, %(tb)s, %(at)s, %(at)s, %(at)s) RETURNING id",
    reset="TRUNCATE active_series.metric, active_series.report_benchmark, active_series.report",
    trigger_table="active_series.metric",
)

APP = Model(
    name="app",
    org="INSERT INTO app.orgs (display_name) VALUES (%(name)s) RETURNING org_id",
    project="INSERT INTO app.projects (org_id, slug) VALUES (%(org)s, 'suite') RETURNING id",
    entities="INSERT INTO app.{table} (proj, {label}) SELECT %(project)s, 'e' || i"
    " FROM generate_series(1, %(n)s) AS i RETURNING {key}",
    testbed="INSERT INTO app.testbeds (proj, label) VALUES (%(project)s, %(name)s) RETURNING tb_id",
    report="INSERT INTO app.runs (proj, tb, git_hash) VALUES (:pj, :tb, 'abc')"
    " RETURNING run_id AS report_id \\gset",
    report_benchmarks="INSERT INTO app.run_benchmarks (run, bench)"
    " SELECT :report_id, b.id FROM bench_attached.testbed AS s,"
    " unnest(s.benchmark_ids) AS b (id) WHERE s.testbed_id = :tb ORDER BY b.id;",
    metrics="INSERT INTO app.results (run_benchmark, measure, v)"
    " SELECT rb.rb, m.id, random() FROM app.run_benchmarks AS rb,"
    " bench_attached.testbed AS s, unnest(s.measure_ids) AS m (id)"
    " WHERE rb.run = :report_id AND s.testbed_id = :tb ORDER BY rb.rb, m.id;",
    backdated="INSERT INTO app.runs (proj, tb, created_at) VALUES (%(project)s, %(tb)s, %(at)s)"
    " RETURNING run_id",
    reset="TRUNCATE app.results, app.run_benchmarks, app.runs",
    trigger_table="app.results",
)

APP_ENTITIES = {
    "benchmark": ("benchmarks", "label", "bench_id"),
    "measure": ("measures", "units", "measure_key"),
}

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS bench_attached CASCADE;
CREATE SCHEMA bench_attached;
CREATE TABLE bench_attached.testbed (
    testbed_id bigint PRIMARY KEY,
    project_id bigint NOT NULL,
    organization_id bigint NOT NULL,
    benchmark_ids bigint[] NOT NULL,
    measure_ids bigint[] NOT NULL
);
CREATE TABLE bench_attached.queue (pos integer PRIMARY KEY, testbed_id bigint NOT NULL);
CREATE SEQUENCE bench_attached.pos;
"""

SCRIPT = """\
BEGIN;
SELECT s.testbed_id AS tb, s.project_id AS pj
    FROM bench_attached.queue AS q
    INNER JOIN bench_attached.testbed AS s ON s.testbed_id = q.testbed_id
    WHERE q.pos = (SELECT (nextval('bench_attached.pos') - 1) % {queue} + 1) \\gset
{report}
{report_benchmarks}
{metrics}
END;
"""


class Side:
    """One model's database: its organizations per shape, testbeds, and runs."""

    def __init__(self, model: Model, dsn: str, pgbench: str, tmp: Path) -> None:
        self.model = model
        self.dsn = dsn
        self.conn = connect(dsn)
        self.pgbench = pgbench
        self.tmp = tmp
        self.projects: dict[str, list[tuple[int, int, list[int], list[int]]]] = {}
        self.steady: dict[str, list[int]] = {}
        self.made = 0
        self.conn.execute(SCHEMA_SQL)

    def create_shape(self, shape: Shape) -> None:
        rows = []
        for i in range(ORGANIZATIONS):
            org = one(self.conn, self.model.org, {"name": f"{shape.name}-{i}"})
            project = one(self.conn, self.model.project, {"org": org})
            ids = {}
            for kind, n in (("benchmark", shape.benchmarks), ("measure", shape.measures)):
                table, label, key = APP_ENTITIES[kind]
                query = self.model.entities.format(kind=kind, table=table, label=label, key=key)
                ids[kind] = [r[0] for r in self.conn.execute(query, {"project": project, "n": n})]
            rows.append((org, project, ids["benchmark"], ids["measure"]))
        self.projects[shape.name] = rows
        self.steady[shape.name] = self.new_testbeds(shape, STEADY_TESTBEDS)
        self.reset()
        self.tracking(True)
        self.run(
            shape, self.steady[shape.name], 1, [f"--transactions={len(self.steady[shape.name])}"], 0
        )

    def new_testbeds(self, shape: Shape, per_org: int) -> list[int]:
        out = []
        for _ in range(per_org):
            for org, project, benchmarks, measures in self.projects[shape.name]:
                self.made += 1
                tb = one(
                    self.conn, self.model.testbed, {"project": project, "name": f"t{self.made}"}
                )
                self.conn.execute(
                    "INSERT INTO bench_attached.testbed VALUES (%s, %s, %s, %s, %s)",
                    (tb, project, org, benchmarks, measures),
                )
                out.append(tb)
        return out

    def backdate(self, testbeds: list[int]) -> None:
        """One report per testbed, an hour before its organization's current period."""
        with self.conn.transaction():
            self.conn.execute("SET LOCAL active_series.allow_explicit_created = on")
            for tb in testbeds:
                project, org, benchmarks, measures = self.conn.execute(
                    "SELECT project_id, organization_id, benchmark_ids, measure_ids"
                    " FROM bench_attached.testbed WHERE testbed_id = %s",
                    (tb,),
                ).fetchone()
                at = one(
                    self.conn,
                    "SELECT period_start - interval '1 hour' FROM active_series.current_period(%s)",
                    (org,),
                )
                report = one(
                    self.conn, self.model.backdated, {"project": project, "tb": tb, "at": at}
                )
                script = self.model.report_benchmarks + "\n" + self.model.metrics
                for statement in script.split(";"):
                    if statement.strip():
                        self.conn.execute(
                            statement.replace(":report_id", str(report)).replace(":tb", str(tb))
                        )

    def tracking(self, on: bool) -> None:
        self.conn.execute(
            f"ALTER TABLE {self.model.trigger_table} {'ENABLE' if on else 'DISABLE'}"
            " TRIGGER active_series_metric_inserted"
        )

    def reset(self) -> None:
        self.conn.execute(self.model.reset)
        self.conn.execute("CHECKPOINT")

    def run(
        self, shape: Shape, testbeds: list[int], clients: int, limit: list[str], warmup: int
    ) -> dict[str, Any]:
        self.conn.execute("TRUNCATE bench_attached.queue")
        self.conn.execute(
            "INSERT INTO bench_attached.queue SELECT o.pos, o.id"
            " FROM unnest(%s::bigint[]) WITH ORDINALITY AS o (id, pos)",
            (testbeds,),
        )
        self.conn.execute("SELECT setval('bench_attached.pos', 1, false)")
        script = self.tmp / f"{self.model.name}_{shape.name}.sql"
        script.write_text(
            SCRIPT.format(
                queue=len(testbeds),
                report=self.model.report,
                report_benchmarks=self.model.report_benchmarks,
                metrics=self.model.metrics,
            )
        )
        return run_pgbench(self.pgbench, self.dsn, script, clients, limit, warmup, self.tmp)

    def cell(
        self,
        shape: Shape,
        scenario: str,
        on: bool,
        clients: int,
        reports: int,
        seconds: float,
        warmup: int,
    ) -> float:
        """One run of a scenario; its time per report."""
        if scenario == "steady":
            testbeds = self.steady[shape.name]
            limit = [f"--time={max(1, math.ceil(seconds))}"]
        else:
            n = reports + clients * warmup + 2 * clients
            testbeds = self.new_testbeds(shape, math.ceil(n / ORGANIZATIONS))
            limit = [f"--transactions={warmup + math.ceil(reports / clients)}"]
            if scenario == "rollover":
                self.tracking(True)
                self.backdate(testbeds)
        self.reset()
        self.tracking(on)
        return float(self.run(shape, testbeds, clients, limit, warmup)["per_report"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""), help="libpq conninfo")
    parser.add_argument(
        "--out", type=Path, help="result JSON (default bench/results/attached.json)"
    )
    parser.add_argument(
        "--shapes", nargs="+", type=Shape.parse, default=[Shape.parse(s) for s in DEFAULT_SHAPES]
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3, help="duration of a steady run")
    parser.add_argument("--reports", type=int, default=200, help="reports per first/rollover run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one repeat of 1 s")
    parser.add_argument("--pgbench", help="path of the pgbench binary")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds, args.reports = 1, 1, 60
    pgbench = find_pgbench(args.pgbench)
    base = psycopg.conninfo.conninfo_to_dict(args.dsn).get("dbname") or "bench"
    ref_dsn = fresh_database(args.dsn, f"{base}_ref")
    app_dsn = fresh_database(args.dsn, f"{base}_app", model=False)
    with connect(app_dsn) as conn:
        app_schema.create(conn)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sides = [Side(REF, ref_dsn, pgbench, Path(tmp)), Side(APP, app_dsn, pgbench, Path(tmp))]
        info = server_info(sides[0].conn)
        for shape in args.shapes:
            for side in sides:
                side.create_shape(shape)
            for scenario in args.scenarios:
                runs: dict[str, list[float]] = {}
                for _ in range(args.repeats):
                    for side in sides:
                        for on in (False, True):
                            key = f"{side.model.name} {'on' if on else 'off'}"
                            runs.setdefault(key, []).append(
                                side.cell(
                                    shape,
                                    scenario,
                                    on,
                                    args.clients,
                                    args.reports,
                                    args.seconds,
                                    args.warmup,
                                )
                            )
                med = {k: median(v) for k, v in runs.items()}
                r = {
                    "shape": shape.name,
                    "scenario": scenario,
                    "clients": args.clients,
                    "repeats": args.repeats,
                    "median_seconds_per_report": med,
                    "runs": runs,
                    "ref_off_over_on": med["ref off"] / med["ref on"],
                    "app_off_over_on": med["app off"] / med["app on"],
                    "ref_added_ms": (med["ref on"] - med["ref off"]) * 1e3,
                    "app_added_ms": (med["app on"] - med["app off"]) * 1e3,
                    "app_over_ref_off": med["app off"] / med["ref off"],
                }
                results.append(r)
                log(
                    f"{shape.name} {scenario}: off/on ref {r['ref_off_over_on']:.2f} app"
                    f" {r['app_off_over_on']:.2f}; added ms ref {r['ref_added_ms']:.3f} app"
                    f" {r['app_added_ms']:.3f}"
                )
        for side in sides:
            side.conn.close()
    for name in (f"{base}_ref", f"{base}_app"):
        drop_database(args.dsn, name)
    write_result("attached", {"server": info, "host": host_info(), "results": results}, args.out)
    print(
        f"{'shape':>6} {'scenario':>8} {'ref off/on':>10} {'app off/on':>10}"
        f" {'ref +ms':>8} {'app +ms':>8} {'app÷ref off':>11}"
    )
    for r in results:
        print(
            f"{r['shape']:>6} {r['scenario']:>8} {r['ref_off_over_on']:>10.2f}"
            f" {r['app_off_over_on']:>10.2f} {r['ref_added_ms']:>8.3f} {r['app_added_ms']:>8.3f}"
            f" {r['app_over_ref_off']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
