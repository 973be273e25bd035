"""Failover: the primary crashes in the middle of relay chaos and its synchronous standby is
promoted. Ingest (plain SQL through a multi-host DSN, retrying a transaction its dropped
connection failed) and two workers (the same DSN, SIGKILLed now and then, Stripe failing a
third of the calls) carry on against the new primary. At quiescence Stripe is exact for every
(customer, period), every post is one the new primary's ledger knows, timestamps only rise,
``verify()`` finds nothing, and nothing the ingest client saw committed is lost.

The customers are subscribed as in the chaos suite: two with 7 s periods anchored off the
second (the database's periods following them: periods end, and must close, across the
failover), one with an hour's anniversary period canceled at a ``cancel_at`` just before the
(middle) failover (its organization quiet before it, reporting again after it: nothing may be
posted at or after it, on either primary, and the final invoice and the finalized period
bill the usage before it), one without a subscription (calendar months), one not billed.

``make soak`` runs a longer round (``ACTIVE_SERIES_CHAOS_SECONDS``): a failover a minute, a new
standby after each.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from failover import FailoverPair, failover_pair
from oracle import Org, ingest, make_org
from relay_harness import (
    Cancellation,
    Emulator,
    WorkerProcess,
    anniversary,
    assert_increasing_timestamps,
    assert_one_call_per_customer,
    bill,
    billing_periods,
    wait_until,
    workers,
)
from test_relay_chaos import EVENTS, KINDS, settle

GRACE = 1.0
# the canceled customer's organization is quiet this long before its cancellation: time for
# its last change to be posted through Stripe faults and worker kills (a call a kill cut
# off is waited out to its deadline, 9.5 s here, then resent, maybe failing once more)
QUIET = 14.0
FAULTS = (*KINDS, "delay", "delay_after")  # the emulator counts timeouts as delays
INGEST_APP = "failover-ingest"
WORKER_ARGS = (
    *("--poll-interval", "1", "--grace", str(GRACE), "--debounce", "0.05"),
    *("--stripe-timeout", "1", "--max-network-retries", "1", "--retry-min", "0.2"),
    *("--retry-max", "2", "--reconnect-delay", "0.2"),
)


@dataclass
class IngestClient:
    """Ingests a report of a few random series every 20-200 ms in one transaction each (of
    the organizations that ``may_report`` then), through ``dsn``. A transaction that fails
    because the connection dropped is retried on a new connection until it commits: a
    failure before COMMIT rolled it back; a failure of COMMIT itself leaves its outcome
    unknown (``in_doubt``)."""

    dsn: str
    orgs: list[Org]
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    promoted: threading.Event = field(default_factory=threading.Event)
    acked: dict[int, int] = field(default_factory=dict)  # report id -> its metrics
    acked_after_promotion: int = 0  # the first
    dropped: int = 0  # attempts that failed on a lost or refused connection (then retried)
    in_doubt: dict[int, int] = field(default_factory=dict)  # report id -> its metrics
    in_doubt_commits: int = 0
    errors: list[str] = field(default_factory=list)
    may_report: Callable[[Org], bool] = lambda org: True

    def run(self) -> None:
        rng = random.Random(self.seed)
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self.stop.is_set():
                org = rng.choice([o for o in self.orgs if self.may_report(o)])
                pairs = sorted(
                    {(rng.choice(org.benchmarks), rng.choice(org.measures)) for _ in range(3)}
                )
                conn = self._commit(conn, org, rng.choice(org.testbeds), pairs)
                time.sleep(rng.uniform(0.02, 0.2))
        except Exception as exc:  # reported by the test, not lost in a thread
            self.errors.append(repr(exc))
        finally:
            if conn is not None:
                conn.close()

    def _commit(
        self, conn: psycopg.Connection[Any] | None, org: Org, testbed: int, pairs: list
    ) -> psycopg.Connection[Any] | None:
        """One report, retried until committed (or the client stops); returns the connection."""
        while not self.stop.is_set():
            report = None  # set once every statement before COMMIT succeeded
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, application_name=INGEST_APP)
                report = ingest(conn, org, testbed, pairs)
                conn.commit()
            except psycopg.OperationalError:
                self.dropped += 1
                if report is not None:  # COMMIT failed: it may have committed
                    self.in_doubt[report] = len(pairs)
                    self.in_doubt_commits += 1
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.2)
                continue
            self.acked[report] = len(pairs)
            # the id of a commit in doubt that the new primary does not have can come again
            self.in_doubt.pop(report, None)
            self.acked_after_promotion += self.promoted.is_set()
            return conn
        return conn


def setup_orgs(
    pair: FailoverPair, emu: Emulator, prefix: str, cancel_in: float
) -> tuple[list[Org], dict, Cancellation, int]:
    """Five organizations: two subscribed with 7 s periods anchored off the second (periods
    end, and must close, across the failover), one whose subscription is canceled
    ``cancel_in`` seconds from now (it has reported once already: the report's id is
    returned too), one billed without a subscription, one not billed."""
    with psycopg.connect(pair.primary_dsn, autocommit=True) as setup:
        orgs = [
            make_org(setup, f"{prefix}{i}", testbeds=3, benchmarks=5, measures=4) for i in range(5)
        ]
        billed = {}
        for org, offset in zip(orgs[:2], (3, 5), strict=True):
            billed[org.id], _ = anniversary(setup, emu, org.id, 7, offset)
        canceled = Cancellation(setup, emu, orgs[2], cancel_in=cancel_in, quiet=QUIET)
        billed[orgs[2].id] = canceled.customer
        org = orgs[2]
        first = ingest(setup, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])])
        billed[orgs[3].id] = emu.customer()
        bill(setup, orgs[3].id, billed[orgs[3].id])
    return orgs, billed, canceled, first


@dataclass
class Run:
    kills: int = 0
    failovers: int = 0
    promoted_at: float = 0.0  # Unix time the last new primary accepted writes
    canceled: Cancellation | None = None
    requests: int = 0  # meter event requests while Stripe faults were on
    faults: int = 0  # of which failed (5xx, 429, dropped, timed out)


def fail_over(pair: FailoverPair, discard: bool) -> None:
    """Crash the primary with an ingest COMMIT in doubt, and promote the standby. With
    ``discard`` the standby never gets that commit; without, it may."""
    # commits the standby does not acknowledge wait: the crash leaves one whose client
    # cannot know its outcome
    pair.pause_replication()
    wait_until(lambda: pair.waiting_for_standby(INGEST_APP), what="a COMMIT waiting")
    pair.crash_primary()
    pair.resume_replication(discard=discard)
    time.sleep(1.0)  # workers and ingest find no server that accepts writes
    pair.promote()


def run_failover(
    pair: FailoverPair, emu: Emulator, tmp_path: Path, seconds: float, discards: list[bool]
) -> tuple:
    """The chaos for ``seconds`` around a failover for each of ``discards`` (at even
    intervals; a new standby after each but the last; the cancellation just before the
    middle one); returns (billed, client, run)."""
    due = [seconds * (i + 1) / (len(discards) + 1) for i in range(len(discards))]
    orgs, billed, canceled, first = setup_orgs(pair, emu, "f", due[(len(due) - 1) // 2])
    emu.ctl.random_failures(0.35, seed=5, kinds=KINDS, timeout_seconds=1.5, path_prefix=EVENTS)
    procs = [
        WorkerProcess(pair.multi_dsn, emu.url, tmp_path / f"worker{i}.log", *WORKER_ARGS)
        for i in range(2)
    ]
    client = IngestClient(pair.multi_dsn, orgs, seed=4, may_report=canceled.may_report)
    client.acked[first] = 1  # the setup's, committed before any failover
    ingester = threading.Thread(target=client.run)
    noting = threading.Thread(target=canceled.note_usage, args=(pair.multi_dsn,))
    rng = random.Random(2027)
    run = Run(canceled=canceled)
    with workers(*procs):
        for proc in procs:
            proc.start()
        ingester.start()
        noting.start()
        try:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                time.sleep(rng.uniform(1.0, 3.0))
                victim = rng.choice(procs)
                victim.kill()
                run.kills += 1
                victim.start()
                if run.failovers < len(discards) and elapsed >= due[run.failovers]:
                    fail_over(pair, discards[run.failovers])
                    run.failovers += 1
                    run.promoted_at = time.time()
                    client.promoted.set()
                    if run.failovers < len(discards):
                        pair.rebuild_standby()
        finally:
            client.stop.set()
            ingester.join()
            noting.join()
        emu.ctl.random_failures(0)
        run.requests = emu.ctl.stats()["requests"].get(EVENTS, 0)
        run.faults = sum(emu.ctl.fault_counts().get(k, 0) for k in FAULTS)
        left = settle(pair.primary_dsn, emu, billed, GRACE)
        assert left == [], "\n".join(map(str, left))
        for proc in procs:
            assert proc.alive(), "a worker exited:\n" + proc.log()[-3000:]
    return billed, client, run


def assert_posts_are_the_ledgers(conn: psycopg.Connection[Any], emu: Emulator) -> None:
    """Every event Stripe holds is a post the new primary's ledger records as sent, and the
    other way round; one value per identifier and per (customer, timestamp)."""
    events = emu.events()
    by_identifier: dict[str, set[int]] = defaultdict(set)
    by_timestamp: dict[tuple[str, int], set[int]] = defaultdict(set)
    for ev in events:
        by_identifier[ev["identifier"]].add(ev["value"])
        by_timestamp[ev["customer"], ev["timestamp"]].add(ev["value"])
    assert {k: v for k, v in by_identifier.items() if len(v) > 1} == {}
    assert {k: v for k, v in by_timestamp.items() if len(v) > 1} == {}
    posted = sorted((e["identifier"], e["customer"], e["value"], e["timestamp"]) for e in events)
    ledger = conn.execute(
        "SELECT identifier, stripe_customer_id, value, event_timestamp"
        " FROM active_series._ledger WHERE status = 'sent' ORDER BY 1"
    ).fetchall()
    assert posted == [tuple(r) for r in ledger]


def assert_nothing_acked_is_lost(conn: psycopg.Connection[Any], client: IngestClient) -> int:
    """Every report the client saw committed is there with its metrics; any other report is
    one whose COMMIT failed with its outcome unknown; returns how many of those are there."""
    present = dict(
        conn.execute(
            "SELECT r.id, count(m.*) FROM active_series.report AS r"
            " JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id"
            " JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id"
            " GROUP BY r.id"
        ).fetchall()
    )
    lost = {r: n for r, n in client.acked.items() if present.get(r) != n}
    assert lost == {}, f"acknowledged reports lost or changed: {lost}"
    unknown = {r: n for r, n in present.items() if r not in client.acked}
    assert unknown.keys() <= client.in_doubt.keys(), "reports no client committed"
    # an in-doubt commit is all there or not at all
    assert {r: client.in_doubt[r] for r in unknown} == unknown
    return len(unknown)


def check_failover(
    pair: FailoverPair, emu: Emulator, billed: dict, client: IngestClient, run: Run
) -> int:
    """The pass conditions on the new primary; returns how many in-doubt commits it holds."""
    assert client.errors == []
    assert run.failovers, "the primary never failed over"
    assert client.dropped >= 1, "the ingest client never saw its connection drop"
    assert client.in_doubt_commits >= run.failovers, "an ingest COMMIT not cut off by a crash"
    assert client.acked_after_promotion > 0, "ingest did not continue on the new primary"
    assert sum(ev["received_at"] > run.promoted_at for ev in emu.events()) > 0, (
        "no post after the promotion"
    )
    with psycopg.connect(pair.multi_dsn, autocommit=True) as conn:
        assert conn.info.port == pair.primary.port
        assert conn.execute("SELECT * FROM active_series.verify()").fetchall() == []
        assert conn.execute("SELECT * FROM active_series.relay_failures").fetchall() == []
        assert_posts_are_the_ledgers(conn, emu)
        kept = assert_nothing_acked_is_lost(conn, client)
        assert run.canceled is not None
        run.canceled.assert_billed_up_to_its_end(conn, emu)
        closed = conn.execute(
            "SELECT count(*) FROM active_series._relay_period WHERE closed_at IS NOT NULL"
        ).fetchone()[0]
        assert_increasing_timestamps(emu, billing_periods(conn, billed))
    assert_one_call_per_customer(emu)
    assert closed >= 2
    assert run.faults >= 0.25 * run.requests, run
    print(
        f"\nfailover: {run.failovers} failover(s), {len(client.acked)} reports acknowledged"
        f" ({client.acked_after_promotion} on the new primary), {client.dropped} transactions"
        f" retried, {client.in_doubt_commits} COMMIT(s) in doubt ({kept} kept), {run.kills} worker"
        f" kills, {len(emu.events())} posts, {run.faults} faults in {run.requests} requests,"
        f" {closed} periods closed"
    )
    return kept


@pytest.mark.parametrize(
    "discard",
    [
        # make test runs the stricter case; make soak both (and test_soak_failovers alternates)
        pytest.param(False, marks=pytest.mark.soak, id="wal-receiver-resumed"),
        pytest.param(True, id="wal-receiver-killed"),
    ],
)
def test_stripe_and_ingest_stay_exact_through_a_primary_crash_and_promotion(
    discard: bool, relay_emulator: Emulator, tmp_path: Path
):
    """Resumed, the standby may still receive the commit in doubt (the WAL the primary had
    sent); killed, it cannot: then the new primary must not have it either."""
    with failover_pair() as pair:
        billed, client, run = run_failover(pair, relay_emulator, tmp_path, 30, [discard])
        kept = check_failover(pair, relay_emulator, billed, client, run)
    assert run.kills >= 5
    if discard:
        assert kept == 0


@pytest.mark.soak
def test_soak_failovers(relay_emulator: Emulator, tmp_path: Path):
    """``make soak``: the same for ``ACTIVE_SERIES_CHAOS_SECONDS`` (default 600), with a
    failover a minute, the standby rebuilt after each."""
    seconds = float(os.environ.get("ACTIVE_SERIES_CHAOS_SECONDS", "600"))
    discards = [i % 2 == 1 for i in range(max(1, int(seconds // 60)))]
    with failover_pair() as pair:
        billed, client, run = run_failover(pair, relay_emulator, tmp_path, seconds, discards)
        check_failover(pair, relay_emulator, billed, client, run)
    assert run.failovers == len(discards)
