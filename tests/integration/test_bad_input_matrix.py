"""The bad-input matrix of docs/bad-input.md: one test per row (rows already covered by
tests/integration/test_bad_input.py and test_roles.py are referenced there, not repeated).

Each row: a clear error (SQLSTATE, or exit code and one line), nothing half-written, and
for the Stripe rows the worker keeps running and ends exact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from active_series import cli
from active_series.errors import ExitCode
from oracle import (
    BILLING_TABLES,
    allow_explicit_created,
    assert_matches_oracle,
    ingest,
    make_org,
    one,
    snapshot,
    utc,
)
from relay_harness import (
    Emulator,
    WorkerProcess,
    assert_increasing_timestamps,
    bill,
    billing_periods,
    mismatches,
    quiescent,
    wait_until,
    workers,
)

WATCHED = BILLING_TABLES + (
    "billing_account",
    "_ledger",
    "_relay_state",
    "organization",
    "project",
    "report",
    "metric",
)


@pytest.fixture
def org(conn):
    org = make_org(conn, "matrix")
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    return org


def fails(conn: psycopg.Connection[Any], sqlstate: str, query: str, params: Any = None) -> str:
    """Run a statement that must fail with ``sqlstate`` and write nothing; returns the message."""
    before = snapshot(conn, WATCHED)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(query, params)
    assert err.value.sqlstate == sqlstate, (err.value.sqlstate, str(err.value))
    assert snapshot(conn, WATCHED) == before
    return str(err.value)


# --- S1 NULL organization -------------------------------------------------------------------

NULL_ORG_CALLS = {
    "count_active": "SELECT active_series.count_active(NULL, now(), now())",
    "period_usage": "SELECT active_series.period_usage(NULL)",
    "period_series": "SELECT * FROM active_series.period_series(NULL)",
    "periods": "SELECT * FROM active_series.periods(NULL)",
    "current_period": "SELECT * FROM active_series.current_period(NULL)",
    "set_billing_period": (
        "SELECT active_series.set_billing_period(NULL, '2024-01-01Z', '2024-02-01Z')"
    ),
    "set_stripe_customer": "SELECT active_series.set_stripe_customer(NULL, 'cus_x')",
    "relay_resume": "SELECT active_series.relay_resume(NULL)",
}


@pytest.mark.parametrize("call", list(NULL_ORG_CALLS))
def test_s1_a_null_organization_is_an_error_naming_it(conn, org, call):
    assert "organization id must not be NULL" in fails(conn, "22004", NULL_ORG_CALLS[call])


def test_s1_verify_of_null_checks_every_organization(conn, org):
    make_org(conn, "second")
    assert conn.execute("SELECT * FROM active_series.verify(NULL)").fetchall() == []


# --- S2 other NULL arguments ----------------------------------------------------------------

NULL_ARGUMENT_CALLS = {
    "count_active from": ("22004", "SELECT active_series.count_active(%(org)s, NULL, now())"),
    "count_active to": ("22004", "SELECT active_series.count_active(%(org)s, now(), NULL)"),
    "set_stripe_customer plan": (
        "22023",
        "SELECT active_series.set_stripe_customer(%(org)s, 'cus_x', NULL)",
    ),
    "backfill batch": ("22023", "CALL active_series.backfill(NULL)"),
}


@pytest.mark.parametrize("call", list(NULL_ARGUMENT_CALLS))
def test_s2_a_null_argument_is_an_error(conn, org, call):
    sqlstate, query = NULL_ARGUMENT_CALLS[call]
    fails(conn, sqlstate, query, {"org": org.id})


def test_s2_a_null_period_start_means_the_current_period(conn, org):
    now = one(conn, "SELECT period_start FROM active_series.current_period(%s)", (org.id,))
    assert one(conn, "SELECT active_series.period_usage(%s, NULL)", (org.id,)) == one(
        conn, "SELECT active_series.period_usage(%s, %s)", (org.id, now)
    )
    assert len(conn.execute("SELECT * FROM active_series.period_series(%s)", (org.id,)).fetchall())


# --- S3 wrong types -------------------------------------------------------------------------

WRONG_TYPE_CALLS = {
    "org as text": ("22P02", "SELECT active_series.period_usage('acme')"),
    "org as a fraction": ("22P02", "SELECT active_series.period_usage('1.5')"),
    "org beyond bigint": ("42883", "SELECT active_series.period_usage(99999999999999999999)"),
    "time as text": ("22007", "SELECT active_series.period_usage(1, 'last tuesday')"),
    "time out of range": ("22008", "SELECT active_series.period_usage(1, '2024-13-01')"),
    "window as a number": (
        "42883",
        "SELECT active_series.count_active(1, 20240101, 20240201)",
    ),
    "billing period as text": (
        "22007",
        "SELECT active_series.set_billing_period(1, 'soon', 'later')",
    ),
    "batch as text": ("22P02", "CALL active_series.backfill('many')"),
    "batch beyond int": ("42883", "CALL active_series.backfill(99999999999)"),
}


@pytest.mark.parametrize("call", list(WRONG_TYPE_CALLS))
def test_s3_a_wrong_type_is_an_error_before_anything_runs(conn, org, call):
    sqlstate, query = WRONG_TYPE_CALLS[call]
    fails(conn, sqlstate, query)


# --- S4 unknown organization: test_bad_input.py (extended with relay_resume) -----------------


def test_s4_the_usage_view_of_an_unknown_organization_is_empty(conn, org):
    assert (
        conn.execute(
            "SELECT * FROM active_series.usage WHERE organization_id = %s", (org.id + 1000,)
        ).fetchall()
        == []
    )


# --- S6 out of range ------------------------------------------------------------------------

OUT_OF_RANGE_PERIODS = {
    "infinite start": ("-infinity", "2024-02-01Z", "finite"),
    "infinite end": ("2024-01-01Z", "infinity", "finite"),
    "before 1900": ("1899-12-01Z", "1900-01-01Z", "1900-01-01"),
    "before the common era": ("4713-01-01Z BC", "4713-02-01Z BC", "1900-01-01"),
    "after 9000": ("9000-01-01Z", "9000-02-01Z", "9000-01-01"),
    "longer than 3 years": ("2020-01-01Z", "2023-01-02Z", "3 years"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE_PERIODS))
def test_s6_an_out_of_range_billing_period_is_an_error(conn, org, case):
    start, end, words = OUT_OF_RANGE_PERIODS[case]
    message = fails(
        conn,
        "22023",
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (org.id, start, end),
    )
    assert words in message


def test_s6_infinite_windows_and_period_starts_are_valid_reads(conn, org):
    assert (
        one(conn, "SELECT active_series.count_active(%s, '-infinity', 'infinity')", (org.id,)) == 1
    )
    for start in ("infinity", "-infinity", "1900-01-01Z"):
        assert one(conn, "SELECT active_series.period_usage(%s, %s)", (org.id, start)) == 0
        assert (
            conn.execute(
                "SELECT * FROM active_series.period_series(%s, %s)", (org.id, start)
            ).fetchall()
            == []
        )


@pytest.mark.parametrize(
    "created", ["infinity", "-infinity", "1899-12-31 23:59:59Z", "9000-01-01Z", "20240-01-01Z"]
)
def test_s6_an_admin_cannot_load_a_report_created_out_of_range(conn, org, created):
    allow_explicit_created(conn)
    fails(
        conn,
        "22023",
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time, created)"
        " VALUES (%s, %s, now(), now(), %s)",
        (org.project_id, org.testbeds[0], created),
    )


# --- S7 injection strings -------------------------------------------------------------------

INJECTIONS = [
    "cus_1'; DROP TABLE active_series._ledger; --",
    'cus_1"); SELECT pg_sleep(10); --',
    "cus_1\\'; TRUNCATE active_series.metric; --",
    "cus_${jndi:ldap://x}",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_s7_injection_strings_are_refused_as_data(conn, org, text):
    message = fails(
        conn, "22023", "SELECT active_series.set_stripe_customer(%s, %s)", (org.id, text)
    )
    assert "Stripe customer id" in message
    message = fails(
        conn, "22023", "SELECT active_series.set_stripe_customer(%s, 'cus_ok', %s)", (org.id, text)
    )
    assert "plan" in message
    message = fails(
        conn,
        "22023",
        "SELECT active_series.count_active(%s, now(), now(), %s)",
        (org.id, text),
    )
    assert "visibility" in message


@pytest.mark.parametrize("text", INJECTIONS)
def test_s7_injection_strings_in_names_are_stored_verbatim(conn, text):
    org = make_org(conn, text)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
    assert (
        one(
            conn,
            "SELECT organization_name FROM active_series.usage WHERE organization_id = %s",
            (org.id,),
        )
        == text
    )
    assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []
    assert one(conn, "SELECT count(*) FROM active_series._ledger") == 0


# --- S8 and S9 time zones and DST -----------------------------------------------------------

ZONES = ["UTC", "America/New_York", "Asia/Kathmandu", "Pacific/Chatham", "Australia/Lord_Howe"]

#: instants next to DST transitions: New York spring forward and fall back, Lord Howe's
#: half-hour shift, and the turn of a UTC month that is still the previous month locally
DST_INSTANTS = [
    utc(2024, 3, 10, 6, 59),
    utc(2024, 3, 10, 7, 0),
    utc(2024, 11, 3, 5, 59),
    utc(2024, 11, 3, 6, 0),
    utc(2024, 10, 5, 15, 30),
    utc(2024, 4, 1, 0, 0),
    utc(2024, 3, 31, 23, 59),
]


def tracked_state(conn: psycopg.Connection[Any], org_id: int) -> dict[str, list[Any]]:
    queries = {
        "periods": "SELECT * FROM active_series.periods(%s)",
        "series": "SELECT * FROM active_series.period_series(%s, '2024-03-01Z')",
        "current": "SELECT * FROM active_series.current_period(%s)",
        "usage": "SELECT active_series.period_usage(%s, '2024-03-01Z')",
        "window": "SELECT active_series.count_active(%s, '2024-03-10Z', '2024-03-11Z')",
    }
    return {k: conn.execute(q, (org_id,)).fetchall() for k, q in queries.items()}


def load_dst_history(conn: psycopg.Connection[Any], name: str) -> int:
    org = make_org(conn, name, testbeds=1, benchmarks=len(DST_INSTANTS), measures=1)
    allow_explicit_created(conn)
    for i, at in enumerate(DST_INSTANTS):
        ingest(conn, org, org.testbeds[0], [(org.benchmarks[i], org.measures[0])], created=at)
    conn.execute("RESET active_series.allow_explicit_created")
    return org.id


def test_s8_the_session_time_zone_changes_no_period_or_count(conn):
    states = {}
    for zone in ZONES:
        conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
        org_id = load_dst_history(conn, zone)
        conn.execute("SET TimeZone = 'UTC'")
        states[zone] = tracked_state(conn, org_id)
        assert_matches_oracle(conn, org_id)
    reference = states.pop("UTC")
    assert [r[0] for r in reference["periods"]] == [
        utc(2024, 3),
        utc(2024, 4),
        utc(2024, 10),
        utc(2024, 11),
    ]
    for zone, state in states.items():
        assert state["periods"] == reference["periods"], zone
        assert state["usage"] == reference["usage"], zone
        assert state["window"] == reference["window"], zone
        assert len(state["series"]) == len(reference["series"]), zone


def test_s9_a_period_between_local_midnights_across_dst_is_an_exact_duration_in_utc(conn):
    # 2024-03-01 00:00 in New York is 05:00 UTC, 2024-04-01 00:00 (daylight time) is 04:00
    # UTC: not whole months in UTC, so the interval is the exact duration, rolled in UTC
    org = make_org(conn, "dst anchor")
    conn.execute("SET TimeZone = 'America/New_York'")
    conn.execute(
        "SELECT active_series.set_billing_period(%s, '2024-03-01 00:00', '2024-04-01 00:00')",
        (org.id,),
    )
    conn.execute("SET TimeZone = 'UTC'")
    # 00:00 EST to 00:00 EDT is not whole months in UTC (one hour short): the exact duration
    interval = one(
        conn,
        "SELECT period_interval FROM active_series.billing_account WHERE organization_id = %s",
        (org.id,),
    )
    assert interval == dt.timedelta(days=30, hours=23)
    allow_explicit_created(conn)
    ingest(
        conn,
        org,
        org.testbeds[0],
        [(org.benchmarks[0], org.measures[0])],
        created=utc(2024, 4, 1, 4, 30),
    )
    assert conn.execute(
        "SELECT period_start, period_end FROM active_series.periods(%s)", (org.id,)
    ).fetchall() == [
        (utc(2024, 3, 1, 5), utc(2024, 4, 1, 4)),
        # the exact duration rolls on in UTC: 2024-05-01 23:00 in New York, not midnight
        (utc(2024, 4, 1, 4), utc(2024, 5, 2, 3)),
    ]
    assert one(conn, "SELECT count(*) FROM active_series.verify(%s)", (org.id,)) == 0


# --- S10 a million metrics in one statement -------------------------------------------------


def rss_anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/<pid>/status")


@contextlib.contextmanager
def sampled_rss(pid: int) -> Iterator[list[int]]:
    """Samples the backend's private (anonymous) resident memory, in KiB, while it runs."""
    samples = [rss_anon_kib(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(OSError):
                samples.append(rss_anon_kib(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def test_s10_a_million_metrics_in_one_statement_are_counted_in_bounded_memory(conn, pg_cluster):
    pid = conn.info.backend_pid
    if not Path(f"/proc/{pid}/status").exists():
        pytest.skip("the server's processes are not visible here")
    org = make_org(conn, "million", testbeds=1, benchmarks=0, measures=0)
    conn.execute(
        "INSERT INTO active_series.benchmark (project_id, name)"
        " SELECT %s, 'b' || i FROM generate_series(1, 100) AS i",
        (org.project_id,),
    )
    conn.execute(
        "INSERT INTO active_series.measure (project_id, name)"
        " SELECT %s, 'm' || i FROM generate_series(1, 100) AS i",
        (org.project_id,),
    )
    report = one(
        conn,
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)"
        " VALUES (%s, %s, now(), now()) RETURNING id",
        (org.project_id, org.testbeds[0]),
    )
    # 100 benchmarks x 100 iterations x 100 measures: a million metrics, 10,000 series
    conn.execute(
        "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
        " SELECT %s, b.id, i FROM active_series.benchmark AS b, generate_series(0, 99) AS i"
        " WHERE b.project_id = %s",
        (report, org.project_id),
    )
    with sampled_rss(pid) as samples:
        conn.execute(
            "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"
            " SELECT rb.id, m.id, 1.0 FROM active_series.report_benchmark AS rb"
            " CROSS JOIN active_series.measure AS m"
            " WHERE rb.report_id = %s AND m.project_id = %s",
            (report, org.project_id),
        )
    growth_mib = (max(samples) - samples[0]) / 1024
    print(
        f"backend RssAnon: {samples[0] / 1024:.1f} MiB before, +{growth_mib:.1f} MiB at peak,"
        f" {len(samples)} samples"
    )
    assert len(samples) > 5
    # well under the million rows themselves: nothing holds the statement's rows in memory
    assert growth_mib < 128
    assert one(conn, "SELECT count(*) FROM active_series.metric") == 1_000_000
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 10_000
    assert one(conn, "SELECT count(*) FROM active_series._count_drift") == 0


# --- S12 the command line -------------------------------------------------------------------

#: (arguments after the command, expected exit code, words of the one-line error)
CLI_ROWS = {
    "count: organization not a number": (
        ["count", "--organization", "acme"],
        ExitCode.USAGE,
        "must be a whole number",
    ),
    "count: organization beyond bigint": (
        ["count", "--organization", "99999999999999999999"],
        ExitCode.USAGE,
        "out of range",
    ),
    "count: unknown organization": (
        ["count", "--organization", "{missing}"],
        ExitCode.NOT_FOUND,
        "does not exist",
    ),
    "count: period not a time": (
        ["count", "--organization", "{org}", "--period", "next week"],
        ExitCode.USAGE,
        "not an ISO 8601 time",
    ),
    "count: reversed window": (
        [
            "count",
            "--organization",
            "{org}",
            "--from",
            "2024-02-01T00:00Z",
            "--to",
            "2024-01-01T00:00Z",
        ],
        ExitCode.INPUT,
        "is after its end",
    ),
    "count: half a window": (
        ["count", "--organization", "{org}", "--from", "2024-02-01T00:00Z"],
        ExitCode.INPUT,
        "go together",
    ),
    "count: injection in visibility": (
        [
            "count",
            "--organization",
            "{org}",
            "--from",
            "2024-01-01T00:00Z",
            "--to",
            "2024-02-01T00:00Z",
            "--visibility",
            "public'; DROP TABLE x; --",
        ],
        ExitCode.USAGE,
        "invalid choice",
    ),
    "usage: unknown organization": (
        ["usage", "--organization", "{missing}"],
        ExitCode.NOT_FOUND,
        "does not exist",
    ),
    "verify: unknown organization": (
        ["verify", "--organization", "{missing}"],
        ExitCode.NOT_FOUND,
        "does not exist",
    ),
    "backfill: batch of zero": (["backfill", "--batch-size", "0"], ExitCode.INPUT, "batch size"),
    "backfill: batch beyond int": (
        ["backfill", "--batch-size", "99999999999"],
        ExitCode.USAGE,
        "out of range",
    ),
    "relay resume: unknown organization": (
        ["relay", "resume", "--organization", "{missing}"],
        ExitCode.NOT_FOUND,
        "does not exist",
    ),
    "relay status: unknown organization": (
        ["relay", "status", "--organization", "{missing}"],
        ExitCode.OK,
        "",
    ),
    "worker: negative poll interval": (
        ["worker", "--once", "--poll-interval", "-1"],
        ExitCode.INPUT,
        "must not be negative",
    ),
    "worker: no Stripe key": (["worker", "--once"], ExitCode.STRIPE_KEY, "STRIPE_API_KEY"),
    "alerts: organization not a number": (
        ["alerts", "--organization", "acme"],
        ExitCode.USAGE,
        "must be a whole number",
    ),
    "alerts: unknown organization": (
        ["alerts", "--organization", "{missing}"],
        ExitCode.NOT_FOUND,
        "does not exist",
    ),
    "alerts: after not a number": (["alerts", "--after", "last"], ExitCode.USAGE, "alert id"),
    "alerts: zero poll interval": (
        ["alerts", "--follow", "--poll-interval", "0"],
        ExitCode.INPUT,
        "poll-interval",
    ),
}


@pytest.mark.parametrize("row", list(CLI_ROWS))
def test_s12_a_cli_command_with_bad_input_exits_with_its_code_and_one_line(
    conn, dsn, org, row, capsys, monkeypatch
):
    args, code, words = CLI_ROWS[row]
    args = [a.format(org=org.id, missing=org.id + 1000) for a in args]
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    if row.startswith("worker: negative"):
        monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    before = snapshot(conn, WATCHED)
    got = run_cli([*args, "--dsn", dsn])
    err = capsys.readouterr().err.strip()
    assert got == code, err
    if words:
        assert words in err
        assert "Traceback" not in err
    assert snapshot(conn, WATCHED) == before


def run_cli(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


def test_s12_the_cli_reports_an_unreachable_database_in_one_line(capsys):
    assert run_cli(["usage", "--dsn", "host=/nonexistent port=1"]) == ExitCode.DATABASE
    err = capsys.readouterr().err.strip()
    assert "cannot connect" in err and "\n" not in err


# --- S13 Stripe answering garbage -----------------------------------------------------------

EVENTS = "/v1/billing/meter_events"


@pytest.mark.parametrize(
    ("kind", "status"),
    [("html", 502), ("html", 200), ("truncated_json", 500), ("close_mid_response", 500)],
)
def test_s13_stripe_answering_garbage_leaves_the_worker_running_and_exact(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path, kind, status
):
    emu = relay_emulator
    orgs = [make_org(conn, f"o{i}") for i in range(2)]
    billed = {o.id: emu.customer(f"o{o.id}") for o in orgs}
    for org_id, customer in billed.items():
        bill(conn, org_id, customer)
    emu.ctl.add_fault(kind, count=6, path_prefix=EVENTS, status=status)
    worker = WorkerProcess(
        dsn,
        emu.url,
        tmp_path / "worker.log",
        "--poll-interval",
        "0.5",
        "--grace",
        "1",
        "--retry-min",
        "0.2",
        "--retry-max",
        "1",
        "--max-network-retries",
        "1",
    )
    with workers(worker.start()):
        for i in range(4):
            for org in orgs:
                ingest(
                    conn, org, org.testbeds[i % 2], [(org.benchmarks[i % 3], org.measures[i % 3])]
                )
            time.sleep(0.3)
        wait_until(
            lambda: (
                quiescent(conn)
                and not mismatches(conn, emu, billed)
                and emu.ctl.fault_counts().get(kind, 0) == 6
            ),
            60,
            f"Stripe to hold every period's usage through {kind} answers",
        )
        assert worker.alive()
    assert mismatches(conn, emu, billed) == []
    assert_increasing_timestamps(emu, billing_periods(conn, billed))
    # nothing half-written: no post left in doubt or refused, no organization parked
    assert one(conn, "SELECT count(*) FROM active_series._ledger WHERE status <> 'sent'") == 0
    assert one(conn, "SELECT count(*) FROM active_series.relay_failures") == 0
    assert "retry_later" in worker.log() or "resent" in worker.log() or kind == "html"


def test_s13_a_backdated_period_stripe_no_longer_accepts_is_reported_not_retried(
    conn, dsn, relay_emulator: Emulator, tmp_path: Path
):
    # An admin loads activity 90 days back: that period ended long ago, its invoice is final
    # (and Stripe refuses timestamps older than 35 days). The worker posts nothing for it,
    # reports the difference in billing_drift and goes on with the others.
    emu = relay_emulator
    org = make_org(conn, "backdated")
    customer = emu.customer("backdated")
    bill(conn, org.id, customer)
    allow_explicit_created(conn)
    ingest(
        conn,
        org,
        org.testbeds[0],
        [(org.benchmarks[0], org.measures[0])],
        created=dt.datetime.now(dt.UTC) - dt.timedelta(days=90),
    )
    conn.execute("RESET active_series.allow_explicit_created")
    ingest(conn, org, org.testbeds[1], [(org.benchmarks[1], org.measures[1])])
    worker = WorkerProcess(
        dsn, emu.url, tmp_path / "worker.log", "--poll-interval", "0.5", "--grace", "1"
    )
    current = one(conn, "SELECT period_start FROM active_series.current_period(%s)", (org.id,))
    with workers(worker.start()):
        wait_until(
            lambda: (
                quiescent(conn)
                and one(
                    conn,
                    "SELECT count(*) FROM active_series._period"
                    " NATURAL LEFT JOIN active_series._relay_period"
                    " WHERE closed_at IS NULL AND period_end < now()",
                )
                == 0
                and emu.last_value(customer, current, current + dt.timedelta(days=31)) == 1
            ),
            60,
            "the old period closed and the current one posted",
        )
        assert worker.alive()
    drift = conn.execute(
        "SELECT billed, period_usage, difference FROM active_series.billing_drift"
        " WHERE organization_id = %s",
        (org.id,),
    ).fetchall()
    assert drift == [(0, 1, 1)]
    assert (
        one(
            conn,
            "SELECT count(*) FROM active_series._ledger WHERE organization_id = %s"
            " AND period_start < %s",
            (org.id, current),
        )
        == 0
    )
    assert (
        one(
            conn,
            "SELECT count(*) FROM active_series.relay_failures WHERE organization_id = %s",
            (org.id,),
        )
        == 0
    )
    assert "period_finalized" in worker.log()


# --- A: the application side (reader functions, prices, alerts, cap, branches) ---------------

APP_WATCHED = WATCHED + ("_price", "_price_tier", "_alert_threshold", "_alert", "branch")

APP_BAD_CALLS = {
    # A1 NULL organization
    "price_preview NULL org": ("22004", "SELECT * FROM active_series.price_preview(NULL)"),
    "usage_summary NULL org": ("22004", "SELECT * FROM active_series.usage_summary(NULL)"),
    "set_alert NULL org": ("22004", "SELECT active_series.set_alert(NULL, 10)"),
    "set_series_cap NULL org": ("22004", "SELECT active_series.set_series_cap(NULL, 10)"),
    # A2 unknown organization
    "price_preview unknown org": (
        "P0002",
        "SELECT * FROM active_series.price_preview(%(unknown)s)",
    ),
    "usage_summary unknown org": (
        "P0002",
        "SELECT * FROM active_series.usage_summary(%(unknown)s)",
    ),
    "set_alert unknown org": ("P0002", "SELECT active_series.set_alert(%(unknown)s, 10)"),
    "set_series_cap unknown org": (
        "P0002",
        "SELECT active_series.set_series_cap(%(unknown)s, 10)",
    ),
    # A3 NULL and out-of-range thresholds and caps
    "set_alert NULL count": ("22004", "SELECT active_series.set_alert(%(org)s, NULL)"),
    "set_alert NULL enabled": ("22004", "SELECT active_series.set_alert(%(org)s, 5, NULL)"),
    "set_alert zero": ("22023", "SELECT active_series.set_alert(%(org)s, 0)"),
    "set_alert negative": ("22023", "SELECT active_series.set_alert(%(org)s, -3)"),
    "set_series_cap negative": ("22023", "SELECT active_series.set_series_cap(%(org)s, -1)"),
    # A4 wrong types
    "price_preview org as text": ("22P02", "SELECT * FROM active_series.price_preview('acme')"),
    "price_preview start as text": (
        "22007",
        "SELECT * FROM active_series.price_preview(%(org)s, 'next week')",
    ),
    "set_alert count as text": ("22P02", "SELECT active_series.set_alert(%(org)s, 'many')"),
    "set_alert count as a fraction": ("42883", "SELECT active_series.set_alert(%(org)s, 1.5)"),
    "set_series_cap beyond bigint": (
        "42883",
        "SELECT active_series.set_series_cap(%(org)s, 99999999999999999999)",
    ),
    # A5 a branch of another project
    "report on another project's branch": (
        "23503",
        "INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time,"
        " branch_id) VALUES (%(project)s, %(testbed)s, now(), now(), %(foreign_branch)s)",
    ),
}


@pytest.mark.parametrize("call", list(APP_BAD_CALLS))
def test_a_the_application_entry_points_refuse_bad_input_with_nothing_written(conn, org, call):
    other = make_org(conn, "other")
    foreign_branch = one(
        conn,
        "INSERT INTO active_series.branch (project_id, name) VALUES (%s, 'main') RETURNING id",
        (other.project_id,),
    )
    conn.execute("SELECT active_series.set_alert(%s, 1)", (org.id,))
    sqlstate, query = APP_BAD_CALLS[call]
    params = {
        "org": org.id,
        "unknown": org.id + 1000,
        "project": org.project_id,
        "testbed": org.testbeds[0],
        "foreign_branch": foreign_branch,
    }
    before = snapshot(conn, APP_WATCHED)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(query, params)
    assert err.value.sqlstate == sqlstate, (err.value.sqlstate, str(err.value))
    assert snapshot(conn, APP_WATCHED) == before
    if sqlstate in ("22004", "P0002"):
        assert "organization" in str(err.value) or "set_alert needs" in str(err.value)


def test_a_documented_defaults_are_not_errors(conn, org):
    # no cap (NULL) removes the cap; an unpriced organization has no amount
    conn.execute("SELECT active_series.set_series_cap(%s, 3)", (org.id,))
    conn.execute("SELECT active_series.set_series_cap(%s, NULL)", (org.id,))
    assert one(conn, "SELECT series_cap FROM active_series.usage_summary(%s)", (org.id,)) is None
    row = conn.execute(
        "SELECT active_series, amount, currency, tiers FROM active_series.price_preview(%s)",
        (org.id,),
    ).fetchone()
    assert row == (1, None, None, None)
    for start, end in (
        ("infinity", None),
        ("-infinity", None),
        ("1900-01-01Z", utc(1900, 2, 1)),  # the calendar month that would start there
    ):
        assert conn.execute(
            "SELECT period_end, active_series FROM active_series.price_preview(%s, %s)",
            (org.id, start),
        ).fetchone() == (end, 0)


MALFORMED_PRICES = {
    "not an object": '"price_1"',
    "no id": '{"currency": "usd", "unit_amount": 5}',
    "bad currency": '{"id": "price_1", "currency": "dollars", "unit_amount": 5}',
    "unknown scheme": '{"id": "price_1", "currency": "usd", "billing_scheme": "magic"}',
    "tiers not expanded": '{"id": "price_1", "currency": "usd", "billing_scheme": "tiered",'
    ' "tiers_mode": "graduated"}',
    "decreasing up_to": '{"id": "price_1", "currency": "usd", "billing_scheme": "tiered",'
    ' "tiers_mode": "volume", "tiers": [{"up_to": 5, "unit_amount": 1},'
    ' {"up_to": 3, "unit_amount": 1}, {"up_to": null, "unit_amount": 1}]}',
    "unbounded tier before the last": '{"id": "price_1", "currency": "usd",'
    ' "billing_scheme": "tiered", "tiers_mode": "volume", "tiers": [{"up_to": null,'
    ' "unit_amount": 1}, {"up_to": 3, "unit_amount": 1}]}',
    "last tier bounded": '{"id": "price_1", "currency": "usd", "billing_scheme": "tiered",'
    ' "tiers_mode": "volume", "tiers": [{"up_to": 3, "unit_amount": 1}]}',
}


@pytest.mark.parametrize("case", list(MALFORMED_PRICES))
def test_a_a_malformed_stripe_price_is_refused_and_the_previous_one_kept(conn, org, case):
    conn.execute(
        "SELECT active_series._store_price(%s, %s::jsonb, 'si_1')",
        (org.id, '{"id": "price_0", "currency": "usd", "unit_amount": 7}'),
    )
    before = snapshot(conn, APP_WATCHED)
    with pytest.raises(psycopg.Error) as err:
        conn.execute(
            "SELECT active_series._store_price(%s, %s::jsonb)", (org.id, MALFORMED_PRICES[case])
        )
    assert err.value.sqlstate == "22023", (err.value.sqlstate, str(err.value))
    assert snapshot(conn, APP_WATCHED) == before
    assert one(conn, "SELECT amount FROM active_series.price_preview(%s)", (org.id,)) == 7
