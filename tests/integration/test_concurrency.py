"""Real concurrent transactions: many connections ingesting overlapping series of one organization.

Every worker thread has its own connection; a barrier starts each round together.  statement_timeout
and lock_timeout make a lock-up fail the test instead of hanging it; any error (a deadlock
included) is collected and fails the test.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import psycopg
from oracle import (
    Org,
    allow_explicit_created,
    assert_matches_oracle,
    ingest,
    make_org,
    make_variant,
    period_usage,
    utc,
    verify,
)

WORKERS = 10
ROUNDS = 6
SESSION_LIMITS = "SET statement_timeout = '60s'; SET lock_timeout = '30s'"


def run_together(
    connect: Callable[..., psycopg.Connection],
    work: Callable[[psycopg.Connection, int, int, random.Random], None],
    *,
    workers: int = WORKERS,
    rounds: int = ROUNDS,
    seed: int = 0,
) -> None:
    """Run ``work(conn, worker, round, rng)`` on ``workers`` connections, each round started
    together by a barrier; raise the first error any worker hit."""
    conns = [connect(autocommit=True) for _ in range(workers)]
    for c in conns:
        c.execute(SESSION_LIMITS)
    barrier = threading.Barrier(workers, timeout=120)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        try:
            for r in range(rounds):
                barrier.wait()
                work(conns[i], i, r, rng)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker is still running"
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    deadlocks = [e for e in real if isinstance(e, psycopg.errors.DeadlockDetected)]
    assert not deadlocks, f"deadlock: {deadlocks[0]}"
    assert not real, f"{len(real)} worker(s) failed, first: {real[0]!r}"
    assert not errors


def _random_ingest(conn: psycopg.Connection, org: Org, rng: random.Random, created=None) -> None:
    """One report, or (half the time) a transaction of 2-3 reports, of overlapping random series
    in random order; each report's metrics arrive in one or two statements."""
    pairs = [(b, m) for b in org.benchmarks for m in org.measures]
    reports = 1 if rng.random() < 0.5 else rng.randint(2, 3)
    with conn.transaction():
        for _ in range(reports):
            chosen = rng.sample(pairs, rng.randint(1, len(pairs)))
            testbed = rng.choice(org.testbeds)
            if rng.random() < 0.5:
                ingest(conn, org, testbed, chosen, created)
            else:
                cut = rng.randint(1, len(chosen))
                ingest(conn, org, testbed, chosen[:cut], created)
                if chosen[cut:]:
                    ingest(conn, org, testbed, chosen[cut:], created)


def test_concurrent_ingest_of_overlapping_series_neither_deadlocks_nor_loses_a_series(
    conn, connect
):
    org = make_org(conn, testbeds=3, benchmarks=4, measures=5)
    other = make_org(conn, "other", testbeds=2, benchmarks=2, measures=2)

    def work(c: psycopg.Connection, i: int, r: int, rng: random.Random) -> None:
        # One worker in five writes to another organization in the same rounds.
        target = other if i % 5 == 4 else org
        _random_ingest(c, target, rng)

    run_together(connect, work, seed=1)

    assert_matches_oracle(conn, org.id)
    assert_matches_oracle(conn, other.id)
    assert verify(conn) == []
    usage = conn.execute("SELECT active_series.period_usage(%s)", (org.id,)).fetchone()
    assert usage is not None and usage[0] == sum(period_usage(conn, org.id).values())


def test_concurrent_first_activity_of_a_new_organization_creates_one_period(conn, connect):
    org = make_org(conn, testbeds=2, benchmarks=3, measures=3)

    def work(c: psycopg.Connection, i: int, r: int, rng: random.Random) -> None:
        _random_ingest(c, org, rng)

    run_together(connect, work, rounds=1, seed=2)

    periods = conn.execute(
        "SELECT count(*) FROM active_series._period WHERE organization_id = %s", (org.id,)
    ).fetchone()
    assert periods == (1,)
    assert_matches_oracle(conn, org.id)


def test_concurrent_first_activity_in_a_new_period_of_an_active_organization(conn, connect):
    org = make_org(conn, testbeds=2, benchmarks=3, measures=4)
    allow_explicit_created(conn)
    ingest(conn, org, org.testbeds[0], [(org.benchmarks[0], org.measures[0])], utc(2024, 1, 20))

    def work(c: psycopg.Connection, i: int, r: int, rng: random.Random) -> None:
        if r == 0:
            allow_explicit_created(c)
        # Every worker's first report of round 0 is the period's first activity race; later
        # rounds mix the new period with late arrivals for the old one.
        created = utc(2024, 2, 1, 0, i) if r == 0 or rng.random() < 0.7 else utc(2024, 1, 31)
        _random_ingest(c, org, rng, created)

    run_together(connect, work, rounds=3, seed=3)

    starts = [
        r[0]
        for r in conn.execute(
            "SELECT period_start FROM active_series._period WHERE organization_id = %s ORDER BY 1",
            (org.id,),
        )
    ]
    assert starts == [utc(2024, 1), utc(2024, 2)]
    assert_matches_oracle(conn, org.id)


def test_concurrent_reports_of_repeated_overlapping_shapes_and_variants_are_exact(conn, connect):
    """Eight connections send reports drawn from a few sets of series (with variants, an
    explicit empty one among them) to shared testbeds: sets repeat, grow, shrink and overlap
    within and across transactions, and new periods start (backdated reports of the previous
    month). No deadlock, nothing lost, nothing counted twice."""
    org = make_org(conn, testbeds=3, benchmarks=5, measures=3)
    variants = [None, None] + [
        make_variant(conn, org.benchmarks[b], params)
        for b, params in [(0, '{"size_mb": 16}'), (0, '{"size_mb": 64}'), (1, "{}")]
    ]
    triples = [
        (b, v, m)
        for b in org.benchmarks
        for v in {None, *(x for x in variants[2:] if _benchmark_of(conn, x) == b)}
        for m in org.measures
    ]
    rng = random.Random(5)
    pool = [sorted(rng.sample(triples, rng.randint(1, 12)), key=str) for _ in range(4)]
    pool += [pool[0] + pool[1], pool[2][:1]]

    def work(c: psycopg.Connection, i: int, r: int, rng: random.Random) -> None:
        allow_explicit_created(c)
        created = utc(2024, 3, 20) if r % 3 == 0 else None  # an older period, now and then
        with c.transaction():
            for _ in range(rng.randint(1, 2)):
                ingest(c, org, rng.choice(org.testbeds), rng.choice(pool), created)

    run_together(connect, work, workers=8, rounds=8, seed=3)

    assert_matches_oracle(conn, org.id)
    assert verify(conn) == []


def _benchmark_of(conn: psycopg.Connection, variant: int | None) -> int | None:
    if variant is None:
        return None
    row = conn.execute(
        "SELECT benchmark_id FROM active_series.variant WHERE id = %s", (variant,)
    ).fetchone()
    assert row is not None
    return row[0]
