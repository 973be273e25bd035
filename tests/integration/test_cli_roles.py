"""The ``active-series`` command line as each role the README documents: a login role in
active_series_reader runs every read command with the owner's results; a command a role may
not run fails with one line that names the role it needs (exit 3)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from active_series.errors import ExitCode
from oracle import Org
from relay_harness import API_KEY
from test_cli import one_line_error, run, scene

Login = Callable[[str | None], str]

#: The read commands (the organization id filled in).
READS: dict[str, tuple[str, ...]] = {
    "usage": ("usage", "--json"),
    "usage --organization": ("usage", "--json", "--organization", "{org}"),
    "usage --history": ("usage", "--json", "--organization", "{org}", "--history"),
    "usage --period": ("usage", "--json", "--organization", "{org}", "--period", "{start}"),
    "count": ("count", "--organization", "{org}"),
    "count --period": ("count", "--organization", "{org}", "--period", "{start}"),
    "count --from --to": (
        "count", "--organization", "{org}", "--from", "2000-01-01", "--to", "2100-01-01",
    ),
    "explain": ("explain", "--json", "--organization", "{org}"),
    "relay status": ("relay", "status", "--json"),
    "relay failures": ("relay", "failures", "--json"),
    "alerts": ("alerts", "--json"),
}  # fmt: skip

#: The roles that may run each read command (besides the admin and the owner).
READERS = {"reader"}
READ_BY_WORKER = {"usage", "count", "relay status", "relay failures"}
NEEDS = {
    "read": "active_series_reader, active_series_worker or active_series_admin",
    "reader": "active_series_reader or active_series_admin",
    "admin": "active_series_admin",
    "worker": "active_series_worker or active_series_admin",
    "owner": "the owner of schema active_series",
}

#: Commands that change things, with the roles they need (NEEDS), for the refusals.
WRITES: dict[str, tuple[str, tuple[str, ...]]] = {
    "verify": ("admin", ("verify",)),
    "backfill": ("admin", ("backfill",)),
    "relay resume": ("admin", ("relay", "resume", "--organization", "{org}")),
    "close-period": ("worker", ("close-period", "--stripe-api-base", "http://127.0.0.1:9")),
    "worker": ("worker", ("worker", "--once", "--stripe-api-base", "http://127.0.0.1:9")),
    "install": ("owner", ("install", "--without-plpython")),
    "attach": ("owner", ("attach", "--table", "organization=active_series.organization")),
    "detach": ("owner", ("detach",)),
    "create-model": ("owner", ("create-model", "--schema", "elsewhere")),
}
#: Which of WRITES each role may not run.
REFUSED = {
    "reader": set(WRITES),
    "ingest": set(WRITES),
    "worker": {"verify", "backfill", "relay resume", "install", "attach", "detach", "create-model"},
    "admin": {"install"},
}


def args(command: tuple[str, ...], org: Org, start: str) -> list[str]:
    return [a.format(org=org.id, start=start) for a in command]


def stable(name: str, stdout: str) -> Any:
    """The output to compare between roles: relay status without its ages (they grow)."""
    if name != "relay status":
        return stdout
    return [{k: v for k, v in row.items() if not k.endswith("_age")} for row in json.loads(stdout)]


@pytest.fixture
def billed(conn) -> tuple[Org, str]:
    """The scene of test_cli (rows for every read command), with its period start."""
    org = scene(conn)
    start = conn.execute(
        "SELECT period_start FROM active_series.current_period(%s)", (org.id,)
    ).fetchone()[0]
    return org, start.isoformat()


def check_refusal(proc: subprocess.CompletedProcess[str], name: str, needs: str) -> None:
    assert proc.returncode == ExitCode.DATABASE, (name, proc.stdout, proc.stderr)
    line = one_line_error(proc)
    assert line.startswith(f"active-series: permission denied: {name} needs {needs}"), line
    assert proc.stdout == "", name


@pytest.mark.parametrize("role", ["reader", "worker", "ingest", "admin"])
def test_each_read_command_as_each_role(dsn, login: Login, billed, role: str) -> None:
    org, start = billed
    as_role = login(role)
    for name, command in READS.items():
        owner = run(*args(command, org, start), "--dsn", dsn)
        assert owner.returncode == 0, (name, owner.stderr)
        assert owner.stdout.strip() not in ("", "[]", "0"), name  # something to compare
        proc = run(*args(command, org, start), "--dsn", as_role)
        family = name.split(" -")[0]
        if role in READERS | {"admin"} or (role == "worker" and family in READ_BY_WORKER):
            assert proc.returncode == 0, (name, proc.stderr)
            assert stable(name, proc.stdout) == stable(name, owner.stdout), name
        else:
            needs = NEEDS["reader"] if family in ("explain", "alerts") else NEEDS["read"]
            check_refusal(proc, family, needs)


@pytest.mark.parametrize("role", sorted(REFUSED))
def test_a_command_the_role_may_not_run_names_the_role_it_needs(
    conn,
    dsn,
    login: Login,
    billed,
    role: str,
) -> None:
    org, start = billed
    as_role = login(role)
    before = conn.execute("SELECT count(*) FROM active_series._attachment").fetchone()
    for name in sorted(REFUSED[role]):
        needs, command = WRITES[name]
        proc = run(*args(command, org, start), "--dsn", as_role, env={"STRIPE_API_KEY": API_KEY})
        check_refusal(proc, name, NEEDS[needs])
    assert conn.execute("SELECT count(*) FROM active_series._attachment").fetchone() == before
    assert conn.execute("SELECT to_regnamespace('elsewhere')").fetchone() == (None,)


def test_a_role_of_no_group_is_told_which_role_a_command_needs(dsn, login: Login, billed) -> None:
    org, start = billed
    nobody = login(None)
    check_refusal(run("usage", "--dsn", nobody), "usage", NEEDS["read"])
    check_refusal(run("relay", "resume", "--organization", "1", "--dsn", nobody),
                  "relay resume", NEEDS["admin"])  # fmt: skip


def follow_first_line(conninfo: str) -> tuple[str, subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "active_series.cli", "alerts", "--json", "--follow"]
        + ["--dsn", conninfo],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or []], daemon=True).start()
    try:
        return lines.get(timeout=30), proc
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"no alert from alerts --follow: {proc.stderr.read()}") from None


def test_alerts_follow_starts_as_a_reader(dsn, login: Login, billed) -> None:
    expected = run("alerts", "--json", "--dsn", dsn).stdout.splitlines()[0]
    first, proc = follow_first_line(login("reader"))
    try:
        assert first.strip() == expected
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(10)
    refused = run("alerts", "--json", "--follow", "--dsn", login("ingest"))
    check_refusal(refused, "alerts", NEEDS["reader"])
