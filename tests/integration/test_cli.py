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
from active_series import __version__, cli
from active_series.devtools.cluster import free_port
from active_series.errors import ExitCode
from active_series.install import install
from oracle import Org, ingest, make_org, make_variant
from psycopg.conninfo import make_conninfo
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
        (start.astimezone(dt.UTC).isoformat(), 7)
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
    assert [s["variant"] for s in got["series"]] == [{}] * 7  # the empty variant, an object

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
    assert installed.stdout.startswith(f"active_series {__version__} installed")
    again = run("install", "--dsn", empty_dsn)
    assert again.returncode == 0
    assert again.stdout.startswith(f"active_series is already installed at version {__version__}")
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


@pytest.mark.parametrize("refusal", ["no such role", "no such database", "role without LOGIN"])
def test_a_worker_whose_login_is_refused_exits_3_at_once(conn, dsn, refusal) -> None:
    """A refused login is not an outage: retrying cannot fix it, so the worker says so and
    exits (it used to retry for ever). The database being down is still retried."""
    if refusal == "no such role":
        target = make_conninfo(dsn, user="no_such_role")
    elif refusal == "no such database":
        target = make_conninfo(dsn, dbname="no_such_database")
    else:
        conn.execute("DROP ROLE IF EXISTS as_nologin")
        conn.execute("CREATE ROLE as_nologin NOLOGIN IN ROLE active_series_worker")
        target = make_conninfo(dsn, user="as_nologin")
    key = {"STRIPE_API_KEY": API_KEY}
    proc = run("worker", "--dsn", target, "--reconnect-delay", "0.1", env=key, timeout=30)
    assert proc.returncode == ExitCode.DATABASE, proc.stderr
    assert "event=database_refused" in proc.stderr
    assert "event=database_unavailable" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("active-series: cannot connect")


def test_a_worker_keeps_retrying_a_database_that_is_down(dsn) -> None:
    target = make_conninfo(dsn, host="127.0.0.1", port=str(free_port()))  # nothing listens
    with pytest.raises(subprocess.TimeoutExpired) as waited:
        run("worker", "--dsn", target, "--reconnect-delay", "0.1",
            env={"STRIPE_API_KEY": API_KEY}, timeout=3)  # fmt: skip
    assert "event=database_unavailable" in str(waited.value.stderr or b"")


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
    # --once waited for Stripe's event summary to confirm its post before it exited
    assert (row["in_sync"], row["confirming"], row["stripe_summary"]) == (True, False, 5)
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


def test_install_says_what_it_upgraded_from(empty_dsn) -> None:
    install(empty_dsn, "0.3.0")
    upgraded = run("install", "--dsn", empty_dsn, "--without-plpython", timeout=180)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"active_series upgraded from 0.3.0 to {__version__}"
    again = run("install", "--dsn", empty_dsn, "--without-plpython")
    assert again.stdout.strip() == f"active_series is already installed at version {__version__}"


def test_count_of_a_time_that_starts_no_period_exits_6_and_period_excludes_a_window(
    conn, dsn
) -> None:
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], all_series(org)[:2])
    o = str(org.id)
    not_a_start = run("count", "--dsn", dsn, "--organization", o, "--period", "2001-01-07")
    assert not_a_start.returncode == ExitCode.INPUT, not_a_start.stdout
    message = one_line_error(not_a_start)
    assert f"no billing period of organization {org.id} starts at 2001-01-07" in message
    assert "recent ones start at" in message
    assert not_a_start.stdout == ""
    both = run(
        "count", "--dsn", dsn, "--organization", o, "--period", "2001-01-07",
        "--from", "2026-01-01", "--to", "2026-02-01",
    )  # fmt: skip
    assert both.returncode == ExitCode.USAGE
    assert "--period" in one_line_error(both) and "exclude each other" in both.stderr
    half = run("count", "--dsn", dsn, "--organization", o, "--period", "2001-01-07", "--to", "x")
    assert half.returncode == ExitCode.USAGE  # (an unparsable time: argparse's own)


@pytest.mark.parametrize(
    "bad", ["host=/tmp port=notanumber", "postgresql://a b", "nonsense", "postgresql://h:x/db"]
)
def test_a_malformed_dsn_exits_3(bad: str) -> None:
    key = {"STRIPE_API_KEY": API_KEY}
    for command in (
        ["usage"],
        ["count", "--organization", "1"],
        ["install"],
        ["attach", "--table", "organization=o"],
        ["relay", "status"],
        ["worker", "--once"],
        ["close-period"],
    ):
        proc = run(*command, "--dsn", bad, env=key)
        assert proc.returncode == ExitCode.DATABASE, (command, proc.stderr)
        assert "malformed connection string" in one_line_error(proc), command
    via_env = run("usage", env={"DATABASE_URL": bad})
    assert via_env.returncode == ExitCode.DATABASE, via_env.stderr


#: A Stripe price of 9.00 for up to 2 series, then 1.50 a series (amounts in minor units).
PRICE = (
    '{{"id": "price_1", "currency": "{currency}", "billing_scheme": "tiered",'
    ' "tiers_mode": "graduated", "tiers": [{{"up_to": 2, "flat_amount": 900}},'
    ' {{"up_to": null, "unit_amount": 150}}]}}'
)


def scene(conn: psycopg.Connection[Any], name: str = "acme", currency: str = "usd") -> Org:
    """An organization with 3 series (one of a variant with parameters), a price, an alert,
    a Stripe customer and a parked relay: every read command has rows to show."""
    org = make_org(conn, name)
    variant = make_variant(conn, org.benchmarks[0], '{"threads": 4}')
    conn.execute(
        "SELECT active_series._store_price(%s, %s::jsonb)",
        (org.id, PRICE.format(currency=currency)),
    )
    conn.execute("SELECT active_series.set_alert(%s, 2)", (org.id,))
    bill(conn, org.id, f"cus_{name}")
    ingest(
        conn,
        org,
        org.testbeds[0],
        [(org.benchmarks[0], variant, org.measures[0]), *all_series(org)[3:5]],
    )
    conn.execute(
        "INSERT INTO active_series._relay_state (organization_id, parked_at, parked_reason)"
        " VALUES (%s, now(), 'No such customer') ON CONFLICT (organization_id)"
        " DO UPDATE SET parked_at = now(), parked_reason = excluded.parked_reason",
        (org.id,),
    )
    return org


#: Every JSON a command prints (its arguments, the organization id filled in).
JSON_COMMANDS = (
    ("usage", "--json"),
    ("usage", "--json", "--organization", "{org}"),
    ("usage", "--json", "--organization", "{org}", "--history"),
    ("explain", "--json", "--organization", "{org}"),
    ("relay", "status", "--json"),
    ("relay", "failures", "--json"),
    ("alerts", "--json"),
)
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00")
ANY_TIME = re.compile(r"\d{4}-\d\d-\d\d.\d\d:\d\d")


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_json_has_one_time_format_objects_as_objects_and_amounts_with_their_unit(conn, dsn) -> None:
    org = scene(conn)
    times = 0
    for command in JSON_COMMANDS:
        proc = run(*(a.format(org=org.id) for a in command), "--dsn", dsn)
        assert proc.returncode == 0, (command, proc.stderr)
        for line in proc.stdout.splitlines():
            for text in strings(json.loads(line)):
                if ANY_TIME.match(text):
                    assert ISO_TIME.fullmatch(text), (command, text)
                    times += 1
    assert times >= 20

    [usage] = json.loads(run("usage", "--json", "--dsn", dsn).stdout)
    assert usage["amount"] == "10.50"  # 9.00 + 1.50, in dollars
    assert (usage["currency"], usage["amount_minor_units"]) == ("usd", 1050)
    [status] = json.loads(run("relay", "status", "--json", "--dsn", dsn).stdout)
    assert re.fullmatch(r"PT\d+(\.\d+)?S", status["oldest_unposted_change_age"]), status
    explained = json.loads(
        run("explain", "--json", "--organization", str(org.id), "--dsn", dsn).stdout
    )
    variants = [s["variant"] for s in explained["series"]]
    assert sorted(variants, key=len) == [{}, {}, {"threads": 4}]
    table = run("explain", "--organization", str(org.id), "--dsn", dsn).stdout
    assert '{"threads": 4}' in table


def test_usage_prints_amounts_in_major_units_with_the_currency(conn, dsn) -> None:
    dollars = scene(conn, "dollars", "usd")
    yen = scene(conn, "yen", "jpy")
    text = run("usage", "--dsn", dsn).stdout.splitlines()
    header = text[0].split()
    assert "currency" not in header
    rows = {line.split()[0]: line for line in text[1:]}
    assert "10.50 USD" in rows[str(dollars.id)]
    assert "1050 JPY" in rows[str(yen.id)]  # a zero-decimal currency: 1050 is 1050 yen
    assert " 1050 " not in rows[str(dollars.id)]
    priced = {
        r["organization_id"]: r for r in json.loads(run("usage", "--json", "--dsn", dsn).stdout)
    }
    assert (priced[yen.id]["amount"], priced[yen.id]["currency"]) == ("1050", "jpy")
    assert priced[yen.id]["amount_minor_units"] == 1050
