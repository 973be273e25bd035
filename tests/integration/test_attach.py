"""attach / detach on an application's own tables (tests/integration/foreign_schema.py).

The application's own statements ingest; every count is compared with a count from its
rows alone (foreign_schema.oracle) and with verify(). Bad attach input is refused with a
clear error and leaves nothing behind (docs/bad-input.md, "attach")."""

from __future__ import annotations

import datetime as dt
import random
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

import foreign_schema as app
import psycopg
import pytest
from active_series.install import install
from conftest import run_ok
from oracle import utc
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]
CLI = [sys.executable, "-m", "active_series.cli"]


@pytest.fixture
def app_dsn(new_empty_db: Callable[[], str]) -> str:
    """A database with the active_series schema (no reference model) and schema app."""
    dsn = new_empty_db()
    install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(app.DDL)
    return dsn


@pytest.fixture
def app_conn(app_dsn: str) -> Any:
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        yield conn


def months(conn: Conn, org: int) -> list[tuple[dt.datetime, dt.datetime, int]]:
    return conn.execute(
        "SELECT period_start, period_end, active_series FROM active_series.periods(%s) ORDER BY 1",
        (org,),
    ).fetchall()


def assert_exact(conn: Conn, *orgs: app.Org) -> None:
    for org in orgs:
        for start, end, count in months(conn, org.id):
            assert count == app.oracle(conn, org.id, start, end), (org.id, start)
    assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []


def usage(conn: Conn, org: int, start: dt.datetime | None = None) -> int:
    return app.one(conn, "SELECT active_series.period_usage(%s, %s)", org, start)


def test_the_applications_own_statements_count_exactly(app_conn: Conn) -> None:
    conn = app_conn
    app.attach_app(conn)
    a, b = app.make_org(conn, "a"), app.make_org(conn, "b", testbeds=1)
    series = [(bench, m) for bench in a.benchmarks for m in a.measures]
    conn.execute("SET active_series.allow_explicit_created = on")
    app.ingest(conn, a, a.testbeds[0], series[:3], created=utc(2026, 9, 3))
    app.ingest(conn, a, a.testbeds[1], series[2:], created=utc(2026, 10, 30, 23, 59))
    conn.execute("RESET active_series.allow_explicit_created")
    app.ingest(conn, a, a.testbeds[0], series[:2])
    app.ingest(conn, a, a.testbeds[0], series[:2])  # the same again: nothing new
    app.ingest(conn, b, b.testbeds[0], [(b.benchmarks[0], b.measures[1])])
    assert usage(conn, a.id) == 2
    assert usage(conn, a.id, utc(2026, 9, 1)) == 3
    assert usage(conn, a.id, utc(2026, 10, 1)) == len(series) - 2
    assert usage(conn, b.id) == 1
    assert_exact(conn, a, b)
    names = conn.execute(
        "SELECT organization_name, active_series, private_series FROM active_series.usage"
        " ORDER BY organization_id"
    ).fetchall()
    assert names == [("a", 2, 2), ("b", 1, 1)]

    # soft delete and restore by the application's own column, told to the relay
    conn.execute("UPDATE app.projects SET removed_at = now() WHERE id = %s", (a.project,))
    assert usage(conn, a.id) == 0
    assert app.one(conn, "SELECT count(*) FROM active_series._outbox WHERE reason = 'project'") == 1
    conn.execute("UPDATE app.projects SET removed_at = NULL, is_public = true")
    assert conn.execute(
        "SELECT public_series FROM active_series.usage WHERE organization_id = %s", (a.id,)
    ).fetchone() == (2,)

    # a hard delete takes the benchmark's series out of every period
    conn.execute("DELETE FROM app.benchmarks WHERE bench_id = %s", (a.benchmarks[1],))
    assert usage(conn, a.id, utc(2026, 9, 1)) == 2
    assert usage(conn, a.id, utc(2026, 10, 1)) == 2
    assert usage(conn, a.id) == 2
    assert_exact(conn, a, b)
    conn.execute("DELETE FROM app.testbeds WHERE tb_id = %s", (a.testbeds[1],))
    assert_exact(conn, a, b)
    # the relay's rows of an organization go with it, as every other row of the extension's
    conn.execute(
        "INSERT INTO active_series._relay_subscription (organization_id, stripe_customer_id)"
        " VALUES (%s, 'cus_b')",
        (b.id,),
    )
    conn.execute(
        "INSERT INTO active_series._relay_confirmation"
        " (organization_id, period_start, period_end, stripe_customer_id)"
        " SELECT organization_id, period_start, period_end, 'cus_b' FROM active_series._period"
        " WHERE organization_id = %s",
        (b.id,),
    )
    conn.execute("DELETE FROM app.orgs WHERE org_id = %s", (b.id,))
    keyed = conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_attribute AS a"
        " JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = 'active_series'::regnamespace AND c.relkind = 'r'"
        " AND a.attname = 'organization_id' AND NOT a.attisdropped ORDER BY 1"
    ).fetchall()
    assert len(keyed) > 10
    left = {
        table: conn.execute(
            sql.SQL("SELECT count(*) FROM active_series.{} WHERE organization_id = %s").format(
                sql.Identifier(table)
            ),
            (b.id,),
        ).fetchall()[0][0]
        for (table,) in keyed
    }
    # (the outbox's rows of the deletion itself: the relay drops them, _relay_work)
    assert {table: n for table, n in left.items() if n and table != "_outbox"} == {}
    assert_exact(conn, a)


def test_the_rules_hold_on_the_applications_tables(app_conn: Conn) -> None:
    conn = app_conn
    app.attach_app(conn)
    a = app.make_org(conn, "a")
    run = app.ingest(conn, a, a.testbeds[0], [(a.benchmarks[0], a.measures[0])])
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="proj, tb"):
        conn.execute("UPDATE app.runs SET tb = %s WHERE run_id = %s", (a.testbeds[1], run))
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="run_benchmark"):
        conn.execute("UPDATE app.results SET measure = %s", (a.measures[1],))
    conn.execute("UPDATE app.runs SET git_hash = 'def'")  # other columns are the application's
    # created is the server's time unless a privileged session allows another
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="transaction time"):
        conn.execute(
            "INSERT INTO app.runs (proj, tb, created_at) VALUES (%s, %s, '2020-01-01+00')",
            (a.project, a.testbeds[0]),
        )
    stamped = app.one(
        conn,
        "INSERT INTO app.runs (proj, tb, created_at) VALUES (%s, %s, NULL) RETURNING created_at"
        " = now()",
        a.project,
        a.testbeds[0],
    )
    assert stamped is True
    # a benchmark of another project is refused with its run_benchmark, naming both projects
    b = app.make_org(conn, "b")
    with pytest.raises(
        psycopg.errors.ForeignKeyViolation,
        match=rf"report_benchmark \d+ names benchmark {b.benchmarks[0]} of project {b.project},"
        rf" but its report \d+ is in project {a.project}",
    ) as err:
        app.ingest(conn, a, a.testbeds[0], [(b.benchmarks[0], a.measures[0])])
    assert err.value.diag.message_hint is not None
    assert len((err.value.diag.context or "").splitlines()) <= 2
    assert_exact(conn, a)


def test_a_run_benchmark_of_another_projects_benchmark_is_refused_when_inserted(
    app_conn: Conn,
) -> None:
    """On the application's tables, a report_benchmark row whose benchmark is another
    project's fails at its INSERT (one statement of several rows, too), before any metric."""
    conn = app_conn
    app.attach_app(conn)
    a = app.make_org(conn, "a")
    b = app.make_org(conn, "b")
    run = app.one(
        conn,
        "INSERT INTO app.runs (proj, tb) VALUES (%s, %s) RETURNING run_id",
        a.project,
        a.testbeds[0],
    )
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="names benchmark"):
        conn.execute(
            "INSERT INTO app.run_benchmarks (run, bench) VALUES (%s, %s), (%s, %s)",
            (run, a.benchmarks[0], run, b.benchmarks[1]),
        )
    assert app.one(conn, "SELECT count(*) FROM app.run_benchmarks") == 0
    # the project's own benchmarks are accepted
    conn.execute(
        "INSERT INTO app.run_benchmarks (run, bench) VALUES (%s, %s), (%s, %s)",
        (run, a.benchmarks[0], run, a.benchmarks[1]),
    )
    assert app.one(conn, "SELECT count(*) FROM app.run_benchmarks") == 2


def installed(conn: Conn) -> dict[str, int]:
    """What attach leaves in the database: 0 everywhere when nothing is attached."""
    row = conn.execute(
        """
        SELECT
            (SELECT count(*) FROM active_series._attachment),
            (SELECT count(*) FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
             WHERE c.relnamespace = 'app'::regnamespace AND NOT t.tgisinternal),
            (SELECT count(*) FROM pg_class AS c
             WHERE c.relnamespace = 'active_series'::regnamespace AND c.relkind = 'v'
                AND c.relname IN ('organization', 'project', 'testbed', 'benchmark', 'variant',
                    'measure', 'report', 'report_benchmark', 'metric')),
            (SELECT count(*) FROM pg_proc AS p
             WHERE p.pronamespace = 'active_series'::regnamespace
                AND p.proname LIKE '\\_attached\\_%%'),
            (SELECT count(*) FROM pg_class AS c
             WHERE c.relnamespace = 'app'::regnamespace AND c.relkind = 'i'
                AND c.relname LIKE '%%active\\_series%%')
        """
    ).fetchone()
    assert row is not None
    return dict(zip(["rows", "triggers", "views", "functions", "indexes"], row, strict=True))


NOTHING = {"rows": 0, "triggers": 0, "views": 0, "functions": 0, "indexes": 0}


def test_detach_stops_tracking_and_attach_with_backfill_brings_it_back(app_conn: Conn) -> None:
    conn = app_conn
    app.attach_app(conn)
    made = installed(conn)
    assert made["triggers"] > 0 and made["views"] == 9 and made["indexes"] > 0
    a = app.make_org(conn, "a")
    series = [(bench, m) for bench in a.benchmarks for m in a.measures]
    app.ingest(conn, a, a.testbeds[0], series[:2])
    rows = app.one(conn, "SELECT count(*) FROM app.results")
    detached = conn.execute("SELECT role FROM active_series.detach() ORDER BY 1").fetchall()
    assert len(detached) == 8
    assert installed(conn) == NOTHING
    app.ingest(conn, a, a.testbeds[1], series)  # not tracked, and not refused
    assert app.one(conn, "SELECT count(*) FROM app.results") > rows
    assert conn.execute("SELECT count(*) FROM active_series.detach()").fetchone() == (0,)

    app.attach_app(conn)
    assert installed(conn) == made
    conn.execute("CALL active_series.backfill()")
    assert usage(conn, a.id) == 2 + len(series)  # two on the first testbed, all on the second
    assert_exact(conn, a)


# --- bad attach input -----------------------------------------------------------------------


def columns_with(role: str, **cols: str | None) -> dict[str, Any]:
    return {**app.COLUMNS, role: {**app.COLUMNS[role], **cols}}


BAD: list[tuple[str, str | None, dict[str, Any], type[Exception], str]] = [
    # (case, DDL to run first, attach arguments over app's, error, message)
    (
        "missing column",
        None,
        {"columns": columns_with("report", created="made_at")},
        psycopg.errors.UndefinedColumn,
        r"app\.runs \(role report\) has no column made_at",
    ),
    (
        "wrong type",
        "ALTER TABLE app.runs ALTER created_at TYPE timestamp",
        {},
        psycopg.errors.DatatypeMismatch,
        "created_at.*timestamp without time zone, not timestamp",
    ),
    (
        "uuid key",
        "ALTER TABLE app.testbeds ADD COLUMN uid uuid UNIQUE",
        {"columns": columns_with("testbed", id="uid")},
        psycopg.errors.FeatureNotSupported,
        r"app\.testbeds\.uid .* is a uuid",
    ),
    (
        "text key",
        "ALTER TABLE app.testbeds ADD COLUMN code text UNIQUE",
        {"columns": columns_with("testbed", id="code")},
        psycopg.errors.DatatypeMismatch,
        "integer or bigint",
    ),
    (
        "key not unique",
        "ALTER TABLE app.testbeds ADD COLUMN alt bigint",
        {"columns": columns_with("testbed", id="alt")},
        psycopg.errors.InvalidTableDefinition,
        r"app\.testbeds\.alt \(role testbed\) has no unique",
    ),
    (
        "missing foreign key",
        "ALTER TABLE app.results DROP CONSTRAINT results_measure_fkey",
        {},
        psycopg.errors.InvalidForeignKey,
        r"app\.results\.measure .* has no foreign key to",
    ),
    (
        "a table in two roles",
        None,
        {"measure": "app.benchmarks"},
        psycopg.errors.DuplicateObject,
        "app.benchmarks.*benchmark and measure",
    ),
    (
        "not a table",
        "CREATE VIEW app.runs_v AS SELECT * FROM app.runs",
        {"report": "app.runs_v"},
        psycopg.errors.WrongObjectType,
        "app.runs_v .* is not a table",
    ),
    (
        "no such table",
        None,
        {"report": "app.no_such_table"},
        psycopg.errors.UndefinedTable,
        "no_such_table",
    ),
    (
        "a role left out",
        None,
        {"testbed": None},
        psycopg.errors.NullValueNotAllowed,
        "the table of role testbed",
    ),
    (
        "an unknown column",
        None,
        {"columns": columns_with("report", started="created_at")},
        psycopg.errors.InvalidParameterValue,
        "reads no column report.started",
    ),
    (
        "a required column left out",
        None,
        {"columns": columns_with("report", created=None)},
        psycopg.errors.NullValueNotAllowed,
        "report's created cannot be left out",
    ),
    (
        "columns not an object",
        None,
        {"columns": ["created_at"]},
        psycopg.errors.InvalidParameterValue,
        "must be a JSON object",
    ),
    (
        "a variant table without variant_id",
        "CREATE TABLE app.variants (id bigint PRIMARY KEY, bench integer REFERENCES app.benchmarks,"
        " parameters jsonb, UNIQUE (bench, parameters))",
        {
            "variant": "app.variants",
            "columns": {**app.COLUMNS, "variant": {"benchmark_id": "bench"}},
        },
        psycopg.errors.InvalidParameterValue,
        "the report_benchmark table has no variant_id",
    ),
    (
        "a name the attachment would hide",
        "CREATE TABLE active_series.testbed (id bigint)",
        {},
        psycopg.errors.DuplicateTable,
        "active_series.testbed already exist",
    ),
]


@pytest.mark.parametrize(
    ("ddl", "args", "error", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_bad_attach_input_is_refused_and_leaves_nothing(
    app_conn: Conn, ddl: str | None, args: dict[str, Any], error: type[Exception], message: str
) -> None:
    conn = app_conn
    if ddl:
        conn.execute(ddl)
    given = {**app.TABLES, "variant": None, "columns": app.COLUMNS, **args}
    with pytest.raises(error, match=message):
        conn.execute(app.ATTACH, {**given, "columns": Jsonb(given["columns"])})
    assert installed(conn) == NOTHING
    # and the right input attaches after it
    if ddl is None:
        app.attach_app(conn)
        assert installed(conn)["rows"] == 8


def test_a_second_attach_is_refused_until_detach(app_conn: Conn) -> None:
    conn = app_conn
    app.attach_app(conn)
    made = installed(conn)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="already attached"):
        app.attach_app(conn)
    assert installed(conn) == made


def test_concurrent_ingest_into_the_applications_tables_counts_exactly(app_dsn: str) -> None:
    """Eight connections ingest at once, into shared testbeds and series, in random order,
    in transactions of several runs: no deadlock, no lost series, counts exact."""
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        app.attach_app(conn)
        orgs = [app.make_org(conn, f"o{i}", testbeds=3, benchmarks=4, measures=2) for i in range(2)]
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(app_dsn, autocommit=True) as c:
                for _ in range(12):
                    with c.transaction():
                        for _ in range(rng.randint(1, 3)):
                            org = rng.choice(orgs)
                            pairs = [(b, m) for b in org.benchmarks for m in org.measures]
                            app.ingest(
                                c,
                                org,
                                rng.choice(org.testbeds),
                                rng.sample(pairs, rng.randint(1, len(pairs))),
                            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        assert_exact(conn, *orgs)


def test_a_managed_servers_owner_installs_and_attaches_without_superuser(
    new_empty_db: Callable[[], str], superuser_dsn: str
) -> None:
    """A database owner with CREATEROLE but not superuser (a managed server's admin):
    active-series install --dsn, its own tables, attach from the command line, ingest."""
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    dsn = new_empty_db()
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(superuser_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(owner)))
        admin.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(dbname), sql.Identifier(owner)
            )
        )
    as_owner = make_conninfo(dsn, user=owner)
    try:
        run_ok(
            [*CLI, "install", "--dsn", as_owner, "--without-plpython"],
        )
        with psycopg.connect(as_owner, autocommit=True) as conn:
            conn.execute(app.DDL)
        argv = [*CLI, "attach", "--dsn", as_owner]
        argv += [f"--table={role}={table}" for role, table in app.TABLES.items()]
        argv += [
            f"--column={role}.{column}={name}"
            for role, columns in app.COLUMNS.items()
            for column, name in columns.items()
        ]
        attached = run_ok(argv)
        assert "attached report: app.runs" in attached.stdout
        with psycopg.connect(as_owner, autocommit=True) as conn:
            assert (
                app.one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
            )
            a = app.make_org(conn, "a")
            app.ingest(conn, a, a.testbeds[0], [(a.benchmarks[0], a.measures[0])])
            app.ingest(conn, a, a.testbeds[1], [(b, m) for b in a.benchmarks for m in a.measures])
            assert_exact(conn, a)
        detached = run_ok([*CLI, "detach", "--dsn", as_owner])
        assert "detached metric: app.results" in detached.stdout
    finally:
        with psycopg.connect(superuser_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(owner)))


def test_an_application_role_with_no_right_in_the_extension_ingests(
    app_conn: Conn, app_dsn: str
) -> None:
    """The application's own role, granted its tables and nothing of active_series: it
    ingests, soft- and hard-deletes, and is refused a key update or an explicit created."""
    conn = app_conn
    app.attach_app(conn)
    a = app.make_org(conn, "a")
    role = f"app_writer_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        for grant in (
            "GRANT USAGE ON SCHEMA app TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO {}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA app TO {}",
        ):
            conn.execute(sql.SQL(grant).format(sql.Identifier(role)))
        with psycopg.connect(make_conninfo(app_dsn, user=role), autocommit=True) as c:
            assert app.one(c, "SELECT has_schema_privilege('active_series', 'USAGE')") is False
            pairs = [(b, m) for b in a.benchmarks for m in a.measures]
            run = app.ingest(c, a, a.testbeds[0], pairs)
            c.execute("UPDATE app.projects SET removed_at = now()")
            c.execute("UPDATE app.projects SET removed_at = NULL")
            c.execute("DELETE FROM app.benchmarks WHERE bench_id = %s", (a.benchmarks[0],))
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                c.execute("UPDATE app.runs SET tb = %s WHERE run_id = %s", (a.testbeds[1], run))
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="transaction time"):
                c.execute(
                    "INSERT INTO app.runs (proj, tb, created_at) VALUES (%s, %s, '2020-01-01Z')",
                    (a.project, a.testbeds[0]),
                )
        assert usage(conn, a.id) == len(pairs) - len(a.measures)
        assert_exact(conn, a)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
