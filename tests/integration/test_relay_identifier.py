"""The one definition of a meter event's identifier, which the worker calls."""

from __future__ import annotations

from typing import Any

import psycopg


def test_the_identifier_keeps_the_format_of_every_earlier_release(
    conn: psycopg.Connection[Any],
) -> None:
    # a post left pending by an older worker is resent with the identifier it was given
    row = conn.execute(
        "SELECT active_series._relay_identifier('cus_Abc123', 1764460800, 42)"
    ).fetchone()
    assert row == ("as-cus_Abc123-1764460800-42",)


def test_the_identifier_is_immutable_and_pins_its_search_path(
    conn: psycopg.Connection[Any],
) -> None:
    row = conn.execute(
        "SELECT provolatile, proconfig FROM pg_proc"
        " WHERE oid = 'active_series._relay_identifier(text, bigint, bigint)'::regprocedure"
    ).fetchone()
    assert row is not None
    volatile, config = row
    assert volatile == "i"
    assert config == ["search_path=active_series, pg_catalog, pg_temp"]
