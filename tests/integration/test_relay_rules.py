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
