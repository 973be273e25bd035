"""Threshold alerts for a pipe or a webhook sender (``active-series alerts``).

Alerts are durable rows (the view ``active_series.alerts``) written by the ingest commit that
brings a period's count to a threshold. No NOTIFY comes with them (a notifying commit takes a
server-wide lock): ``follow`` reads the rows by id after the last one it printed, at every
poll interval, so nothing is missed, also across a reconnect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import psycopg

from active_series.cli.output import to_json

SINCE: Final = """
SELECT id, organization_id, organization_name, period_start, period_end, threshold,
       series_count, source, created
FROM active_series.alerts
WHERE id > %(after)s AND (%(org)s::bigint IS NULL OR organization_id = %(org)s)
ORDER BY id
"""

COLUMNS: Final = (
    "id",
    "organization_id",
    "organization_name",
    "period_start",
    "period_end",
    "threshold",
    "series_count",
    "source",
    "created",
)


def since(
    conn: psycopg.Connection[Any], after: int = 0, organization: int | None = None
) -> list[dict[str, Any]]:
    """The alerts with an id above ``after``, oldest first (of one organization, or all)."""
    rows = conn.execute(SINCE, {"after": after, "org": organization}).fetchall()
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def follow(
    conn: psycopg.Connection[Any],
    after: int = 0,
    organization: int | None = None,
    poll_interval: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[dict[str, Any]]:
    """Every alert with an id above ``after`` and then each new one, within a poll interval
    of its commit. ``conn`` must be in autocommit mode (each read sees the latest commits)."""
    while not stop():
        for alert in since(conn, after, organization):
            after = alert["id"]
            yield alert
        time.sleep(poll_interval)


def as_json(alert: dict[str, Any]) -> str:
    """One line of JSON (:func:`~active_series.cli.output.to_json`)."""
    return to_json(alert)


def as_text(alert: dict[str, Any]) -> str:
    return (
        f"alert {alert['id']}: organization {alert['organization_id']}"
        f" ({alert['organization_name']}) reached {alert['threshold']} active series"
        f" ({alert['series_count']} counted, {alert['source']}) in the period from"
        f" {alert['period_start'].isoformat()} at {alert['created'].isoformat()}"
    )
