"""A hypothesis state machine on an application's own schema (foreign_schema, attached).

Random operations by the application's own statements: organizations, projects, testbeds,
benchmarks and measures; runs (at the server's time, or back-dated by a privileged loader)
of random series, in one transaction or several; deleted runs (a count never falls), hard
deletes (the series leave every period), soft deletes and restores of projects. After each
step every period's count, the current one, and verify() equal an independent model: a set
of activity kept in Python, which forgets only what a hard delete removes."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import foreign_schema as app
import psycopg
import pytest
from active_series.install import install
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

SETTINGS = settings(
    max_examples=int(os.environ.get("ACTIVE_SERIES_ATTACHED_EXAMPLES", "60")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
NOW = dt.datetime.now(dt.UTC)


@dataclass
class Activity:
    project: int
    testbed: int
    benchmark: int
    measure: int
    created: dt.datetime


@dataclass
class World:
    """The model: what exists and what was ever recorded."""

    orgs: dict[int, list[int]] = field(default_factory=dict)  # org -> projects
    project_org: dict[int, int] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)  # soft-deleted projects
    entities: dict[str, dict[int, int]] = field(
        default_factory=lambda: {"testbed": {}, "benchmark": {}, "measure": {}}
    )  # kind -> id -> project
    runs: dict[int, int] = field(default_factory=dict)  # run -> project
    activity: list[Activity] = field(default_factory=list)

    def count(self, org: int, start: dt.datetime, end: dt.datetime) -> int:
        return len(
            {
                (a.testbed, a.benchmark, a.measure)
                for a in self.activity
                if self.project_org[a.project] == org
                and a.project not in self.deleted
                and start <= a.created < end
            }
        )

    def months(self, org: int) -> set[dt.datetime]:
        return {
            a.created.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            for a in self.activity
            if self.project_org[a.project] == org
        }


def next_month(start: dt.datetime) -> dt.datetime:
    return (start + dt.timedelta(days=32)).replace(day=1)


TABLE = {
    "testbed": ("app.testbeds", "tb_id"),
    "benchmark": ("app.benchmarks", "bench_id"),
    "measure": ("app.measures", "measure_key"),
}


class AttachedMachine(RuleBasedStateMachine):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self.conn = conn
        self.world = World()
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                " WHERE schemaname IN ('app', 'active_series')"
                " AND tablename NOT IN ('_meta', '_attachment') ORDER BY 1"
            )
        ]
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")

    def one(self, query: str, *args: Any) -> Any:
        return app.one(self.conn, query, *args)

    @initialize()
    def first_org(self) -> None:
        self.create_org()

    @precondition(lambda self: len(self.world.orgs) < 3)
    @rule()
    def create_org(self) -> None:
        org = self.one("INSERT INTO app.orgs (display_name) VALUES ('o') RETURNING org_id")
        self.world.orgs[org] = []
        self.create_project_in(org)

    def create_project_in(self, org: int) -> None:
        project = self.one(
            "INSERT INTO app.projects (org_id, slug) VALUES (%s, 'p') RETURNING id", org
        )
        self.world.orgs[org].append(project)
        self.world.project_org[project] = org
        for kind, (table, key) in TABLE.items():
            column = "units" if kind == "measure" else "label"
            entity = self.one(
                f"INSERT INTO {table} (proj, {column}) VALUES (%s, 'x') RETURNING {key}", project
            )
            self.world.entities[kind][entity] = project

    @precondition(lambda self: len(self.world.project_org) < 5)
    @rule(data=st.data())
    def create_project(self, data: st.DataObject) -> None:
        self.create_project_in(data.draw(st.sampled_from(sorted(self.world.orgs)), "org"))

    @rule(data=st.data(), kind=st.sampled_from(sorted(TABLE)))
    def create_entity(self, data: st.DataObject, kind: str) -> None:
        projects = sorted(self.world.project_org)
        if len([e for e, p in self.world.entities[kind].items()]) >= 4 * len(projects):
            return
        project = data.draw(st.sampled_from(projects), "project")
        table, key = TABLE[kind]
        column = "units" if kind == "measure" else "label"
        entity = self.one(
            f"INSERT INTO {table} (proj, {column}) VALUES (%s, 'x') RETURNING {key}", project
        )
        self.world.entities[kind][entity] = project

    def of(self, kind: str, project: int) -> list[int]:
        return sorted(e for e, p in self.world.entities[kind].items() if p == project)

    def ingestable(self) -> list[int]:
        return [p for p in sorted(self.world.project_org) if all(self.of(k, p) for k in TABLE)]

    @precondition(lambda self: bool(self.ingestable()))
    @rule(data=st.data())
    def ingest(self, data: st.DataObject) -> None:
        runs = data.draw(st.integers(1, 3), "runs")
        one_transaction = data.draw(st.booleans(), "one transaction")
        back = data.draw(st.sampled_from([None, 1, 20, 45, 400]), "days back")
        plans = []
        for _ in range(runs):
            project = data.draw(st.sampled_from(self.ingestable()), "project")
            pairs = [
                (b, m) for b in self.of("benchmark", project) for m in self.of("measure", project)
            ]
            series = data.draw(
                st.lists(st.sampled_from(pairs), min_size=1, max_size=6, unique=True), "series"
            )
            testbed = data.draw(st.sampled_from(self.of("testbed", project)), "testbed")
            plans.append((project, testbed, series))
        created = None if back is None else NOW - dt.timedelta(days=back, hours=3)
        if created is not None:
            self.conn.execute("SET active_series.allow_explicit_created = on")
        try:
            if one_transaction:
                with self.conn.transaction():
                    done = [self.send(p, created) for p in plans]
            else:
                done = [self.send(p, created) for p in plans]
        finally:
            self.conn.execute("RESET active_series.allow_explicit_created")
        for (project, testbed, series), (run, at) in zip(plans, done, strict=True):
            self.world.runs[run] = project
            self.world.activity += [Activity(project, testbed, b, m, at) for b, m in series]

    def send(
        self, plan: tuple[int, int, list[tuple[int, int]]], created: dt.datetime | None
    ) -> tuple[int, dt.datetime]:
        project, testbed, series = plan
        org = app.Org(self.world.project_org[project], project)
        run = app.ingest(self.conn, org, testbed, series, created)
        at = self.one("SELECT created_at FROM app.runs WHERE run_id = %s", run)
        return run, at

    @precondition(lambda self: bool(self.world.runs))
    @rule(data=st.data())
    def delete_run(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(sorted(self.world.runs)), "run")
        self.conn.execute("DELETE FROM app.runs WHERE run_id = %s", (run,))
        del self.world.runs[run]  # its activity stays counted

    @rule(data=st.data(), kind=st.sampled_from([*sorted(TABLE), "project"]))
    def hard_delete(self, data: st.DataObject, kind: str) -> None:
        if kind == "project":
            choices = sorted(self.world.project_org)
            if len(choices) < 2:
                return
            victim = data.draw(st.sampled_from(choices), "project")
            self.conn.execute("DELETE FROM app.projects WHERE id = %s", (victim,))
            org = self.world.project_org.pop(victim)
            self.world.orgs[org].remove(victim)
            for entities in self.world.entities.values():
                for e in [e for e, p in entities.items() if p == victim]:
                    del entities[e]
            self.world.runs = {r: p for r, p in self.world.runs.items() if p != victim}
            self.world.activity = [a for a in self.world.activity if a.project != victim]
            return
        entities = self.world.entities[kind]
        if not entities:
            return
        victim = data.draw(st.sampled_from(sorted(entities)), kind)
        table, key = TABLE[kind]
        self.conn.execute(f"DELETE FROM {table} WHERE {key} = %s", (victim,))
        del entities[victim]
        self.world.activity = [a for a in self.world.activity if getattr(a, kind) != victim]

    @rule(data=st.data())
    def toggle_soft_delete(self, data: st.DataObject) -> None:
        project = data.draw(st.sampled_from(sorted(self.world.project_org)), "project")
        gone = project in self.world.deleted
        self.conn.execute(
            "UPDATE app.projects SET removed_at = CASE WHEN %s THEN NULL ELSE now() END"
            " WHERE id = %s",
            (gone, project),
        )
        (self.world.deleted.discard if gone else self.world.deleted.add)(project)

    @invariant()
    def counts_equal_the_model(self) -> None:
        for org in self.world.orgs:
            for start in sorted(self.world.months(org)):
                got = self.one("SELECT active_series.period_usage(%s, %s)", org, start)
                assert got == self.world.count(org, start, next_month(start)), (org, start)
            current = self.one("SELECT period_start FROM active_series.current_period(%s)", org)
            assert self.one("SELECT active_series.period_usage(%s)", org) == self.world.count(
                org, current, next_month(current)
            )
        assert self.conn.execute("SELECT * FROM active_series.verify()").fetchall() == []


@pytest.fixture
def attached_conn(new_empty_db: Any) -> Iterator[psycopg.Connection[Any]]:
    dsn = new_empty_db()
    install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        app.create(conn)
        yield conn


def test_the_attached_schema_equals_the_model_after_random_operations(
    attached_conn: psycopg.Connection[Any],
) -> None:
    run_state_machine_as_test(lambda: AttachedMachine(attached_conn), settings=SETTINGS)
