"""The relay's state of a billing period lives in its own rows (``_relay_period``), keyed by
the period and written only through the relay's rule functions: the worker writes no column
of ``_period``; a period's row goes with it when set_billing_period re-buckets periods (kept
at the same start, removed with a period merged into another) and when the organization is
deleted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from oracle import Org, allow_explicit_created, ingest, make_org, one, utc

Conn = psycopg.Connection[Any]

STATE = (
    "SELECT period_start, period_end, closed_at IS NOT NULL, finalized_at IS NOT NULL,"
    " billed_value, drift_since IS NOT NULL"
    " FROM active_series._period NATURAL LEFT JOIN active_series._relay_period"
    " WHERE organization_id = %s ORDER BY period_start"
)


def state(conn: Conn, org: int) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(STATE, (org,)).fetchall()]


def monthly(conn: Conn, name: str, months: list[int]) -> Org:
    """An organization with one series more in each of the given months of 2026."""
    org = make_org(conn, name)
    allow_explicit_created(conn)
    pairs = [(b, m) for b in org.benchmarks for m in org.measures]
    for k, month in enumerate(months):
        ingest(conn, org, org.testbeds[0], pairs[: k + 1], utc(2026, month, 3))
    conn.execute("RESET active_series.allow_explicit_created")
    conn.execute("DELETE FROM active_series._outbox WHERE organization_id = %s", (org.id,))
    return org


def refused(conn: Conn, statement: str, params: Any = None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)


def test_the_worker_writes_the_period_state_only_through_the_rules(
    conn: Conn, login: Callable[[str], str]
) -> None:
    org = monthly(conn, "rules", [1, 2, 3])
    jan, feb, mar, apr = utc(2026, 1), utc(2026, 2), utc(2026, 3), utc(2026, 4)
    for column in ("period_start", "period_end"):
        assert not one(
            conn,
            "SELECT has_column_privilege('active_series_worker', 'active_series._period', %s,"
            " 'UPDATE')",
            (column,),
        )
    with psycopg.connect(login("worker"), autocommit=True) as w:
        refused(w, "UPDATE active_series._period SET period_end = period_end")
        refused(
            w,
            "INSERT INTO active_series._relay_period (organization_id, period_start, closed_at)"
            " VALUES (%s, %s, now())",
            (org.id, jan),
        )
        refused(w, "UPDATE active_series._relay_period SET closed_at = now()")
        refused(w, "DELETE FROM active_series._relay_period")

        # closed once; finalized once with what was billed (Feb's usage is 2: drift)
        w.execute("SELECT active_series._relay_close_period(%s, %s)", (org.id, jan))
        closed_at = one(conn, "SELECT closed_at FROM active_series._relay_period")
        w.execute("SELECT active_series._relay_close_period(%s, %s)", (org.id, jan))
        w.execute("SELECT active_series._relay_finalize_period(%s, %s, 5)", (org.id, feb))
        w.execute("SELECT active_series._relay_finalize_period(%s, %s, 2)", (org.id, feb))
        # a period that is not recorded gets no row
        w.execute("SELECT active_series._relay_close_period(%s, %s)", (org.id, apr))
        assert state(conn, org.id) == [
            (jan, feb, True, False, None, False),
            (feb, mar, True, True, 5, True),
            (mar, apr, False, False, None, False),
        ]
        assert one(conn, "SELECT closed_at FROM active_series._relay_period") == closed_at
        assert conn.execute(
            "SELECT period_start, billed, period_usage, difference FROM active_series.billing_drift"
        ).fetchall() == [(feb, 5, 2, -3)]

        # periods no invoice bills: finalized unbilled, returned with their usage
        assert w.execute(
            "SELECT * FROM active_series._relay_finalize_unbilled(%s, %s, %s)", (org.id, apr, mar)
        ).fetchall() == [(mar, apr, 3)]
        assert state(conn, org.id)[2] == (mar, apr, True, True, None, False)

        # a change to a finalized period: drift from the first change after which it differs
        w.execute("SELECT active_series._relay_finalize_period(%s, %s, 1)", (org.id, jan))
        allow_explicit_created(conn)
        ingest(conn, org, org.testbeds[1], [(org.benchmarks[2], org.measures[2])], utc(2026, 1, 9))
        changed = one(conn, "SELECT min(created) FROM active_series._outbox")
        w.execute("SELECT active_series._relay_note_drift(%s::bigint[])", ([org.id],))
        assert (
            one(
                conn,
                "SELECT drift_since FROM active_series._relay_period WHERE period_start = %s",
                (jan,),
            )
            == changed
        )


def test_a_periods_relay_row_follows_it_when_set_billing_period_re_buckets_periods(
    conn: Conn,
) -> None:
    org = monthly(conn, "moved", [1, 2, 3, 4])
    jan, feb, mar, apr, may, jun = (utc(2026, m) for m in (1, 2, 3, 4, 5, 6))
    conn.execute("SELECT active_series._relay_close_period(%s, %s)", (org.id, jan))
    conn.execute("SELECT active_series._relay_finalize_period(%s, %s, 2)", (org.id, feb))
    conn.execute("SELECT active_series._relay_finalize_period(%s, %s, 9)", (org.id, mar))
    conn.execute("SELECT active_series._relay_close_period(%s, %s)", (org.id, apr))

    # two-month periods from February: February and March become one period (February's
    # row stays with it, March's goes), April's period keeps its start and its row
    conn.execute("SELECT active_series.set_billing_period(%s, %s, %s)", (org.id, feb, apr))
    assert state(conn, org.id) == [
        (jan, feb, True, False, None, False),
        (feb, apr, True, True, 2, False),
        (apr, jun, True, False, None, False),
    ]
    assert one(conn, "SELECT count(*) FROM active_series._relay_period") == 3

    # a period split at a new start: the part before it keeps the row, the new one has none
    mid = utc(2026, 1, 15)
    conn.execute(
        "SELECT active_series.set_billing_period(%s, %s, %s)",
        (org.id, mid, mid + dt.timedelta(days=14)),
    )
    rows = state(conn, org.id)
    assert rows[0] == (jan, mid, True, False, None, False)
    assert all(not closed for _, _, closed, *_ in rows[1:])
    assert one(conn, "SELECT count(*) FROM active_series._relay_period") == 1

    # deleted with the organization's periods
    conn.execute("DELETE FROM active_series.organization WHERE id = %s", (org.id,))
    assert one(conn, "SELECT count(*) FROM active_series._relay_period") == 0
