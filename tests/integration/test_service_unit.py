"""docs/active-series-worker.service works as documented: the role its DATABASE_URL names,
created as README.md shows, logs in and relays; ExecStart is the installed console script with
options the worker accepts; its restart and stop settings agree with the worker's exit codes and
shutdown timeout."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest
from active_series.errors import ExitCode
from conftest import clean_env, run_ok
from oracle import ingest, make_org
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from relay_harness import API_KEY, Emulator, bill, periods

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "docs" / "active-series-worker.service"
README = REPO / "README.md"


def comments() -> list[str]:
    return [
        line.lstrip("#").strip() for line in UNIT.read_text().splitlines() if line.startswith("#")
    ]


def setting(name: str) -> str:
    """The value of ``name=`` in the unit, continuation lines joined."""
    text = UNIT.read_text().replace("\\\n", " ")
    found = re.findall(rf"^{name}=(.*)$", text, re.MULTILINE)
    assert len(found) == 1, f"{name}= set {len(found)} times in {UNIT}"
    return str(found[0]).strip()


def documented(pattern: str) -> str:
    """The first group of the first comment line matching ``pattern``."""
    for line in comments():
        m = re.search(pattern, line)
        if m:
            return m.group(1)
    raise AssertionError(f"{UNIT} documents nothing matching {pattern!r}")


def environment() -> dict[str, str]:
    """The variables the comments tell to write into the EnvironmentFile."""
    env = {}
    for name in ("DATABASE_URL", "STRIPE_API_KEY"):
        env[name] = documented(rf"^{name}=(\S+)$")
    return env


def exec_start() -> list[str]:
    return shlex.split(setting("ExecStart"))


def readme_role_statement(role: str) -> str | None:
    """README's ``CREATE ROLE <role> ...;`` (section Roles and privileges), if it has one."""
    text = README.read_text()
    section = text.split("## Roles and privileges", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        m = re.match(rf"(CREATE ROLE {re.escape(role)}\b[^;]*;)", line.strip())
        if m:
            return m.group(1)
    return None


def worker_options() -> set[str]:
    """The options ``active-series worker --help`` lists."""
    done = run_ok([sys.executable, "-m", "active_series.cli", "worker", "--help"])
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", done.stdout))


def installed(program: str) -> str:
    """The unit's program as this test's virtualenv has it."""
    return str(Path(sys.prefix) / "bin" / Path(program).name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drop_role(admin: psycopg.Connection, role: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
    )
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_exec_start_is_the_installed_console_script_with_options_the_worker_accepts():
    argv = exec_start()
    venv = documented(r"python3 -m venv (\S+)$")
    assert argv[0] == f"{venv}/bin/active-series", argv[0]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "active-series" in scripts
    assert argv[1] == "worker"
    known = worker_options()
    options = [a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")]
    assert options, argv
    unknown = [o for o in options if o not in known]
    assert unknown == [], f"options of ExecStart the worker does not have: {unknown}"


def test_restart_and_stop_settings_agree_with_the_worker():
    # the exits that need a person: a refused login, schema of another version, no Stripe key
    assert {int(c) for c in setting("RestartPreventExitStatus").split()} == {
        ExitCode.DATABASE,
        ExitCode.SCHEMA,
        ExitCode.STRIPE_KEY,
    }
    assert setting("KillSignal") == "SIGTERM"
    argv = exec_start()
    shutdown = 30.0  # the worker's default
    if "--shutdown-timeout" in argv:
        shutdown = float(argv[argv.index("--shutdown-timeout") + 1])
    # systemd must not SIGKILL the worker before its graceful stop may end
    assert float(setting("TimeoutStopSec")) > shutdown
    # the files the comments create are the ones the unit uses
    assert documented(r"-o root /dev/null (\S+)") == setting("EnvironmentFile")
    assert documented(r"useradd --system .* (\S+)$") == setting("User") == setting("Group")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path):
    # as installed: its program in this test's virtualenv
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(exec_start()[0], installed(exec_start()[0])))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_units_database_role_created_as_readme_shows_runs_the_worker(
    dsn: str, relay_emulator: Emulator, tmp_path: Path
):
    env = environment()
    role = conninfo_to_dict(env["DATABASE_URL"]).get("user")
    assert role, env["DATABASE_URL"]
    statement = readme_role_statement(str(role))

    with psycopg.connect(dsn, autocommit=True) as admin:
        org = make_org(admin, "unit")
        ingest(admin, org, org.testbeds[0], [(b, m) for b in org.benchmarks for m in org.measures])
        customer = relay_emulator.customer("unit")
        bill(admin, org.id, customer)
        if statement is not None:
            drop_role(admin, str(role))
            admin.execute(statement)  # as README has it
        try:
            as_role = make_conninfo(dsn, user=str(role))
            # it logs in (the worker would retry a refused login until stopped)
            with psycopg.connect(as_role) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
            # the unit's command line, with this test's virtualenv, database and emulator
            argv = exec_start()
            program, args = installed(argv[0]), argv[1:]
            if "--metrics-port" in args:
                args[args.index("--metrics-port") + 1] = str(free_port())
            done = subprocess.run(
                [program, *args, "--stripe-api-base", relay_emulator.url, "--once"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env=dict(
                    clean_env(),
                    DATABASE_URL=as_role,
                    STRIPE_API_KEY=API_KEY,
                ),
            )
            assert done.returncode == 0, done.stdout + done.stderr
            # a login role of the worker group, as README creates it: not a superuser
            assert statement is not None, f"README.md does not show how to create {role}"
            member = admin.execute(
                "SELECT r.rolcanlogin, r.rolsuper,"
                " pg_has_role(r.oid, 'active_series_worker', 'MEMBER')"
                " FROM pg_roles AS r WHERE r.rolname = %s",
                (role,),
            ).fetchone()
            assert member == (True, False, True)
            # and the worker relayed the count
            [(start, end, usage)] = periods(admin, org.id)
            assert usage == len(org.benchmarks) * len(org.measures)
            assert relay_emulator.last_value(customer, start, end) == usage
        finally:
            if statement is not None:
                drop_role(admin, str(role))
