"""The relay's posting rules are functions of the schema, the only writers of what they
write: the ledger row written pending before the call, the in-flight marks, the outcomes
and refusals (``_relay_ledger_*``), and an organization's relay state (done, deferred,
counted, parked: ``_relay_done``, ``_relay_defer``, ``_relay_count_attempt``,
``_relay_park``). The worker calls them and may not write those tables itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from oracle import make_org, one, utc

Conn = psycopg.Connection[Any]

JAN, FEB = utc(2026, 1), utc(2026, 2)
TS = 1767300000  # a second of January 2026

LEDGER = (
    "SELECT status, attempts, last_error, in_flight_until IS NOT NULL,"
    " in_flight_on IS NOT DISTINCT FROM active_series._relay_instance()"
    " FROM active_series._ledger WHERE identifier = %s"
)


@pytest.fixture
def worker(login: Callable[[str], str]) -> Iterator[Conn]:
    with psycopg.connect(login("worker"), autocommit=True) as w:
        yield w


def refused(conn: Conn, statement: str, params: Any = None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)


def ledger(conn: Conn, identifier: str) -> tuple[Any, ...]:
    row = conn.execute(LEDGER, (identifier,)).fetchone()
    assert row is not None, identifier
    return tuple(row)


def test_the_worker_writes_the_ledger_only_through_the_rules(conn: Conn, worker: Conn) -> None:
    org = make_org(conn, "ledger_rules").id
    refused(
        worker,
        "INSERT INTO active_series._ledger (organization_id, stripe_customer_id, period_start,"
        " period_end, value, event_timestamp, identifier)"
        " VALUES (%s, 'cus_l', %s, %s, 1, %s, 'as-forged')",
        (org, JAN, FEB, TS),
    )
    refused(worker, "UPDATE active_series._ledger SET status = 'sent'")
    refused(worker, "DELETE FROM active_series._ledger")

    # pending before the call: one row per post, in flight on this instance until its lease
    # ends; the identifiers come back in the order given, as _relay_identifier makes them
    idents = [
        r[0]
        for r in worker.execute(
            "SELECT * FROM active_series._relay_ledger_pending(%s::bigint[], %s::text[],"
            " %s::timestamptz[], %s::timestamptz[], %s::bigint[], %s::bigint[], %s::float8[])",
            (
                [org, org],
                ["cus_l", "cus_l"],
                [JAN, JAN],
                [FEB, FEB],
                [7, 5],
                [TS + 9, TS],
                [60, 60],
            ),
        ).fetchall()
    ]
    expected = [
        one(conn, "SELECT active_series._relay_identifier('cus_l', %s, %s)", (ts, v))
        for ts, v in ((TS + 9, 7), (TS, 5))
    ]
    assert idents == expected
    first, second = idents
    assert ledger(conn, first) == ("pending", 0, None, True, True)
    assert one(
        conn,
        "SELECT in_flight_until > clock_timestamp() + interval '50 seconds'"
        " FROM active_series._ledger WHERE identifier = %s",
        (first,),
    )

    # outcomes: sent (an attempt), not made (pending, no attempt, no call in flight any more)
    worker.execute(
        "SELECT active_series._relay_ledger_outcomes(%s::text[], %s::boolean[], %s::text[],"
        " %s::text[])",
        ([first, second], [True, False], ["sent", "pending"], [None, "not sent"]),
    )
    assert ledger(conn, first) == ("sent", 1, None, False, False)
    assert ledger(conn, second) == ("pending", 0, None, False, False)

    # in flight again before it is resent; then refused for good
    worker.execute(
        "SELECT active_series._relay_ledger_in_flight(%s::text[], %s::float8[])", ([second], [30])
    )
    assert ledger(conn, second) == ("pending", 0, None, True, True)
    worker.execute(
        "SELECT active_series._relay_ledger_outcomes(%s::text[], %s::boolean[], %s::text[],"
        " %s::text[])",
        ([second], [True], ["failed"], ["invalid"]),
    )
    assert ledger(conn, second) == ("failed", 1, "invalid", False, False)

    # a failed post written again is pending again; a sent one is left as it is
    worker.execute(
        "SELECT * FROM active_series._relay_ledger_pending(%s::bigint[], %s::text[],"
        " %s::timestamptz[], %s::timestamptz[], %s::bigint[], %s::bigint[], %s::float8[])",
        ([org, org], ["cus_l", "cus_l"], [JAN, JAN], [FEB, FEB], [7, 5], [TS + 9, TS], [60, 60]),
    )
    assert ledger(conn, first) == ("sent", 1, None, False, False)
    assert ledger(conn, second)[0] == "pending"

    # refused later: the sent post fails, returned once with its organization and reason
    rows = worker.execute(
        "SELECT org, identifier, reason"
        " FROM active_series._relay_ledger_refused(%s::text[], %s::text[])",
        ([first], ["no such customer"]),
    ).fetchall()
    assert rows == [(org, first, "no such customer")]
    assert ledger(conn, first)[:3] == ("failed", 1, "no such customer")
    assert (
        worker.execute(
            "SELECT * FROM active_series._relay_ledger_refused(%s::text[], %s::text[])",
            ([first], ["again"]),
        ).fetchall()
        == []
    )

    # a value that cannot be posted: recorded failed with the reason, under its identifier,
    # once
    for reason in ("too late", "again"):
        worker.execute(
            "SELECT active_series._relay_ledger_failed(%s, 'cus_l', %s, %s, 3, %s, %s)",
            (org, JAN, FEB, TS + 1, reason),
        )
    late = one(conn, "SELECT active_series._relay_identifier('cus_l', %s, 3)", (TS + 1,))
    assert ledger(conn, late) == ("failed", 0, "too late", False, False)


STATE = (
    "SELECT parked_at IS NOT NULL, parked_reason, next_attempt_at, attempts,"
    " last_event_timestamp FROM active_series._relay_state WHERE organization_id = %s"
)


def relay_state(conn: Conn, org: int) -> tuple[Any, ...]:
    row = conn.execute(STATE, (org,)).fetchone()
    assert row is not None, org
    return tuple(row)


def test_the_worker_writes_the_relay_state_only_through_the_rules(conn: Conn, worker: Conn) -> None:
    a, b, c = (make_org(conn, f"state_rules_{n}").id for n in "abc")
    for org in (a, b):
        conn.execute("INSERT INTO active_series._relay_state (organization_id) VALUES (%s)", (org,))
    for column in ("parked_at", "parked_reason", "next_attempt_at", "attempts"):
        refused(
            worker,
            f"UPDATE active_series._relay_state SET {column} = NULL WHERE organization_id = %s",
            (a,),
        )
    refused(
        worker,
        "INSERT INTO active_series._relay_state (organization_id, parked_at, parked_reason)"
        " VALUES (%s, now(), 'forged')",
        (c,),
    )
    refused(worker, "DELETE FROM active_series._relay_state")
    # (what _relay_work adds, and what _relay_claim's lock takes, it may still do)
    worker.execute("INSERT INTO active_series._relay_state (organization_id) VALUES (%s)", (c,))
    with worker.transaction():
        assert worker.execute("SELECT * FROM active_series._relay_claim(%s)", ([a],)).fetchall()

    # defer: no claim before the moment given
    until = utc(2099, 1).timestamp()
    worker.execute(
        "SELECT active_series._relay_defer(%s::bigint[], %s::float8[])", ([a, b], [until, until])
    )
    assert relay_state(conn, a)[2] == relay_state(conn, b)[2] == utc(2099, 1)
    assert (
        worker.execute("SELECT * FROM active_series._relay_claim(%s)", ([a, b],)).fetchall() == []
    )

    # failed attempts counted, one by one; an organization without a row: NULL
    counts = [one(worker, "SELECT active_series._relay_count_attempt(%s)", (a,)) for _ in range(2)]
    assert counts == [1, 2]
    assert one(worker, "SELECT active_series._relay_count_attempt(-2)") is None

    # done: attempts and backoff cleared, the newest event timestamp kept
    worker.execute(
        "SELECT active_series._relay_done(%s::bigint[], %s::bigint[])", ([a, b], [TS, TS])
    )
    worker.execute("SELECT active_series._relay_done(%s::bigint[], %s::bigint[])", ([a], [TS - 5]))
    assert relay_state(conn, a) == (False, None, None, 0, TS)

    # park: parked with the reason, no backoff; no claim takes it
    worker.execute("SELECT active_series._relay_defer(%s::bigint[], %s::float8[])", ([b], [until]))
    worker.execute("SELECT active_series._relay_park(%s, %s)", (b, "No such customer"))
    assert relay_state(conn, b) == (True, "No such customer", None, 0, TS)
    assert worker.execute("SELECT * FROM active_series._relay_claim(%s)", ([b],)).fetchall() == []


def test_the_worker_writes_the_requests_posts_only_through_the_rules(
    conn: Conn, worker: Conn
) -> None:
    refused(
        worker,
        "INSERT INTO active_series._post_attempt (idempotency_key, identifier)"
        " VALUES ('k-forged', 'as-x')",
    )
    refused(worker, "DELETE FROM active_series._post_attempt")
    refused(worker, "UPDATE active_series._post_attempt SET identifier = identifier")
    pairs = (["k-1", "k-1", "k-2"], ["as-a", "as-b", "as-a"])
    for _ in range(2):  # recorded once
        worker.execute("SELECT active_series._relay_note_attempts(%s::text[], %s::text[])", pairs)
    keys = "SELECT idempotency_key, identifier FROM active_series._post_attempt ORDER BY 1, 2"
    assert conn.execute(keys).fetchall() == list(zip(*pairs, strict=True))
    # kept 31 days
    conn.execute(
        "UPDATE active_series._post_attempt SET created = clock_timestamp()"
        " - interval '31 days 1 second' WHERE idempotency_key = 'k-1'"
    )
    worker.execute("SELECT active_series._relay_prune_attempts()")
    assert conn.execute(keys).fetchall() == [("k-2", "as-a")]
