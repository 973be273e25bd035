"""Bad input gets a clear error and leaves nothing half-written."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from oracle import (
    BILLING_TABLES,
    assert_matches_oracle,
    ingest,
    make_entities,
    make_org,
    make_project,
    make_report,
    make_report_benchmark,
    make_variant,
    one,
    snapshot,
    utc,
)
from psycopg import sql

INGEST_TABLES = (
    "organization",
    "project",
    "testbed",
    "benchmark",
    "variant",
    "measure",
    "report",
    "report_benchmark",
    "metric",
    "billing_account",
)


def everything(conn: psycopg.Connection) -> dict:
    """Every row, with its row version, of the billing tables and of the ingest tables."""
    return snapshot(conn, BILLING_TABLES + INGEST_TABLES)


@pytest.fixture
def org(conn):
    org = make_org(conn)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    return org


@pytest.fixture
def rb(conn, org):
    """A report_benchmark of a committed report with no metrics yet."""
    report = make_report(conn, org.project_id, org.testbeds[1])
    return make_report_benchmark(conn, report, org.benchmarks[1])


# --- metrics --------------------------------------------------------------------------------


def test_a_metric_of_a_missing_report_benchmark_is_rejected_and_nothing_is_written(conn, org, rb):
    before = everything(conn)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " VALUES (%s, %s, 1.0), (%s, %s, 1.0)",
            (rb, org.measures[1], rb + 1_000_000, org.measures[2]),
        )
    assert everything(conn) == before


def test_a_metric_of_a_missing_measure_is_rejected_and_nothing_is_written(conn, org, rb):
    before = everything(conn)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " VALUES (%s, %s, 1.0), (%s, %s, 1.0)",
            (rb, org.measures[1], rb, org.measures[-1] + 1_000_000),
        )
    assert everything(conn) == before


def refused_at_commit(conn, org, testbed, series, pattern: str) -> str:
    """Ingest one report of ``series`` in one transaction; its commit must be refused."""
    with (
        pytest.raises(psycopg.errors.ForeignKeyViolation, match=pattern) as refusal,
        conn.transaction(),
    ):
        ingest(conn, org, testbed, series)
    return str(refusal.value)


def test_a_measure_or_benchmark_of_another_organization_is_refused_at_commit(conn, org):
    """A series never joins another tenant's catalog: the commit fails, naming the row."""
    other = make_org(conn, "other")
    before = everything(conn)
    measure = r"measure \d+ belongs to project"
    benchmark = r"report_benchmark \d+ names benchmark \d+ of project"
    # a new benchmark of the testbed, with the other organization's measure
    refused_at_commit(conn, org, org.testbeds[0], [(org.benchmarks[1], other.measures[0])], measure)
    # a known benchmark with its known measure and the other organization's one
    known = (org.benchmarks[0], org.measures[0])
    refused_at_commit(
        conn, org, org.testbeds[0], [known, (org.benchmarks[0], other.measures[1])], measure
    )
    # the other organization's benchmark, with this one's measure: refused with its
    # report_benchmark, before any metric
    refused_at_commit(
        conn, org, org.testbeds[0], [(other.benchmarks[0], org.measures[0])], benchmark
    )
    assert everything(conn) == before
    # the organization's own series still record, the known one in the common case
    ingest(conn, org, org.testbeds[0], [known])
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[1], org.measures[1])])
    assert_matches_oracle(conn, org.id)


def test_a_variant_of_another_benchmark_is_refused_and_nothing_is_written(conn, org):
    variant = make_variant(conn, org.benchmarks[1], '{"size_mb": 16}')
    report = make_report(conn, org.project_id, org.testbeds[0])
    before = everything(conn)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as err:
        make_report_benchmark(conn, report, org.benchmarks[0], variant_id=variant)
    assert "report_benchmark_variant_fkey" in str(err.value)
    assert everything(conn) == before


@pytest.mark.parametrize("parameters", ["[16]", "16", '"size"', "null"])
def test_variant_parameters_that_are_not_an_object_are_refused(conn, org, parameters):
    before = everything(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        make_variant(conn, org.benchmarks[0], parameters)
    assert "variant_parameters_object" in str(err.value)
    assert everything(conn) == before


def test_a_measure_of_another_project_of_the_organization_is_refused_too(conn, org):
    second = make_project(conn, org.id, "second", "private")
    [measure] = make_entities(conn, "measure", second, 1)
    before = everything(conn)
    message = refused_at_commit(
        conn, org, org.testbeds[1], [(org.benchmarks[2], measure)], "belongs to project"
    )
    assert f"measure {measure} belongs to project {second}, not to project {org.project_id}" in (
        message
    )
    assert everything(conn) == before


@pytest.mark.parametrize("value", [None, "NaN", "Infinity", "-Infinity"])
def test_a_null_or_non_finite_metric_value_is_rejected_with_a_message_naming_value(
    conn, org, rb, value
):
    before = everything(conn)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " VALUES (%s, %s, %s::double precision)",
            (rb, org.measures[1], value),
        )
    assert "value" in str(err.value)
    assert everything(conn) == before


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_copy_of_a_non_finite_value_is_rejected_and_nothing_is_written(conn, org, rb, value):
    before = everything(conn)
    with (
        pytest.raises(psycopg.Error),
        conn.cursor().copy(
            "COPY active_series.metric (report_benchmark_id, measure_id, value) FROM STDIN"
        ) as copy,
    ):
        copy.write_row((rb, org.measures[1], 1.0))
        copy.write_row((rb, org.measures[2], value))
    assert everything(conn) == before


def test_an_ordinary_finite_value_is_accepted(conn, org, rb):
    # The control for the rejections above: the same statement with a finite value works.
    conn.execute(
        "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
        " VALUES (%s, %s, %s::double precision)",
        (rb, org.measures[1], "-1e300"),
    )
    assert_matches_oracle(conn, org.id)


# --- report.created -------------------------------------------------------------------------


def _report_count(conn: psycopg.Connection) -> int:
    return one(conn, "SELECT count(*) FROM active_series.report")


@pytest.mark.parametrize(
    "offset", [dt.timedelta(days=-40), dt.timedelta(seconds=-1), dt.timedelta(days=3)]
)
def test_an_explicit_created_is_rejected_without_the_setting(conn, org, offset):
    before = everything(conn)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
            " created) VALUES (%s, %s, now(), now(), now() + %s)",
            (org.project_id, org.testbeds[0], offset),
        )
    assert "created" in str(err.value)
    assert everything(conn) == before


def test_created_is_the_transaction_time_whatever_the_client_sends_as_times(conn, org):
    with conn.transaction():
        report = one(
            conn,
            "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
            " VALUES (%s, %s, now() - interval '1 year', now() - interval '1 year')"
            " RETURNING id",
            (org.project_id, org.testbeds[0]),
        )
        now = one(conn, "SELECT now()")
    assert one(conn, "SELECT created FROM active_series.report WHERE id = %s", (report,)) == now


def test_the_setting_lets_a_superuser_backdate_and_future_date_created(conn, org):
    conn.execute("SET active_series.allow_explicit_created = on")
    for created in (utc(2023, 6, 15), utc(2099, 1, 1)):
        report = make_report(conn, org.project_id, org.testbeds[0], created)
        assert (
            one(conn, "SELECT created FROM active_series.report WHERE id = %s", (report,))
            == created
        )
        rb = make_report_benchmark(conn, report, org.benchmarks[0])
        conn.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " VALUES (%s, %s, 1)",
            (rb, org.measures[0]),
        )
    assert one(conn, "SELECT active_series.period_usage(%s, %s)", (org.id, utc(2023, 6))) == 1
    assert_matches_oracle(conn, org.id)


@pytest.fixture
def plain_role(conn):
    """A login-less role with the privileges an ingest client needs, and nothing more."""
    name = f"ingest_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE ROLE {} NOSUPERUSER").format(role))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA active_series TO {}").format(role))
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON active_series.report TO {}").format(role))
    try:
        yield name
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


def test_the_setting_does_not_let_an_unprivileged_role_backdate_created(conn, org, plain_role):
    insert = (
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time{})"
        " VALUES (%s, %s, now(), now(){})"
    )
    role = sql.SQL("SET ROLE {}").format(sql.Identifier(plain_role))
    # The control: the role may ingest a report when it leaves created to the server.
    conn.execute(role)
    conn.execute(insert.format("", ""), (org.project_id, org.testbeds[0]))
    conn.execute("RESET ROLE")
    before = everything(conn)

    conn.execute(role)
    conn.execute("SET active_series.allow_explicit_created = on")
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            insert.format(", created", ", %s"), (org.project_id, org.testbeds[0], utc(2023, 6, 15))
        )
    conn.execute("RESET ROLE")
    assert "created" in str(err.value)
    assert everything(conn) == before


# --- key columns ----------------------------------------------------------------------------


@pytest.fixture
def keyed(conn, org):
    """Ids of one row of each table with key columns, and a second valid target for each key."""
    report = one(
        conn, "SELECT max(id) FROM active_series.report WHERE project_id = %s", (org.project_id,)
    )
    rb = one(
        conn, "SELECT max(id) FROM active_series.report_benchmark WHERE report_id = %s", (report,)
    )
    metric = one(
        conn, "SELECT max(id) FROM active_series.metric WHERE report_benchmark_id = %s", (rb,)
    )
    other_org = make_org(conn, "other")
    other_report = make_report(conn, org.project_id, org.testbeds[1])
    other_rb = make_report_benchmark(conn, other_report, org.benchmarks[1])
    variant = make_variant(conn, org.benchmarks[0], '{"size_mb": 16}')
    other_variant = make_variant(conn, org.benchmarks[0], '{"size_mb": 64}')
    return {
        "metric": (metric, {"report_benchmark_id": other_rb, "measure_id": org.measures[1]}),
        "report_benchmark": (
            rb,
            {
                "report_id": other_report,
                "benchmark_id": org.benchmarks[1],
                "variant_id": other_variant,
            },
        ),
        "variant": (
            variant,
            {"benchmark_id": org.benchmarks[1], "parameters": '{"size_mb": 32}'},
        ),
        "report": (
            report,
            {
                "project_id": other_org.project_id,
                "testbed_id": org.testbeds[1],
                "created": utc(2020, 1, 1),
            },
        ),
        "testbed": (org.testbeds[0], {"project_id": other_org.project_id}),
        "benchmark": (org.benchmarks[0], {"project_id": other_org.project_id}),
        "measure": (org.measures[0], {"project_id": other_org.project_id}),
        "project": (org.project_id, {"organization_id": other_org.id}),
    }


KEY_COLUMNS = [
    ("metric", "report_benchmark_id"),
    ("metric", "measure_id"),
    ("report_benchmark", "report_id"),
    ("report_benchmark", "benchmark_id"),
    ("report_benchmark", "variant_id"),
    ("variant", "benchmark_id"),
    ("variant", "parameters"),
    ("report", "project_id"),
    ("report", "testbed_id"),
    ("report", "created"),
    ("testbed", "project_id"),
    ("benchmark", "project_id"),
    ("measure", "project_id"),
    ("project", "organization_id"),
]


@pytest.mark.parametrize(("table", "column"), KEY_COLUMNS)
def test_updating_a_key_column_is_rejected_with_a_message_naming_the_column(
    conn, org, keyed, table, column
):
    row_id, targets = keyed[table]
    before = everything(conn)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            sql.SQL("UPDATE {} SET {} = %s WHERE id = %s").format(
                sql.Identifier("active_series", table), sql.Identifier(column)
            ),
            (targets[column], row_id),
        )
    assert column in str(err.value)
    assert everything(conn) == before
    assert_matches_oracle(conn, org.id)


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("metric", "value", 2.5),
        ("report", "end_time", utc(2024, 1, 1)),
        ("report_benchmark", "iteration", 7),
        ("testbed", "name", "renamed"),
        ("project", "visibility", "public"),
    ],
)
def test_updating_a_non_key_column_is_allowed(conn, org, keyed, table, column, value):
    row_id = keyed[table][0]
    conn.execute(
        sql.SQL("UPDATE {} SET {} = %s WHERE id = %s").format(
            sql.Identifier("active_series", table), sql.Identifier(column)
        ),
        (value, row_id),
    )
    got = one(
        conn,
        sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
            sql.Identifier(column), sql.Identifier("active_series", table)
        ),
        (row_id,),
    )
    assert got == value
    assert_matches_oracle(conn, org.id)


# --- functions ------------------------------------------------------------------------------


def test_count_active_with_a_reversed_window_is_an_error(conn, org):
    with pytest.raises(psycopg.Error):
        conn.execute(
            "SELECT active_series.count_active(%s, now(), now() - interval '1 day')", (org.id,)
        )


def test_count_active_with_an_empty_window_counts_nothing(conn, org):
    # The control for the reversed window: [t, t) is a valid, empty window.
    assert one(conn, "SELECT active_series.count_active(%s, now(), now())", (org.id,)) == 0


@pytest.mark.parametrize("visibility", ["secret", "PUBLIC", ""])
def test_count_active_with_an_unknown_visibility_is_an_error_naming_it(conn, org, visibility):
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            "SELECT active_series.count_active(%s, now() - interval '1 day', now() + interval"
            " '1 day', %s)",
            (org.id, visibility),
        )
    assert "visibility" in str(err.value)


@pytest.mark.parametrize(("visibility", "expected"), [(None, 1), ("private", 1), ("public", 0)])
def test_count_active_by_visibility(conn, org, visibility, expected):
    assert (
        one(
            conn,
            "SELECT active_series.count_active(%s, now() - interval '1 day', now() + interval"
            " '1 day', %s)",
            (org.id, visibility),
        )
        == expected
    )


UNKNOWN_ORG_CALLS = {
    "count_active": "SELECT active_series.count_active(%(org)s, now(), now() + interval '1 day')",
    "count_active visibility": (
        "SELECT active_series.count_active(%(org)s, now(), now() + interval '1 day', 'public')"
    ),
    "period_usage": "SELECT active_series.period_usage(%(org)s)",
    "period_usage start": "SELECT active_series.period_usage(%(org)s, '2024-01-01T00:00Z')",
    "period_series": "SELECT * FROM active_series.period_series(%(org)s)",
    "periods": "SELECT * FROM active_series.periods(%(org)s)",
    "current_period": "SELECT * FROM active_series.current_period(%(org)s)",
    "set_billing_period": (
        "SELECT active_series.set_billing_period(%(org)s, '2024-01-01T00:00Z', '2024-02-01T00:00Z')"
    ),
    "set_stripe_customer": "SELECT active_series.set_stripe_customer(%(org)s, 'cus_x')",
    "verify": "SELECT * FROM active_series.verify(%(org)s)",
    "relay_resume": "SELECT active_series.relay_resume(%(org)s)",
}


@pytest.mark.parametrize("call", list(UNKNOWN_ORG_CALLS))
def test_a_function_called_with_an_unknown_organization_raises_no_data_found(conn, org, call):
    missing = org.id + 987_654
    before = everything(conn)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(UNKNOWN_ORG_CALLS[call], {"org": missing})
    assert err.value.sqlstate == "P0002"
    assert str(missing) in str(err.value)
    assert everything(conn) == before


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-02-01T00:00Z", "2024-02-01T00:00Z"),
        ("2024-02-01T00:00Z", "2024-01-01T00:00Z"),
        (None, "2024-02-01T00:00Z"),
        ("2024-01-01T00:00Z", None),
        (None, None),
    ],
)
def test_set_billing_period_with_an_empty_or_missing_period_is_an_error(conn, org, start, end):
    period = conn.execute("SELECT * FROM active_series.current_period(%s)", (org.id,)).fetchall()
    before = everything(conn)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            "SELECT active_series.set_billing_period(%s, %s::timestamptz, %s::timestamptz)",
            (org.id, start, end),
        )
    assert "period" in str(err.value)
    assert everything(conn) == before
    after = conn.execute("SELECT * FROM active_series.current_period(%s)", (org.id,)).fetchall()
    assert after == period


def test_set_billing_period_with_a_valid_period_is_accepted(conn):
    # The control for the rejections above: an organization without recorded periods rolls
    # the new monthly period forward to now.
    org = make_org(conn, "fresh")
    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (org.id, utc(2024, 1, 15), utc(2024, 2, 15)),
    )
    start, end, now = conn.execute(
        "SELECT period_start, period_end, now() FROM active_series.current_period(%s)", (org.id,)
    ).fetchone()
    assert start <= now < end
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    assert (start.day, start.hour, start.minute) == (15, 0, 0)
    assert (end.day, end.hour, end.minute) == (15, 0, 0)
    assert (end.year * 12 + end.month) - (start.year * 12 + start.month) == 1
