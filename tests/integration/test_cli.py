"""The ``active-series`` command line as a user runs it: a subprocess against a real cluster,
with its output and exit code, error paths included."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from active_series import cli
from active_series.devtools.cluster import free_port
from active_series.errors import ExitCode
from oracle import ingest, make_org
from relay_harness import API_KEY, Emulator, bill, wait_until

COMMANDS = [
    ["install"],
    ["verify"],
    ["count"],
    ["usage"],
    ["explain"],
    ["backfill"],
    ["worker"],
    ["close-period"],
    ["relay"],
    ["relay", "status"],
    ["relay", "failures"],
    ["relay", "resume"],
    ["db"],
    ["db", "start"],
    ["db", "stop"],
    ["db", "status"],
    ["demo"],
    ["stripe-emulator"],
]


def run(
    *args: str, env: dict[str, str] | None = None, stderr: int | None = None, timeout: int = 60
) -> subprocess.CompletedProcess[str]:
    """``active-series ARGS`` without STRIPE_API_KEY unless ``env`` gives it; stderr is
    captured unless ``stderr`` is a file descriptor (a terminal)."""
    base = {k: v for k, v in os.environ.items() if k != "STRIPE_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "active_series.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr is None else stderr,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of an expected failure (no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("active-series: "), proc.stderr
    return lines[0]


def all_series(org: Any) -> list[tuple[int, int]]:
    return [(b, m) for b in org.benchmarks for m in org.measures]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert proc.stderr == ""


def test_usage_count_and_explain_show_the_exact_period(conn, dsn) -> None:
    org = make_org(conn, "acme")
    other = make_org(conn, "globex")
    ingest(conn, org, org.testbeds[0], all_series(org)[:4])
    ingest(conn, org, org.testbeds[1], all_series(org)[2:5])
    ingest(conn, other, other.testbeds[0], all_series(other)[:1])

    proc = run("usage", "--dsn", dsn, "--json")
    assert proc.returncode == 0, proc.stderr
    usage = {row["organization_id"]: row for row in json.loads(proc.stdout)}
    assert usage[org.id]["active_series"] == 7
    assert usage[other.id]["active_series"] == 1

    text = run("usage", "--dsn", dsn, "--organization", str(org.id))
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split()[:3] == [
        "organization_id",
        "organization_name",
        "plan",
    ]
    assert text.stdout.splitlines()[1].split()[:2] == [str(org.id), "acme"]

    count = run("count", "--dsn", dsn, "--organization", str(org.id))
    assert (count.returncode, count.stdout.strip()) == (0, "7")

    start = conn.execute(
        "SELECT period_start FROM active_series.current_period(%s)", (org.id,)
    ).fetchone()[0]
    history = run("usage", "--dsn", dsn, "--organization", str(org.id), "--history", "--json")
    assert history.returncode == 0, history.stderr
    assert [(r["period_start"], r["active_series"]) for r in json.loads(history.stdout)] == [
        (str(start), 7)
    ]
    past = run("count", "--dsn", dsn, "--organization", str(org.id), "--period", start.isoformat())
    assert (past.returncode, past.stdout.strip()) == (0, "7")

    explained = run("explain", "--dsn", dsn, "--organization", str(org.id), "--json")
    assert explained.returncode == 0, explained.stderr
    got = json.loads(explained.stdout)
    assert got["active_series"] == 7
    expected = conn.execute(
        "SELECT t.name, b.name, m.name FROM active_series.period_series(%s) AS s"
        " JOIN active_series.testbed AS t ON t.id = s.testbed_id"
        " JOIN active_series.benchmark AS b ON b.id = s.benchmark_id"
        " JOIN active_series.measure AS m ON m.id = s.measure_id",
        (org.id,),
    ).fetchall()
    assert sorted((s["testbed"], s["benchmark"], s["measure"]) for s in got["series"]) == sorted(
        expected
    )
    assert {s["project"] for s in got["series"]} == {"p"}
    assert {s["variant"] for s in got["series"]} == {"{}"}

    plain = run(
        "explain", "--dsn", dsn, "--organization", str(org.id), "--period", start.isoformat()
    )
    assert plain.returncode == 0
    assert plain.stdout.startswith(f"organization {org.id}, period ")
    assert ": 7 active series" in plain.stdout.splitlines()[0]
    assert len(plain.stdout.strip().splitlines()) == 1 + 1 + 7  # summary, header, series


def test_verify_exits_1_on_drift(conn, dsn) -> None:
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], all_series(org)[:3])
    healthy = run("verify", "--dsn", dsn)
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("healthy")
    conn.execute("UPDATE active_series._period_usage SET series_count = series_count + 1")
    drift = run("verify", "--dsn", dsn, "--organization", str(org.id))
    assert drift.returncode == ExitCode.FAILURE
    assert f"organization {org.id}:" in drift.stdout
    assert "problem(s) found" in drift.stderr


def _five_reports(conn: psycopg.Connection[Any]) -> None:
    org = make_org(conn)
    for i in range(5):
        ingest(conn, org, org.testbeds[i % 2], all_series(org)[i : i + 2])


def test_backfill_prints_plain_progress_lines_without_a_terminal(conn, dsn) -> None:
    _five_reports(conn)
    proc = run("backfill", "--dsn", dsn, "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[:3] == [  # batches of 1 (the ramp), then 2 reports
        "backfill: 1 of 5 reports",
        "backfill: 3 of 5 reports",
        "backfill: 5 of 5 reports",
    ]
    assert lines[-1] == "backfill: done, 5 reports"
    assert "\r" not in proc.stderr


def test_backfill_draws_a_progress_bar_on_a_terminal(conn, dsn) -> None:
    _five_reports(conn)
    parent, child = pty.openpty()
    try:
        proc = run("backfill", "--dsn", dsn, "--batch-size", "2", stderr=child)
        os.close(child)
        child = -1
        out = b""
        while True:
            try:
                chunk = os.read(parent, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(parent)
        if child >= 0:
            os.close(child)
    assert proc.returncode == 0
    text = out.decode()
    assert "\rbackfill [" in text
    assert re.search(r"\[#{18}-{12}\]\s+60% 3/5 reports", text), text
    assert re.search(r"\[#{30}\] 100% 5/5 reports", text), text
    assert "backfill: done, 5 reports" in text


def test_install_then_use_an_empty_database(empty_dsn) -> None:
    missing = run("usage", "--dsn", empty_dsn)
    assert missing.returncode == ExitCode.SCHEMA
    assert "not installed" in one_line_error(missing)
    installed = run("install", "--dsn", empty_dsn)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith("active_series ")
    again = run("install", "--dsn", empty_dsn)
    assert again.returncode == 0
    unattached = run("usage", "--dsn", empty_dsn)
    assert unattached.returncode == ExitCode.SCHEMA
    assert "active-series create-model" in one_line_error(unattached)
    made = run("create-model", "--dsn", empty_dsn)
    assert made.returncode == 0, made.stderr
    assert run("usage", "--dsn", empty_dsn).returncode == 0
    refused = run("create-model", "--dsn", empty_dsn)
    assert refused.returncode == ExitCode.INPUT
    assert "already exist" in one_line_error(refused)


def test_a_schema_of_another_version_is_refused(conn, dsn) -> None:
    conn.execute("UPDATE active_series._meta SET version = '0.0.1'")
    for command in (["usage"], ["count", "--organization", "1"], ["verify"]):
        proc = run(*command, "--dsn", dsn)
        assert proc.returncode == ExitCode.SCHEMA, (command, proc.stderr)
        assert "0.0.1" in one_line_error(proc)


def test_an_unreachable_database_exits_3() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=nowhere connect_timeout=3"
    for command in (["usage"], ["count", "--organization", "1"], ["install"], ["backfill"]):
        proc = run(*command, "--dsn", dsn)
        assert proc.returncode == ExitCode.DATABASE, (command, proc.stderr)
        assert "cannot connect to the database" in one_line_error(proc)
    via_env = run("usage", env={"DATABASE_URL": f"postgresql://127.0.0.1:{free_port()}/x"})
    assert via_env.returncode == ExitCode.DATABASE


def test_an_unknown_organization_exits_5(conn, dsn) -> None:
    for command in (
        ["count", "--organization", "4242"],
        ["usage", "--organization", "4242"],
        ["usage", "--organization", "4242", "--history"],
        ["explain", "--organization", "4242"],
        ["verify", "--organization", "4242"],
    ):
        proc = run(*command, "--dsn", dsn)
        assert proc.returncode == ExitCode.NOT_FOUND, (command, proc.stderr)
        assert "organization 4242 does not exist" in one_line_error(proc)


def test_bad_dates_and_arguments(conn, dsn) -> None:
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], all_series(org)[:1])
    o = str(org.id)
    unparsable = run("count", "--dsn", dsn, "--organization", o, "--period", "2026-13-01")
    assert unparsable.returncode == ExitCode.USAGE
    assert "not an ISO 8601 time" in unparsable.stderr
    not_a_start = run("explain", "--dsn", dsn, "--organization", o, "--period", "2001-01-07")
    assert not_a_start.returncode == ExitCode.INPUT
    assert "no billing period of organization" in one_line_error(not_a_start)
    half_window = run("count", "--dsn", dsn, "--organization", o, "--from", "2026-01-01")
    assert half_window.returncode == ExitCode.INPUT
    assert "--from and --to go together" in one_line_error(half_window)
    backwards = run(
        "count", "--dsn", dsn, "--organization", o, "--from", "2026-02-01", "--to", "2026-01-01"
    )
    assert backwards.returncode == ExitCode.INPUT, backwards.stderr
    one_line_error(backwards)
    no_org = run("usage", "--dsn", dsn, "--history")
    assert no_org.returncode == ExitCode.USAGE
    batch = run("backfill", "--dsn", dsn, "--batch-size", "0")
    assert batch.returncode == ExitCode.INPUT
    assert "batch size" in one_line_error(batch)
    assert run("no-such-command").returncode == ExitCode.USAGE


def test_the_worker_needs_a_stripe_key(dsn) -> None:
    for command in (["worker", "--once"], ["close-period"]):
        proc = run(*command, "--dsn", dsn)
        assert proc.returncode == ExitCode.STRIPE_KEY, proc.stderr
        assert "STRIPE_API_KEY" in one_line_error(proc)


def test_worker_once_then_relay_status_failures_resume_and_close_period(
    conn, dsn, relay_emulator: Emulator
) -> None:
    emu = relay_emulator
    org = make_org(conn)
    customer = emu.customer("acme")
    bill(conn, org.id, customer)
    ingest(conn, org, org.testbeds[0], all_series(org)[:5])
    key = {"STRIPE_API_KEY": API_KEY}
    worker = run(
        "worker", "--dsn", dsn, "--stripe-api-base", emu.url, "--once", "--debounce", "0", env=key
    )
    assert worker.returncode == 0, worker.stderr
    assert API_KEY not in worker.stderr
    start, end = conn.execute(
        "SELECT period_start, period_end FROM active_series.current_period(%s)", (org.id,)
    ).fetchone()
    wait_until(lambda: emu.last_value(customer, start, end) == 5, 10, "Stripe to hold 5")

    status = run("relay", "status", "--dsn", dsn, "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert (row["organization_id"], row["period_usage"], row["stripe_value"]) == (org.id, 5, 5)
    assert row["in_sync"] is True
    assert run("relay", "status", "--dsn", dsn).stdout.startswith("organization_id")

    failures = run("relay", "failures", "--dsn", dsn, "--json")
    assert (failures.returncode, json.loads(failures.stdout)) == (0, [])

    resumed = run("relay", "resume", "--dsn", dsn, "--organization", str(org.id))
    assert resumed.returncode == 0, resumed.stderr
    assert "was not parked" in resumed.stdout
    unknown = run("relay", "resume", "--dsn", dsn, "--organization", "4242")
    assert unknown.returncode == ExitCode.NOT_FOUND

    closing = run("close-period", "--dsn", dsn, "--stripe-api-base", emu.url, env=key)
    assert closing.returncode == 0, closing.stderr
    assert "organization(s) checked" in closing.stdout


def test_db_start_status_stop_on_a_project_directory() -> None:
    base = Path(tempfile.mkdtemp(prefix="as-cli-db-"))
    base.chmod(0o711)  # the postgres user must enter it when we are root
    data = str(base / "db")
    try:
        assert run("db", "status", "--data-dir", data).returncode == ExitCode.DATABASE
        started = run("db", "start", "--data-dir", data, timeout=120)
        assert started.returncode == 0, started.stderr
        dsn = started.stdout.strip()
        assert "dbname=active_series" in dsn
        status = run("db", "status", "--data-dir", data)
        assert (status.returncode, status.stdout.strip()) == (0, dsn)
        # the printed DSN works, and the schema is there
        usage = run("usage", "--dsn", dsn, "--json")
        assert (usage.returncode, usage.stdout.strip()) == (0, "[]")
        again = run("db", "start", "--data-dir", data)
        assert (again.returncode, again.stdout.strip()) == (0, dsn)
        stopped = run("db", "stop", "--data-dir", data)
        assert stopped.returncode == 0, stopped.stderr
        after = run("db", "status", "--data-dir", data)
        assert after.returncode == ExitCode.DATABASE
        assert "stopped" in after.stderr
        assert run("usage", "--dsn", dsn).returncode == ExitCode.DATABASE
    finally:
        run("db", "stop", "--data-dir", data)
        shutil.rmtree(base, ignore_errors=True)


def test_stripe_emulator_serves_until_stopped() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "active_series.cli", "stripe-emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/health", timeout=5) as r:
            assert json.load(r) == {"ok": True}
    finally:
        proc.terminate()
        proc.wait(10)


def test_naive_times_are_utc() -> None:
    assert cli.parse_time("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert cli.parse_time("2026-11-01T02:00:00+02:00") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
