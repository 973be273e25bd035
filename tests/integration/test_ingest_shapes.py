"""Every statement shape that inserts metrics is tracked identically."""

from __future__ import annotations

import psycopg
import pytest
from oracle import (
    Org,
    allow_explicit_created,
    assert_matches_oracle,
    ingest,
    make_org,
    make_report,
    make_report_benchmark,
    make_variant,
    one,
    record_now,
    utc,
)

# (created, testbed index, [(benchmark index, iteration, measure index)]); out of time order, a
# series repeated within a report (a benchmark's second iteration) and across periods.
DATA = [
    (utc(2024, 3, 10), 0, [(0, 0, 0), (0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 1, 1)]),
    (utc(2024, 1, 31, 23, 59), 0, [(0, 0, 0), (2, 0, 2)]),
    (utc(2024, 2, 1), 1, [(0, 0, 0), (1, 0, 1), (1, 1, 1), (1, 2, 1)]),
    (utc(2024, 1, 2), 0, [(0, 0, 0), (1, 0, 0)]),
    (utc(2024, 3, 1), 1, [(2, 0, 2), (2, 1, 2), (0, 0, 0)]),
    (utc(2024, 2, 29, 12), 0, [(0, 0, 1)]),
]

NORMALIZED = {
    "series_last_seen": """
        SELECT t.name, b.name, v.parameters, m.name, s.last_seen
        FROM active_series.series_last_seen s
        JOIN active_series.testbed t ON t.id = s.testbed_id
        JOIN active_series.benchmark b ON b.id = s.benchmark_id
        JOIN active_series.variant v ON v.id = s.variant_id
        JOIN active_series.measure m ON m.id = s.measure_id
        WHERE s.organization_id = %(org)s ORDER BY 1, 2, 3, 4, 5""",
    "period_series": """
        SELECT q.period_start, t.name, b.name, v.parameters, m.name, s.first_seen, s.last_seen
        FROM active_series._period q
        CROSS JOIN LATERAL active_series.period_series(q.organization_id, q.period_start) s
        JOIN active_series.testbed t ON t.id = s.testbed_id
        JOIN active_series.benchmark b ON b.id = s.benchmark_id
        JOIN active_series.variant v ON v.id = s.variant_id
        JOIN active_series.measure m ON m.id = s.measure_id
        WHERE q.organization_id = %(org)s ORDER BY 1, 2, 3, 4, 5, 6""",
    "_period_usage": """
        SELECT u.period_start, p.name, u.series_count
        FROM active_series._period_usage u JOIN active_series.project p ON p.id = u.project_id
        WHERE u.organization_id = %(org)s ORDER BY 1, 2""",
    "_period": """
        SELECT period_start, period_end FROM active_series._period
        WHERE organization_id = %(org)s ORDER BY 1""",
    "period_usage": """
        SELECT s, active_series.period_usage(%(org)s, s)
        FROM unnest(ARRAY['2024-01-01Z', '2024-02-01Z', '2024-03-01Z']::timestamptz[]) AS s""",
}


def normalized(conn: psycopg.Connection, org_id: int) -> dict:
    """The tracked state of one organization with ids replaced by names."""
    return {k: conn.execute(q, {"org": org_id}).fetchall() for k, q in NORMALIZED.items()}


def prepare(conn: psycopg.Connection, name: str) -> tuple[Org, list[tuple[int, int, float]]]:
    """An organization with DATA's reports and report_benchmarks; the metric rows to insert."""
    org = make_org(conn, name, testbeds=2, benchmarks=3, measures=3)
    allow_explicit_created(conn)
    rows = []
    for created, tb, metrics in DATA:
        report = make_report(conn, org.project_id, org.testbeds[tb], created)
        rbs = {}
        for bm, it, ms in metrics:
            if (bm, it) not in rbs:
                rbs[bm, it] = make_report_benchmark(conn, report, org.benchmarks[bm], it)
            rows.append((rbs[bm, it], org.measures[ms], float(len(rows))))
    return org, rows


INSERT = "INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)"


def single_rows(conn: psycopg.Connection, rows) -> None:
    for row in rows:
        conn.execute(INSERT + " VALUES (%s, %s, %s)", row)


def multi_row_values(conn: psycopg.Connection, rows) -> None:
    conn.execute(
        INSERT + " VALUES " + ", ".join(["(%s, %s, %s)"] * len(rows)),
        [v for row in rows for v in row],
    )


def insert_select(conn: psycopg.Connection, rows) -> None:
    conn.execute(
        INSERT + " SELECT rb, ms, v FROM unnest(%s::bigint[], %s::bigint[], %s::float8[])"
        " WITH ORDINALITY AS u(rb, ms, v, n) ORDER BY n DESC",
        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
    )


def copy(conn: psycopg.Connection, rows) -> None:
    with conn.cursor().copy(
        "COPY active_series.metric (report_benchmark_id, measure_id, value) FROM STDIN"
    ) as cp:
        for row in rows:
            cp.write_row(row)


def executemany(conn: psycopg.Connection, rows) -> None:
    conn.cursor().executemany(INSERT + " VALUES (%s, %s, %s)", rows)


def one_statement_per_report_in_one_transaction(conn: psycopg.Connection, rows) -> None:
    by_rb: dict[int, list] = {}
    for row in rows:
        by_rb.setdefault(row[0], []).append(row)
    with conn.transaction():
        for group in by_rb.values():
            multi_row_values(conn, group)


SHAPES = [
    single_rows,
    multi_row_values,
    insert_select,
    copy,
    executemany,
    one_statement_per_report_in_one_transaction,
]


def test_every_statement_shape_produces_the_same_tracked_state(conn):
    states = {}
    for shape in SHAPES:
        org, rows = prepare(conn, shape.__name__)
        shape(conn, rows)
        assert_matches_oracle(conn, org.id)
        states[shape.__name__] = normalized(conn, org.id)
    reference = states.pop(single_rows.__name__)
    assert reference["period_usage"] == [
        (utc(2024, 1), 3),
        (utc(2024, 2), 3),
        (utc(2024, 3), 5),
    ]
    for name, got in states.items():
        assert got == reference, name


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_a_series_repeated_in_one_report_is_counted_once(conn, shape):
    org = make_org(conn, testbeds=1, benchmarks=1, measures=2)
    report = make_report(conn, org.project_id, org.testbeds[0])
    rbs = [make_report_benchmark(conn, report, org.benchmarks[0], i) for i in range(3)]
    rows = [(rb, org.measures[0], float(i)) for i, rb in enumerate(rbs)]
    rows.append((rbs[1], org.measures[1], 9.0))

    shape(conn, rows)

    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 2
    assert (
        one(
            conn,
            "SELECT count(*) FROM active_series._series_history WHERE organization_id = %s",
            (org.id,),
        )
        == 2
    )
    assert_matches_oracle(conn, org.id)


def test_a_report_with_6000_metrics_counts_6000_series(conn):
    org = make_org(conn, testbeds=1, benchmarks=0, measures=0)
    conn.execute(
        "INSERT INTO active_series.benchmark (project_id, name)"
        " SELECT %s, 'bm-' || i FROM generate_series(1, 60) i",
        (org.project_id,),
    )
    conn.execute(
        "INSERT INTO active_series.measure (project_id, name)"
        " SELECT %s, 'ms-' || i FROM generate_series(1, 100) i",
        (org.project_id,),
    )

    def big_report() -> None:
        report = make_report(conn, org.project_id, org.testbeds[0])
        conn.execute(
            "INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)"
            " SELECT %s, id, 0 FROM active_series.benchmark WHERE project_id = %s",
            (report, org.project_id),
        )
        conn.execute(
            INSERT + " SELECT rb.id, m.id, random()"
            " FROM active_series.report_benchmark rb CROSS JOIN active_series.measure m"
            " WHERE rb.report_id = %s AND m.project_id = %s",
            (report, org.project_id),
        )

    big_report()
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 6000
    assert_matches_oracle(conn, org.id)

    big_report()
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 6000
    assert_matches_oracle(conn, org.id)


def test_report_benchmarks_of_another_report_between_a_transactions_own_are_not_recorded(conn):
    """Another report's report_benchmarks with ids between a transaction's own, without
    metrics in the transaction, record nothing."""
    org = make_org(conn, testbeds=2, benchmarks=4, measures=1)
    mine = make_report(conn, org.project_id, org.testbeds[0])
    other = make_report(conn, org.project_id, org.testbeds[1])
    rbs = []
    for benchmark in org.benchmarks:  # ids interleaved: mine, other, mine, other, ...
        rbs.append(make_report_benchmark(conn, mine, benchmark))
        make_report_benchmark(conn, other, benchmark)
    with conn.transaction():
        insert_select(conn, [(rb, org.measures[0], 1.0) for rb in rbs])
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 4
    assert_matches_oracle(conn, org.id)


def test_a_transaction_reaching_back_to_an_old_report_benchmark_is_exact(conn):
    """Metrics for an old report_benchmark and a new one in one transaction, far apart in id
    (many others written in between): both recorded."""
    org = make_org(conn, testbeds=2, benchmarks=2, measures=1)
    old = make_report_benchmark(
        conn, make_report(conn, org.project_id, org.testbeds[0]), org.benchmarks[0]
    )
    filler = make_report(conn, org.project_id, org.testbeds[1])
    for i in range(20):
        make_report_benchmark(conn, filler, org.benchmarks[1], i)
    new = make_report_benchmark(
        conn, make_report(conn, org.project_id, org.testbeds[1]), org.benchmarks[0]
    )
    with conn.transaction():
        insert_select(conn, [(old, org.measures[0], 1.0), (new, org.measures[0], 2.0)])
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 2
    assert_matches_oracle(conn, org.id)


def test_a_transaction_committing_after_a_later_one_is_exact(connect):
    """Concurrent ingest of one testbed: the transaction that started first (an earlier
    report.created) but commits last widens its own set's times and nothing else; every count
    and first/last_seen stays exact."""
    a, b = connect(), connect()
    org = make_org(a, benchmarks=2, measures=3)
    series = [(bm, ms) for bm in org.benchmarks for ms in org.measures]
    ingest(a, org, org.testbeds[0], series)
    with a.transaction():
        ingest(a, org, org.testbeds[0], series)  # created: this, the earlier transaction time
        with b.transaction():
            ingest(b, org, org.testbeds[0], series[:3])  # benchmark 0, later, committed first
        shapes = one(a, "SELECT count(*) FROM active_series._shape")
        record_now(a)
        assert one(a, "SELECT count(*) FROM active_series._shape") == shapes
    assert_matches_oracle(a, org.id)


def test_older_activity_before_a_series_first_seen_still_lowers_it(conn):
    """Older activity moves a series' first_seen back, and only that series'."""
    allow_explicit_created(conn)
    org = make_org(conn, benchmarks=1, measures=2)
    both = [(org.benchmarks[0], m) for m in org.measures]
    tb = org.testbeds[0]
    ingest(conn, org, tb, both, utc(2024, 5, 20))
    ingest(conn, org, tb, both[:1], utc(2024, 5, 10))  # measure 0 first seen on the 10th
    ingest(conn, org, tb, both, utc(2024, 5, 15))  # measure 1: the 15th
    ingest(conn, org, tb, both, utc(2024, 5, 16))  # nothing moves
    first_seen = conn.execute(
        "SELECT measure_id, first_seen FROM active_series._series_history"
        " WHERE organization_id = %s ORDER BY measure_id",
        (org.id,),
    ).fetchall()
    assert first_seen == [(org.measures[0], utc(2024, 5, 10)), (org.measures[1], utc(2024, 5, 15))]
    assert_matches_oracle(conn, org.id)


def test_deleting_an_empty_variant_keeps_the_sets_without_its_series(conn):
    """A set holding another benchmark's empty variant and the deleted variant's benchmark with
    another variant holds none of the deleted series: the testbed's history is recorded again
    with that set as it was, and the set stays stored (its _shape_seen row refers to it)."""
    org = make_org(conn, benchmarks=2, measures=2)
    b0, b1 = org.benchmarks
    m0, m1 = org.measures
    tb0, tb1 = org.testbeds
    sized = make_variant(conn, b1, '{"size_mb": 16}')
    empty = make_variant(conn, b1, "{}")
    ingest(conn, org, tb0, [(b1, None, m0)])  # b1's empty variant
    ingest(conn, org, tb1, [(b0, None, m1), (b1, sized, m0)])  # a 0 and b1, not (b1, 0)
    ingest(conn, org, tb1, [(b0, None, m0)])  # testbed 1's set for the period: a third one
    assert_matches_oracle(conn, org.id)
    conn.execute("DELETE FROM active_series.variant WHERE id = %s", (empty,))
    assert_matches_oracle(conn, org.id)
    assert one(conn, "SELECT active_series.period_usage(%s)", (org.id,)) == 3
