"""Errors a user triggers say what is wrong and how to fix it in their first lines.

Each refusal carries its SQLSTATE, a message naming the rows, and a HINT; its CONTEXT (what
psql prints after them, at its default verbosity) is a line or two, not the nested
statements of the commit-time recorder.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import psycopg
import pytest
from oracle import Org, ingest, make_entities, make_org, make_project, make_report, one

# ingest errors are raised by the trigger the statement (or the commit) fired; an API
# function's argument errors by the function, or the check it calls
INGEST_CONTEXT_LINES = 2
API_CONTEXT_LINES = 3


@pytest.fixture
def org(conn: psycopg.Connection) -> Org:
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    return org


def over_the_cap(conn: psycopg.Connection, org: Org) -> None:
    conn.execute("SELECT active_series.set_series_cap(%s, 1)", (org.id,))
    with conn.transaction():
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[1], org.measures[0])])


def measure_of_another_project(conn: psycopg.Connection, org: Org) -> None:
    other = make_project(conn, org.id, "other", "private")
    [measure] = make_entities(conn, "measure", other, 1)
    with conn.transaction():
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[1], measure)])


def benchmark_of_another_project(conn: psycopg.Connection, org: Org) -> None:
    other = make_project(conn, org.id, "other", "private")
    [benchmark] = make_entities(conn, "benchmark", other, 1)
    report = make_report(conn, org.project_id, org.testbeds[0])
    conn.execute(
        "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
        " VALUES (%s, %s, 0)",
        (report, benchmark),
    )


def explicit_created(conn: psycopg.Connection, org: Org) -> None:
    conn.execute(
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time, created)"
        " VALUES (%s, %s, now(), now(), now() - interval '1 day')",
        (org.project_id, org.testbeds[0]),
    )


def key_update(conn: psycopg.Connection, org: Org) -> None:
    conn.execute("UPDATE active_series.metric SET measure_id = %s", (org.measures[1],))


INGEST_ERRORS: dict[str, tuple[Callable[[psycopg.Connection, Org], None], str, str]] = {
    "series cap": (over_the_cap, "AS001", "is capped at 1 active series"),
    "measure of another project": (
        measure_of_another_project,
        "23503",
        "belongs to project",
    ),
    "report_benchmark of another project's benchmark": (
        benchmark_of_another_project,
        "23503",
        "names benchmark",
    ),
    "explicit report.created": (explicit_created, "42501", "report.created is set by the server"),
    "key column update": (key_update, "0A000", "measure_id of metric cannot be changed"),
}

API_ERRORS: dict[str, tuple[str, str, str]] = {
    "missing organization": (
        "SELECT active_series.period_usage(%(missing)s)",
        "P0002",
        "does not exist",
    ),
    "missing organization (usage_summary)": (
        "SELECT active_series.usage_summary(%(missing)s)",
        "P0002",
        "does not exist",
    ),
    "negative series cap": (
        "SELECT active_series.set_series_cap(%(org)s, -1)",
        "22023",
        "series cap must be 0 or more",
    ),
    "non-positive alert": (
        "SELECT active_series.set_alert(%(org)s, 0)",
        "22023",
        "alert threshold must be a positive",
    ),
    "reversed window": (
        "SELECT active_series.count_active(%(org)s, now(), now() - interval '1 day')",
        "22023",
        "is after its end",
    ),
}


def assert_actionable(err: psycopg.Error, sqlstate: str, message: str, context_lines: int) -> None:
    assert err.sqlstate == sqlstate
    assert message in (err.diag.message_primary or "")
    assert err.diag.message_hint, f"no hint: {err.diag.message_primary}"
    context = (err.diag.context or "").splitlines()
    assert len(context) <= context_lines, "\n".join(context)


@pytest.mark.parametrize("case", list(INGEST_ERRORS))
def test_an_ingest_refusal_has_a_hint_and_a_short_context(conn, org, case):
    act, sqlstate, message = INGEST_ERRORS[case]
    with pytest.raises(psycopg.Error) as err:
        act(conn, org)
    assert_actionable(err.value, sqlstate, message, INGEST_CONTEXT_LINES)


@pytest.mark.parametrize("case", list(API_ERRORS))
def test_an_api_argument_error_has_a_hint_and_a_short_context(conn, org, case):
    query, sqlstate, message = API_ERRORS[case]
    missing = one(conn, "SELECT coalesce(max(id), 0) + 1 FROM active_series.organization")
    with pytest.raises(psycopg.Error) as err:
        conn.execute(query, {"org": org.id, "missing": missing})
    assert_actionable(err.value, sqlstate, message, API_CONTEXT_LINES)


def test_the_cap_refusal_in_psql_shows_message_and_hint_first_and_one_line_of_context(
    conn, dsn, org
):
    """What a user of psql sees (default verbosity): the refusal, its detail and hint, and
    the one trigger that raised it."""
    conn.execute("SELECT active_series.set_series_cap(%s, 1)", (org.id,))
    report = make_report(conn, org.project_id, org.testbeds[1])
    rb = one(
        conn,
        "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
        " VALUES (%s, %s, 0) RETURNING id",
        (report, org.benchmarks[2]),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(
        ["psql", "-X", "-d", dsn, "-c",
         "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
         f" VALUES ({rb}, {org.measures[2]}, 1.5)"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("ERROR:  active_series: organization"), done.stderr
    assert "is capped at 1 active series" in lines[0]
    assert any(line.startswith("HINT:  ") and "set_series_cap" in line for line in lines[:3])
    context = lines[next(i for i, line in enumerate(lines) if line.startswith("CONTEXT:")) :]
    assert len(context) <= INGEST_CONTEXT_LINES, done.stderr
