"""Every fenced code block of README.md, run as a reader pastes it, in README order.

Each block is either run (``Run``) or listed as not runnable here (``Skip``, with its reason),
keyed in ``BLOCKS`` by a fragment of its text that names it in exactly one block.
``test_every_block_is_run_or_listed`` fails on a block that is neither, and on a key that no
longer names one.

Blocks run in groups, each on a fresh start state of its own (``GROUPS``); within a group they
run in README order in one database, each on the state the blocks before it left:

- ```` ```sql ```` blocks statement by statement in autocommit, as ``psql`` runs them, as the
  superuser unless ``Run.role`` names a group role (a new login member of
  ``active_series_<role>``). A statement whose line ends with a comment that looks like a
  result (``-- 2``, ``-- acme | 2``) must return that as its first row.
- ```` ```sh ```` blocks through ``bash -e`` in a working directory whose ``.venv`` is this
  project's virtualenv, with ``.venv/bin`` on ``PATH`` and, where the group has a database,
  ``DATABASE_URL`` and ``PGHOST``/``PGPORT``/``PGUSER``/``PGDATABASE`` naming it. What a
  block exports is there for the next block of its group; processes it leaves in the
  background are stopped when the group ends, as are the roles and databases it created.

Each ``Run`` has a check of what the README promises next to the block; an exit status of 0
alone proves little. To cover a new block, add its fragment to ``BLOCKS`` with a group and a
check (``Outcome`` gives the statements' rows, or a sh block's output, and a superuser
connection to the group's database).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import foreign_schema as app
import psycopg
import pytest
from active_series import __version__
from active_series.devtools.stripe_emulator import run_in_thread
from active_series.install import install
from conftest import clean_env
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_attach import assert_exact, installed, usage

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VENV = Path(sys.executable).parent.parent

Conn = psycopg.Connection[Any]


# ---------------------------------------------------------------- README's blocks


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    section: str  # the "## " heading above it
    lang: str
    text: str


FENCE = re.compile(r"^( *)```(\w*)[ \t]*$")


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, in order (indented fences of list items too,
    their indentation removed)."""
    blocks: list[Block] = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening.groups()
        body: list[str] = []
        j = i + 1
        while lines[j].strip() != "```":
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        blocks.append(Block(i + 1, section, lang, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


@dataclass(frozen=True)
class Statement:
    text: str
    comment: str  # the comment after the terminating semicolon on its line, if any


def sql_statements(text: str) -> list[Statement]:
    """The statements of a SQL script, split where psql splits them: at semicolons outside
    quotes, dollar quotes and comments."""
    out: list[Statement] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        dollar = re.match(r"\$(\w*)\$", text[i:]) if c == "$" else None
        if dollar:
            end = text.index(dollar.group(0), i + len(dollar.group(0))) + len(dollar.group(0))
        elif c in "'\"":
            end = i + 1
            while True:
                end = text.index(c, end) + 1
                if not text.startswith(c, end):
                    break
                end += 1
        elif c == ";":
            line_end = text.find("\n", i)
            rest = text[i + 1 : len(text) if line_end < 0 else line_end]
            comment = rest.split("--", 1)[1].strip() if "--" in rest else ""
            statement = "".join(current).strip()
            if statement:
                out.append(Statement(statement, comment))
            current = []
            i += 1
            continue
        else:
            end = i + 1
        current.append(text[i:end])
        i = end
    assert not "".join(current).strip(), f"a statement without its semicolon: {current}"
    return out


def promised(comment: str) -> str | None:
    """The result a trailing comment promises (``1``, ``acme | 2``), or None."""
    if re.fullmatch(r"-?\d+", comment) or " | " in comment:
        return comment
    return None


def rendered(row: tuple[Any, ...]) -> str:
    return " | ".join("" if v is None else str(v) for v in row)


# ---------------------------------------------------------------- what a run gives a check


@dataclass
class Outcome:
    block: Block
    conn: Conn | None  # superuser, the group's database (None where the group has none)
    results: list[tuple[str, list[tuple[Any, ...]]]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    env: dict[str, str] = field(default_factory=dict)  # a sh block's environment after it

    def rows_of_each(self, fragment: str) -> list[list[tuple[Any, ...]]]:
        found = [rows for statement, rows in self.results if fragment in statement]
        assert found, f"no statement of the block has {fragment!r}"
        return found

    def rows(self, fragment: str) -> list[tuple[Any, ...]]:
        """The rows of the one statement of the block that contains ``fragment``."""
        found = self.rows_of_each(fragment)
        assert len(found) == 1, f"{len(found)} statements of the block have {fragment!r}"
        return found[0]

    def one(self, query: str, *args: Any) -> Any:
        assert self.conn is not None
        row = self.conn.execute(query, args).fetchone()
        assert row is not None
        return row[0]


Check = Callable[[Outcome], None]


@dataclass(frozen=True)
class Run:
    group: str
    check: Check
    role: str | None = None  # sql blocks: run as a new login member of active_series_<role>
    before: tuple[str, ...] = ()  # SQL the superuser runs first: what happens in between
    why_before: str = ""


@dataclass(frozen=True)
class Skip:
    reason: str


# ---------------------------------------------------------------- the checks


def check_db_start(o: Outcome) -> None:
    dsn = o.env["DATABASE_URL"]
    assert "dbname=active_series" in dsn
    assert o.stdout.splitlines()[0] == dsn  # db start prints the DSN db status gives
    with psycopg.connect(dsn) as c:  # with the reference model, attached
        assert c.execute("SELECT count(*) FROM active_series._attachment").fetchone() == (9,)
    # the cluster's data is in .active-series/db of the working directory, as the text says
    assert ".active-series/db " in dsn
    lines = o.stdout.splitlines()
    assert len(lines) == 2, o.stdout  # the DSN, then usage: its header and no organization
    assert lines[1].split()[:2] == ["organization_id", "organization_name"]


def check_create_reference_model(o: Outcome) -> None:
    assert o.one("SELECT count(*) FROM active_series._attachment") == 9  # the nine roles
    assert o.one("SELECT to_regclass('active_series.report_benchmark')::text") is not None


def check_attach(o: Outcome) -> None:
    assert o.conn is not None
    assert [s.split("(")[0] for s, _ in o.results] == [
        "SELECT * FROM active_series.attach",
        "CALL active_series.backfill",
    ]
    assert installed(o.conn)["rows"] == 8
    assert usage(o.conn, ATTACH_ORG.id) == 1  # the row that was there before attach
    assert_exact(o.conn, ATTACH_ORG)


def check_ingest(o: Outcome) -> None:
    # the comments of RETURNING id and of the usage lines were checked as promised results
    assert [rows for rows in o.rows_of_each("FROM active_series.usage")] == [
        [("acme", 2)],
        [("acme", 0)],
        [("acme", 2)],
    ]
    series = o.conn.execute(  # type: ignore[union-attr]
        "SELECT s.variant_id, v.parameters FROM active_series.period_series(1) AS s"
        " JOIN active_series.variant AS v ON v.id = s.variant_id ORDER BY 1"
    ).fetchall()
    assert series == [(1, {}), (2, {"size_mb": 16})]


def check_sql_api(o: Outcome) -> None:
    assert [r[1:2] + r[5:] for r in o.rows("FROM active_series.usage")] == [("acme", 2)]
    assert o.rows("period_usage(1)") == [(2,)]
    assert [r[2] for r in o.rows("FROM active_series.periods(1)")] == [2]
    assert o.rows("period_usage(1, '2026-10-01+00')") == [(0,)]
    series = o.rows("FROM active_series.period_series(1)")
    assert [r[:5] for r in series] == [
        ("p", "linux", "parse", {}, "latency"),
        ("p", "linux", "parse", {"size_mb": 16}, "latency"),
    ]
    assert o.rows("count_active(1,") == [(2,)]
    assert o.rows("relay_resume(1)") == [(False,)]  # not parked
    assert o.rows("FROM active_series.verify()") == []  # no rows = healthy
    # the periods re-bucketed by set_billing_period still count the same series
    assert o.one("SELECT active_series.period_usage(1)") == 2
    assert o.one("SELECT stripe_customer_id FROM active_series.usage") is None  # unlinked


#: What the worker does between the ingest and the usage page: it reads the organization's
#: metered price (graduated: 900 for the first 3 series, then 150 each); and the application
#: reports one more series, whose commit reaches the tier bound (an alert).
PRICE = json.dumps(
    {
        "id": "price_readme",
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": "graduated",
        "tiers": [{"up_to": 3, "flat_amount": 900}, {"up_to": None, "unit_amount": 150}],
    }
)
READER_BEFORE = (
    f"SELECT active_series._store_price(1, '{PRICE}'::jsonb)",
    "UPDATE active_series.testbed SET archived = NULL WHERE id = 1",
    "INSERT INTO active_series.measure (project_id, name) VALUES (1, 'memory')",
    "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value) VALUES (1, 2, 512)",
)


def check_reader(o: Outcome) -> None:
    (summary,) = o.rows("FROM active_series.usage_summary(1)")
    assert summary[2:7] == (3, 3, 0, 900, "usd")  # count, private, public, amount, currency
    assert summary[9] is None  # not linked to a Stripe customer (yet): nothing to hold
    tiers = o.rows("FROM active_series.price_preview(1) AS p")
    assert [r[:3] for r in tiers] == [(3, 900, "usd")] * 2
    assert [r[3:] for r in tiers] == [(1, 1, 3, 3, 900), (2, 4, None, 0, 0)]
    # newest first: this period, and the one set_billing_period made (no activity in it:
    # Stripe bills the first tier's flat amount at a count of 0 too)
    periods = o.rows("FROM active_series.periods(1) AS h")
    assert [(r[2], r[3]) for r in periods] == [(3, 900), (0, 900)]
    assert periods[-1][:2] == (
        dt.datetime(2026, 11, 5, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 5, tzinfo=dt.UTC),
    )
    series = o.rows("FROM active_series.period_series(1)")
    assert [(r[2], r[3]) for r in series] == [
        ({}, "latency"),
        ({}, "memory"),
        ({"size_mb": 16}, "latency"),
    ]
    assert [r[1:4] for r in o.rows("FROM active_series.alerts")] == [(3, 3, "price_tier")]


def check_operator(o: Outcome) -> None:
    assert o.one("SELECT next_alert FROM active_series.usage_summary(1)") == 500
    assert o.one("SELECT series_cap FROM active_series.usage_summary(1)") is None


def check_tenant(o: Outcome) -> None:
    """Each tenant function answers what the reader's API answers for organization 1."""
    assert o.conn is not None

    def of_org_1(query: str) -> list[tuple[Any, ...]]:
        assert o.conn is not None
        return o.conn.execute(query).fetchall()

    assert o.rows("tenant_usage()") == of_org_1(
        "SELECT organization_id, organization_name, plan, period_start, period_end,"
        " active_series, private_series, public_series FROM active_series.usage"
        " WHERE organization_id = 1"
    )
    summary = o.rows("tenant_usage_summary()")
    assert [r[5] for r in summary] == [3]  # active_series, as the reader saw it
    assert summary == of_org_1("SELECT * FROM active_series.usage_summary(1)")
    assert o.rows("tenant_price_preview()") == of_org_1(
        "SELECT * FROM active_series.price_preview(1)"
    )
    assert o.rows("tenant_periods()") == of_org_1("SELECT * FROM active_series.periods(1)")
    assert o.rows("tenant_period_series()") == of_org_1(
        "SELECT * FROM active_series.period_series(1)"
    )
    assert o.rows("tenant_period_usage()") == of_org_1("SELECT active_series.period_usage(1)")
    alerts = o.rows("tenant_alerts()")
    assert [r[3:6] for r in alerts] == [(3, 3, "price_tier")]
    assert alerts == of_org_1(
        "SELECT id, period_start, period_end, threshold, series_count, source, created"
        " FROM active_series.alerts WHERE organization_id = 1 ORDER BY id"
    )


def check_roles(o: Outcome) -> None:
    for role, group in (
        ("bencher_app", "ingest"),
        ("dashboard", "reader"),
        ("billing_worker", "worker"),
        ("alice", "admin"),
        ("tenant_dashboard", "tenant"),
    ):
        assert o.one("SELECT pg_has_role(%s, %s, 'MEMBER')", role, f"active_series_{group}")


def check_worker(o: Outcome) -> None:
    first, second = o.stdout.split("meter ", 2)[1:]  # the two runs of stripe setup
    assert ": created" in first and "customer" in first
    assert ": created" not in second, second  # the second run finds all of it
    assert o.conn is not None
    row = o.conn.execute(
        "SELECT in_sync, stripe_value, period_usage FROM active_series.relay_status"
        " WHERE organization_id = 1"
    ).fetchone()
    assert row == (True, 3, 3), row
    assert o.one("SELECT stripe_customer_id FROM active_series.usage WHERE organization_id = 1")


def check_billing_drift(o: Outcome) -> None:
    assert o.rows("billing_drift") == []  # nothing finalized yet


def check_dump_restore(o: Outcome) -> None:
    assert o.conn is not None
    source = o.conn.execute("SELECT * FROM active_series.usage").fetchall()
    restored = make_conninfo(o.conn.info.dsn, dbname="restored")
    with psycopg.connect(restored) as c:
        assert c.execute("SELECT * FROM active_series.usage").fetchall() == source
        assert c.execute("SELECT * FROM active_series.verify()").fetchall() == []


def check_upgrade_plain(o: Outcome) -> None:
    assert o.one("SELECT version FROM active_series._meta") == __version__


# ---------------------------------------------------------------- every block of README.md

LISTING = "a reference listing of commands and their options, not a sequence to run"

BLOCKS: dict[str, Run | Skip] = {
    # ## Quick start
    "make test      # installs": Skip("make test runs this test; make demo runs in test_demo.py"),
    "active-series db start          #": Run("embedded", check_db_start),
    "make install    ": Skip(
        "make install writes the server's share directory (root) and the DSN is a placeholder;"
        " test_install.py covers both ways"
    ),
    "psql -c 'SELECT active_series.create_reference_model()'": Run(
        "server", check_create_reference_model
    ),
    # ## Your own tables: attach
    "SELECT * FROM active_series.attach(": Run("attach", check_attach),
    # ## Ingest with plain SQL
    "INSERT INTO active_series.organization (name) VALUES ('acme')": Run("reference", check_ingest),
    # ## Ask from psql (the SQL API)
    "-- usage now: every organization's": Run("reference", check_sql_api),
    # ## Showing usage in your application
    "-- as the application (a member of active_series_reader)": Run(
        "reference",
        check_reader,
        role="reader",
        before=READER_BEFORE,
        why_before="the worker has read the price; one more series reaches its tier bound",
    ),
    "-- as an operator (a member of active_series_admin)": Run(
        "reference", check_operator, role="admin"
    ),
    "-- as a login role in active_series_tenant": Run("reference", check_tenant, role="tenant"),
    # ## The command line
    "active-series db start|stop|status": Skip(LISTING),
    # ## Worker
    "export STRIPE_API_KEY=sk_test_emulator": Run("reference", check_worker),
    "export STRIPE_API_KEY=sk_live_...": Skip(LISTING + "; sk_live_... is a placeholder"),
    "SELECT * FROM active_series.billing_drift;": Run("reference", check_billing_drift),
    "host=db1,db2": Skip("the hosts db1 and db2 of a replicated pair (test_relay_failover.py)"),
    # ## Roles and privileges
    "CREATE ROLE bencher_app": Run("reference", check_roles),
    # ## PL/Python (optional)
    "ALTER ROLE ops SET active_series.stripe_api_key = 'sk_live_...'": Skip(
        "a live Stripe key, a placeholder; test_plpython.py calls these on the emulator"
    ),
    # ## Backups and upgrades
    "pg_dump -Fc -f app.dump": Run("reference", check_dump_restore),
    # ## Upgrade
    'active-series install --dsn "$DATABASE_URL"\n': Run("reference", check_upgrade_plain),
    "sudo make install && psql -c 'ALTER EXTENSION": Skip(
        "root, and an extension install (test_upgrade.py runs ALTER EXTENSION ... UPDATE)"
    ),
    # ## Tests
    "make bench ": Skip("the benchmarks and the soak take minutes to hours"),
    # ## Development
    "sql/, triggers/ ": Skip("the source tree, not commands"),
}


def registered() -> list[tuple[Block, Run | Skip]]:
    """README's blocks in order, each with its entry of BLOCKS (asserted unique both ways)."""
    blocks = readme_blocks(README.read_text())
    out = []
    for block in blocks:
        keys = [k for k in BLOCKS if k in block.text]
        assert len(keys) <= 1, f"README.md:{block.line}: several keys name it: {keys}"
        if keys:
            out.append((block, BLOCKS[keys[0]]))
    return out


def test_every_block_is_run_or_listed() -> None:
    blocks = readme_blocks(README.read_text())
    assert len(blocks) > 10
    unknown = [
        f"README.md:{b.line} ({b.section}): {b.text.splitlines()[0]}"
        for b in blocks
        if not any(k in b.text for k in BLOCKS)
    ]
    assert not unknown, "blocks neither run nor listed in BLOCKS:\n" + "\n".join(unknown)
    gone = [k for k in BLOCKS if sum(k in b.text for b in blocks) != 1]
    assert not gone, f"keys of BLOCKS that name no block, or several: {gone}"
    for block, entry in registered():
        assert block.lang in ("sql", "sh", ""), f"README.md:{block.line}: fence {block.lang!r}"
        if isinstance(entry, Run):
            assert entry.group in GROUPS, entry.group
            assert entry.why_before or not entry.before, "say what happens before the block"
            assert block.lang in ("sql", "sh"), f"README.md:{block.line}: what runs it?"
        if block.lang == "sql":
            assert not re.search(r"^\s*\\", block.text, re.M), "psql meta-commands"
            sql_statements(block.text)  # parses


def test_the_splitter_splits_where_psql_does() -> None:
    statements = sql_statements(
        "SELECT 'a;''b' AS x;  -- 1\nDO $f$ BEGIN PERFORM 1; END $f$;\n"
        '/* c; */ SELECT "x;y" FROM t; -- acme | 2\n'
    )
    assert [(s.text, s.comment) for s in statements] == [
        ("SELECT 'a;''b' AS x", "1"),
        ("DO $f$ BEGIN PERFORM 1; END $f$", ""),
        ('SELECT "x;y" FROM t', "acme | 2"),
    ]
    assert [promised(c) for c in ("1", "acme | 2", "every period with its count")] == [
        "1",
        "acme | 2",
        None,
    ]


# ---------------------------------------------------------------- groups and their start


ATTACH_ORG: app.Org


@dataclass(frozen=True)
class Group:
    doc: str  # the fresh state the group starts from
    database: Callable[[pytest.FixtureRequest], str | None]


def no_db(request: pytest.FixtureRequest) -> None:
    return None


def reference_db(request: pytest.FixtureRequest) -> str:
    dsn: str = request.getfixturevalue("dsn")
    with psycopg.connect(dsn, autocommit=True) as c:
        # the Roles block grants a role to alice, a login role the README assumes exists
        c.execute(
            "DO $$BEGIN IF to_regrole('alice') IS NULL THEN CREATE ROLE alice LOGIN; END IF; END$$"
        )
    return dsn


def server_db(request: pytest.FixtureRequest) -> str:
    dsn: str = request.getfixturevalue("new_empty_db")()
    install(dsn)
    return dsn


def attach_db(request: pytest.FixtureRequest) -> str:
    global ATTACH_ORG
    dsn = server_db(request)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(app.DDL)
        ATTACH_ORG = app.make_org(c, "before")
        org = ATTACH_ORG
        app.ingest(c, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    return dsn


GROUPS: dict[str, Group] = {
    "embedded": Group("no database: an empty working directory (db start makes one)", no_db),
    "server": Group(
        "a new database on a server, the schema installed, nothing attached", server_db
    ),
    "attach": Group(
        "the schema installed, schema app (app_schema.py) with rows, unattached", attach_db
    ),
    "reference": Group(
        "schema installed and the reference model (as db start makes), a login role alice",
        reference_db,
    ),
}


@dataclass
class Runner:
    """Runs one group's blocks, on its database, in one working directory."""

    dsn: str | None
    workdir: Path
    conn: Conn | None
    env: dict[str, str]
    sessions: list[int] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)

    def run(self, block: Block, entry: Run) -> Outcome:
        outcome = Outcome(block, self.conn)
        for statement in entry.before:
            assert self.conn is not None
            self.conn.execute(statement)
        if block.lang == "sql":
            self.run_sql(block, entry, outcome)
        else:
            self.run_sh(block, outcome)
        entry.check(outcome)
        return outcome

    def login(self, role: str) -> str:
        name = f"readme_{role}_{uuid.uuid4().hex[:8]}"
        assert self.conn is not None
        self.conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(f"active_series_{role}")
            )
        )
        self.roles.append(name)
        assert self.dsn is not None
        return make_conninfo(self.dsn, user=name)

    def run_sql(self, block: Block, entry: Run, outcome: Outcome) -> None:
        assert self.dsn is not None
        dsn = self.login(entry.role) if entry.role else self.dsn
        with psycopg.connect(dsn, autocommit=True) as c:
            for s in sql_statements(block.text):
                try:
                    cur = c.execute(s.text.encode())
                except psycopg.Error as exc:
                    pytest.fail(f"README.md:{block.line}: {s.text}\n{exc}")
                rows = cur.fetchall() if cur.description else []
                outcome.results.append((s.text, rows))
                expected = promised(s.comment)
                if expected is not None:
                    assert rows, f"README.md:{block.line}: {s.text} returned no row"
                    assert rendered(rows[0]) == expected, f"README.md:{block.line}: {s.text}"

    def run_sh(self, block: Block, outcome: Outcome) -> None:
        state = self.workdir / ".readme-env"
        script = f"set -eo pipefail\n. {state}\n{block.text}\nexport -p > {state}\n"
        out, err = self.workdir / ".readme-out", self.workdir / ".readme-err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                ["bash", "-c", script],
                cwd=self.workdir,
                env=self.env,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.sessions.append(proc.pid)
            code = proc.wait(timeout=180)
        outcome.stdout, outcome.stderr = out.read_text(), err.read_text()
        assert code == 0, (
            f"README.md:{block.line} exited {code}:\n{block.text}\n"
            f"{outcome.stdout}\n{outcome.stderr}"
        )
        dump = subprocess.run(
            ["bash", "-c", f". {state}; env -0"], capture_output=True, check=True
        ).stdout.decode()
        outcome.env = dict(kv.split("=", 1) for kv in dump.split("\0") if "=" in kv)

    def close(self) -> None:
        for pgid in self.sessions:  # what blocks left running in the background
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        if self.conn is not None:
            for name in self.roles:
                ident = sql.Identifier(name)
                self.conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (name,),
                )
                self.conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                self.conn.execute(sql.SQL("DROP ROLE {}").format(ident))
            self.conn.close()


def libpq_env(dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    return {env: str(params[key]) for key, env in names.items() if key in params}


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A working directory whose .venv is this project's virtualenv (the postgres user may
    enter it: the embedded cluster's data goes there when we are root)."""
    base = Path(tempfile.mkdtemp(prefix="as-readme-"))
    base.chmod(0o711)
    (base / ".venv").symlink_to(VENV)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def snapshot(superuser_dsn: str) -> tuple[set[str], set[str]]:
    with psycopg.connect(superuser_dsn) as c:
        roles = {r for (r,) in c.execute("SELECT rolname FROM pg_roles")}
        dbs = {d for (d,) in c.execute("SELECT datname FROM pg_database")}
    return roles, dbs


def drop_new(superuser_dsn: str, before: tuple[set[str], set[str]]) -> None:
    """Drop the roles and databases made since ``before`` (the group's database, pg_dump's
    restore target, the Roles block's roles)."""
    roles, dbs = snapshot(superuser_dsn)
    for name in sorted(roles - before[0]):
        ident = sql.Identifier(name)
        for db in sorted(dbs - before[1]) + ["postgres"]:
            with psycopg.connect(make_conninfo(superuser_dsn, dbname=db), autocommit=True) as c:
                c.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        with psycopg.connect(superuser_dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP ROLE {}").format(ident))
    with psycopg.connect(superuser_dsn, autocommit=True) as c:
        for name in sorted(dbs - before[1]):
            c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("group", list(GROUPS))
def test_the_readme_blocks_of_each_group_run_in_order(
    group: str,
    request: pytest.FixtureRequest,
    superuser_dsn: str,
    template_db: str,  # made before the snapshot below: not the group's to drop
    workdir: Path,
) -> None:
    entries = [(b, e) for b, e in registered() if isinstance(e, Run) and e.group == group]
    assert entries, f"no README block runs in group {group}"
    before = snapshot(superuser_dsn)
    dsn = GROUPS[group].database(request)
    env = clean_env()
    for name in ("DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"):
        env.pop(name, None)
    env.pop("STRIPE_API_KEY", None)
    stripe_server, env["STRIPE_API_BASE"] = run_in_thread(rate_limit=None)  # the Worker block's
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if dsn is not None:
        env |= {"DATABASE_URL": dsn} | libpq_env(dsn)
    (workdir / ".readme-env").write_text("")
    conn = psycopg.connect(dsn, autocommit=True) if dsn is not None else None
    runner = Runner(dsn, workdir, conn, env)
    try:
        for block, entry in entries:
            runner.run(block, entry)
    finally:
        runner.close()
        stripe_server.shutdown()
        stripe_server.server_close()
        if group == "embedded":
            subprocess.run(
                [str(workdir / ".venv/bin/active-series"), "db", "stop"],
                cwd=workdir,
                env=env,
                capture_output=True,
                check=False,
            )
        drop_new(superuser_dsn, before)
