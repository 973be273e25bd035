"""Chaos: random ingest while the worker is SIGKILLed and restarted at random moments,
Stripe fails a third of the calls, and the database restarts once; late changes land in
ended periods, some inside their invoice grace, some after it. With v1 calls and with v2
streams, several customers' calls at once. At quiescence every (customer, period) is exact:
Stripe holds the usage of every period not yet final, and the value billed of every
final one, whose difference from the usage billing_drift shows exactly.

``make test`` runs a short round. ``make soak`` (``ACTIVE_SERIES_CHAOS_SECONDS``, default 600)
runs the soak: one long-lived worker through Stripe faults of every kind (garbage answers
included) and database restarts, and reports reports ingested, posts, faults injected,
mismatches (must be 0) and the worker's memory over time (must not grow).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from oracle import ingest, make_org
from relay_harness import (
    Cancellation,
    Emulator,
    WorkerProcess,
    anniversary,
    assert_increasing_timestamps,
    assert_one_call_per_customer,
    bill,
    billing_periods,
    quiescent,
    wait_until,
    workers,
)

EVENTS = "/v1/billing/meter_events"
STREAM = "/v2/billing/meter_event_stream"
KINDS = ["error", "rate_limit", "drop_before", "drop_after", "timeout", "timeout_after"]


def keep_reporting(
    dsn: str,
    stop: threading.Event,
    seed: int,
    pause: tuple[float, float],
    report: Callable[[psycopg.Connection[Any], random.Random], None],
    *,
    backdated: bool = False,
) -> None:
    """``report(conn, rng)`` every ``pause`` seconds (uniform) until ``stop``, reconnecting
    after a lost connection (the database restarts); ``backdated``: the session may set
    ``report.created``."""
    rng = random.Random(seed)
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = psycopg.connect(dsn, autocommit=True)
                if backdated:
                    conn.execute("SET active_series.allow_explicit_created = on")
            report(conn, rng)
        except psycopg.OperationalError:
            conn = None
            time.sleep(0.2)
        time.sleep(rng.uniform(*pause))
    if conn is not None:
        conn.close()


def ingest_randomly(
    dsn: str,
    orgs: list[Any],
    stop: threading.Event,
    seed: int,
    count: list[int] | None = None,
    may_report: Callable[[Any], bool] = lambda org: True,
) -> None:
    """Ingest a report of a few random series every 20-200 ms (of the organizations that
    ``may_report`` now); ``count[0]`` counts them."""

    def report(conn: psycopg.Connection[Any], rng: random.Random) -> None:
        org = rng.choice([o for o in orgs if may_report(o)])
        pairs = {(rng.choice(org.benchmarks), rng.choice(org.measures)) for _ in range(3)}
        ingest(conn, org, rng.choice(org.testbeds), sorted(pairs))
        if count is not None:
            count[0] += 1

    keep_reporting(dsn, stop, seed, (0.02, 0.2), report)


def late_changes(dsn: str, orgs: list[Any], stop: threading.Event, seed: int, span: float) -> None:
    """Every 0.3-0.8 s a backdated report (a late commit, an admin's load): half of them into
    the period that ended last, the others into a moment ``span`` seconds or less before
    now (mostly ended periods, some past their invoice grace)."""

    def report(conn: psycopg.Connection[Any], rng: random.Random) -> None:
        org = rng.choice(orgs)
        if rng.random() < 0.5:
            # into the period that ended last: closed and still taking corrections, mostly
            query = (
                "SELECT coalesce(max(period_start) + interval '1 second', clock_timestamp())"
                " FROM active_series._period"
                " WHERE organization_id = %s AND period_end <= clock_timestamp()"
            )
            params: tuple[Any, ...] = (org.id,)
        else:
            query = "SELECT clock_timestamp() - make_interval(secs => %s)"
            params = (rng.uniform(1, span),)
        at = conn.execute(query, params).fetchone()[0]  # type: ignore[index]
        pair = (rng.choice(org.benchmarks), rng.choice(org.measures))
        ingest(conn, org, rng.choice(org.testbeds), [pair], created=at)

    keep_reporting(dsn, stop, seed, (0.3, 0.8), report, backdated=True)


def correct_a_closed_period(dsn: str, org: Any, invoice_grace: float) -> None:
    """A late change that surely changes a closed period's usage while its invoice is still
    a draft: a series never reported before (a new benchmark), into the first period of
    ``org`` that closes with at least half its invoice grace left. The random late changes
    add a series to a closed period only when it was not yet active in it, which over a
    short run may never happen; this one the worker must post as a correction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET active_series.allow_explicit_created = on")
        deadline = time.monotonic() + 60
        while True:
            row = conn.execute(
                "SELECT period_start FROM active_series._period"
                " NATURAL LEFT JOIN active_series._relay_period"
                " WHERE organization_id = %s AND closed_at IS NOT NULL AND finalized_at IS NULL"
                " AND period_end + make_interval(secs => %s) > clock_timestamp()"
                " ORDER BY period_start DESC LIMIT 1",
                (org.id, invoice_grace / 2),
            ).fetchone()
            if row is not None:
                break
            assert time.monotonic() < deadline, "no period of the organization closed"
            time.sleep(0.1)
        benchmark = conn.execute(
            "INSERT INTO active_series.benchmark (project_id, name) VALUES (%s, 'late')"
            " RETURNING id",
            (org.project_id,),
        ).fetchone()[0]
        at = row[0] + dt.timedelta(seconds=1)
        ingest(conn, org, org.testbeds[0], [(benchmark, org.measures[0])], created=at)


def billing_mismatches(conn, emu: Emulator, billed: dict[int, str]) -> list[Any]:
    """Where Stripe (the emulator) does not hold what it should: the usage of a period not
    final, the value billed of a final one, no event at all in one finalized unbilled
    (before the customer's subscription began: nothing is ever posted for it); and where
    billing_drift does not show exactly the difference between a final period's usage and
    what Stripe billed (nothing for one unbilled)."""
    out: list[Any] = []
    for org, customer in billed.items():
        want_drift = {}
        events = emu.events(customer)
        for start, end, usage, billed_value, final in conn.execute(
            "SELECT period_start, period_end, active_series.period_usage(organization_id,"
            " period_start), billed_value, finalized_at IS NOT NULL"
            " FROM active_series._period"
            " NATURAL LEFT JOIN active_series._relay_period"
            " WHERE organization_id = %s",
            (org,),
        ).fetchall():
            got = emu.last_value(customer, start, end)
            if final and billed_value is None:
                posted = [
                    e["value"]
                    for e in events
                    if start.timestamp() <= e["timestamp"] < end.timestamp()
                ]
                if posted:
                    out.append((org, start, "unbilled", usage, posted))
            elif got != (billed_value if final else usage):
                out.append((org, start, "final" if final else "open", usage, billed_value, got))
            if final and billed_value is not None and usage != got:
                want_drift[start] = usage - got
        drift = dict(
            conn.execute(
                "SELECT period_start, difference FROM active_series.billing_drift"
                " WHERE organization_id = %s",
                (org,),
            ).fetchall()
        )
        if drift != want_drift:
            out.append((org, "billing_drift", drift, want_drift))
    return out


def unclosed_ended(conn, grace: float) -> int:
    return conn.execute(
        "SELECT count(*) FROM active_series._period"
        " NATURAL LEFT JOIN active_series._relay_period"
        " WHERE closed_at IS NULL"
        " AND period_end + make_interval(secs => %s) < clock_timestamp()",
        (grace,),
    ).fetchone()[0]


def settle(dsn: str, emu: Emulator, billed: dict, grace: float) -> list:
    """Wait until the outbox is empty, every ended period closed and Stripe exact (bounded);
    return what still differs."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            wait_until(
                lambda: (
                    quiescent(conn)
                    and unclosed_ended(conn, grace) == 0
                    and not billing_mismatches(conn, emu, billed)
                ),
                120,
                "quiescence",
            )
        except AssertionError:
            state = (quiescent(conn), unclosed_ended(conn, grace))
            return [
                ("quiescent, unclosed ended periods", state),
                *billing_mismatches(conn, emu, billed),
            ]
        return billing_mismatches(conn, emu, billed)


def run_chaos(dsn, pg_cluster, emu: Emulator, tmp_path: Path, seconds: float, api: str) -> None:
    rng = random.Random(2026)
    with psycopg.connect(dsn, autocommit=True) as setup:
        orgs = [make_org(setup, f"o{i}", testbeds=3, benchmarks=5, measures=4) for i in range(5)]
        billed = {}
        # subscriptions of 7 s periods anchored off the second (their periods end, and must
        # close, during the chaos; the database's follow them), one canceled in the middle of
        # the run, one customer without a subscription (calendar months), one not billed
        for org, offset in zip(orgs[:2], (3, 5), strict=True):
            billed[org.id], _ = anniversary(setup, emu, org.id, 7, offset)
        # quiet long enough for its last change to be posted even if a kill cut its call
        # off: waited out to the call's deadline (9.5 s here), then resent (maybe failing)
        canceled = Cancellation(setup, emu, orgs[2], cancel_in=seconds * 0.6, quiet=15)
        billed[orgs[2].id] = canceled.customer
        billed[orgs[3].id] = emu.customer()
        bill(setup, orgs[3].id, billed[orgs[3].id])
    grace = 1.0
    # 7 s of corrections after the close: after the restart, the customers whose calls were
    # cut off wait out their calls' deadlines (about 10 s here) first
    invoice_grace = 8.0
    path = EVENTS if api == "v1" else STREAM
    emu.ctl.random_failures(0.35, seed=9, kinds=KINDS, timeout_seconds=1.5, path_prefix=path)
    args = (
        "--api",
        api,
        "--concurrency",
        "4",
        "--invoice-grace",
        str(invoice_grace),
        "--poll-interval",
        "1",
        "--grace",
        str(grace),
        "--debounce",
        "0.05",
        "--stripe-timeout",
        "1",
        "--max-network-retries",
        "1",
        "--retry-min",
        "0.2",
        "--retry-max",
        "2",
        "--reconnect-delay",
        "0.2",
    )
    worker = WorkerProcess(dsn, emu.url, tmp_path / "worker.log", *args)
    stop = threading.Event()
    ingester = threading.Thread(
        target=ingest_randomly, args=(dsn, orgs, stop, 1, None, canceled.may_report)
    )
    late = threading.Thread(target=late_changes, args=(dsn, orgs[:2], stop, 3, 20.0))
    noting = threading.Thread(target=canceled.note_usage, args=(dsn,))
    kills = 0
    with workers(worker):
        worker.start()
        ingester.start()
        late.start()
        noting.start()
        try:
            deadline = time.monotonic() + seconds
            restarted = False
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(0.3, 2.0))
                worker.kill()
                kills += 1
                worker.start()
                if not restarted and time.monotonic() > deadline - seconds / 2:
                    time.sleep(1.0)  # the worker is running: it loses its connections
                    pg_cluster.restart()
                    restarted = True
            # the seed's gap: the last report of a period has its post fail, none follows
            with psycopg.connect(dsn, autocommit=True) as last:
                emu.ctl.add_fault("error", count=4, path_prefix=path)
                org = orgs[0]
                ingest(last, org, org.testbeds[0], [(org.benchmarks[4], org.measures[3])])
        finally:
            stop.set()
            ingester.join()
            late.join()
            noting.join()
        emu.ctl.random_failures(0)
        correct_a_closed_period(dsn, orgs[0], invoice_grace)
        left = settle(dsn, emu, billed, grace)
        assert left == [], "\n".join(map(str, left))
        with psycopg.connect(dsn, autocommit=True) as conn:
            canceled.assert_billed_up_to_its_end(conn, emu)
            closed, final, drift = conn.execute(
                "SELECT count(closed_at), count(finalized_at),"
                " (SELECT count(*) FROM active_series.billing_drift)"
                " FROM active_series._relay_period"
            ).fetchone()
            # posts for periods already closed: corrections inside the invoice grace
            corrected = conn.execute(
                "SELECT count(*) FROM active_series._ledger AS l"
                " INNER JOIN active_series._relay_period AS p USING (organization_id, period_start)"
                " WHERE l.status = 'sent' AND l.created > p.closed_at"
            ).fetchone()[0]
            assert_increasing_timestamps(emu, billing_periods(conn, billed))
    assert_one_call_per_customer(emu)
    assert kills >= 20
    assert restarted
    assert closed >= 4
    assert final >= 2 and corrected >= 1 and drift >= 1, (final, corrected, drift)
    faults = emu.ctl.fault_counts()
    requests = emu.ctl.stats()["requests"].get(path, 0)
    injected = sum(
        faults.get(k, 0)
        for k in ("error", "rate_limit", "drop_before", "drop_after", "timeout", "timeout_after")
    )
    assert injected >= 0.25 * requests, (faults, requests)


@pytest.mark.parametrize("api", ["v1", "v2-stream"])
def test_stripe_ends_exact_through_kills_faults_and_a_database_restart(
    dsn, pg_cluster, relay_emulator: Emulator, tmp_path: Path, api: str
):
    run_chaos(dsn, pg_cluster, relay_emulator, tmp_path, seconds=35, api=api)


# --- the soak -------------------------------------------------------------------------------

SOAK_KINDS = KINDS + ["html", "truncated_json", "close_mid_response"]


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS of /proc/<pid>/status), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@dataclass
class SoakReport:
    seconds: float
    reports: int = 0
    posts: int = 0
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    kills: int = 0
    mismatches: list[Any] = field(default_factory=list)
    memory: list[tuple[float, int]] = field(default_factory=list)  # (seconds, KiB)

    def quarter_medians(self) -> list[float]:
        """Median worker RSS (MiB) of each quarter of the run."""
        n = len(self.memory)
        quarters = [self.memory[i * n // 4 : (i + 1) * n // 4] for i in range(4)]
        return [statistics.median(k for _, k in q) / 1024 for q in quarters if q]

    def text(self) -> str:
        injected = sum(
            v for k, v in self.faults.items() if k in SOAK_KINDS + ["delay", "delay_after"]
        )
        lines = [
            f"soak: {self.seconds:.0f} s, one long-lived worker, a second one SIGKILLed"
            f" {self.kills} times, {self.restarts} database restart(s)",
            f"  reports ingested   {self.reports}",
            f"  posts (accepted)   {self.posts} of {self.requests} meter event requests",
            f"  faults injected    {injected} {dict(sorted(self.faults.items()))}",
            f"  mismatches         {len(self.mismatches)} {self.mismatches or ''}",
            "  worker RSS (MiB) by quarter (median): "
            + ", ".join(f"{m:.1f}" for m in self.quarter_medians()),
            "  worker RSS over time: "
            + ", ".join(
                f"{t:.0f}s={k / 1024:.1f}"
                for t, k in self.memory[:: max(1, len(self.memory) // 12)]
            ),
        ]
        return "\n".join(lines)


def run_soak(dsn, pg_cluster, emu: Emulator, tmp_path: Path, seconds: float) -> SoakReport:
    report = SoakReport(seconds)
    with psycopg.connect(dsn, autocommit=True) as setup:
        orgs = [make_org(setup, f"s{i}", testbeds=3, benchmarks=5, measures=4) for i in range(5)]
        billed = {}
        # as in the chaos run: two subscriptions of 7 s periods anchored off the second
        # (periods end, and must close, all along), one canceled in the middle of the run,
        # one customer without a subscription, one not billed
        for org, offset in zip(orgs[:2], (3, 5), strict=True):
            billed[org.id], _ = anniversary(setup, emu, org.id, 7, offset)
        canceled = Cancellation(setup, emu, orgs[2], cancel_in=seconds * 0.6, quiet=15)
        billed[orgs[2].id] = canceled.customer
        billed[orgs[3].id] = emu.customer()
        bill(setup, orgs[3].id, billed[orgs[3].id])
    grace = 1.0
    emu.ctl.random_failures(0.3, seed=7, kinds=SOAK_KINDS, timeout_seconds=1.5, path_prefix=EVENTS)
    args = (
        *("--poll-interval", "1", "--grace", str(grace), "--debounce", "0.05"),
        *("--stripe-timeout", "1", "--max-network-retries", "1", "--retry-min", "0.2"),
        *("--retry-max", "2", "--reconnect-delay", "0.2"),
    )
    worker = WorkerProcess(dsn, emu.url, tmp_path / "worker.log", *args)
    # a second worker, SIGKILLed and restarted all along, competes for the same organizations
    victim = WorkerProcess(dsn, emu.url, tmp_path / "victim.log", *args)
    rng = random.Random(11)
    stop = threading.Event()
    count = [0]
    ingester = threading.Thread(
        target=ingest_randomly, args=(dsn, orgs, stop, 3, count, canceled.may_report)
    )
    noting = threading.Thread(target=canceled.note_usage, args=(dsn,))
    with workers(worker, victim):
        worker.start()
        victim.start()
        ingester.start()
        noting.start()
        started = time.monotonic()
        restarts_at = [seconds / 3, 2 * seconds / 3]
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                assert worker.alive(), "the worker exited:\n" + worker.log()[-3000:]
                report.memory.append((elapsed, rss_kib(worker.pid)))
                if restarts_at and elapsed >= restarts_at[0]:
                    restarts_at.pop(0)
                    pg_cluster.restart()
                    report.restarts += 1
                time.sleep(rng.uniform(0.3, 1.0))
                victim.kill()
                report.kills += 1
                victim.start()
                time.sleep(rng.uniform(0.3, 1.0))
        finally:
            stop.set()
            ingester.join()
            noting.join()
        emu.ctl.random_failures(0)
        report.mismatches = settle(dsn, emu, billed, grace)
        assert worker.alive(), "the worker exited:\n" + worker.log()[-3000:]
        with psycopg.connect(dsn, autocommit=True) as conn:
            canceled.assert_billed_up_to_its_end(conn, emu)
    report.reports = count[0]
    report.faults = emu.ctl.fault_counts()
    report.requests = emu.ctl.stats()["requests"].get(EVENTS, 0)
    report.posts = len(emu.events())
    return report


@pytest.mark.soak
def test_soak_one_worker_stays_exact_and_its_memory_does_not_grow(
    dsn, pg_cluster, relay_emulator: Emulator, tmp_path: Path
):
    """``make soak``: one long-lived worker through Stripe faults of every kind and database
    restarts; prints the report (reports, posts, faults, mismatches, memory over time)."""
    seconds = float(os.environ.get("ACTIVE_SERIES_CHAOS_SECONDS", "600"))
    report = run_soak(dsn, pg_cluster, relay_emulator, tmp_path, seconds)
    print("\n" + report.text())
    out = os.environ.get("ACTIVE_SERIES_SOAK_REPORT")
    if out:
        Path(out).write_text(report.text() + "\n")
    assert report.mismatches == []
    assert report.reports > 0 and report.posts > 0
    assert sum(report.faults.get(k, 0) for k in SOAK_KINDS) > 0
    with psycopg.connect(dsn) as conn:
        billed = dict(
            conn.execute(
                "SELECT organization_id, stripe_customer_id FROM active_series.billing_account"
                " WHERE stripe_customer_id IS NOT NULL"
            ).fetchall()
        )
        assert_increasing_timestamps(relay_emulator, billing_periods(conn, billed))
    # memory must not grow: the last quarter's median within 10% (and 4 MiB) of the second's
    # (the first quarter is warm-up: imports, connections, first allocations)
    medians = report.quarter_medians()
    assert len(medians) == 4, report.text()
    assert medians[3] <= max(medians[1] * 1.10, medians[1] + 4), report.text()
