"""Every SQL statement the demo sends: plain ingest into the data model, and reads of the
public functions and views only."""

from __future__ import annotations

from typing import Final

NEW_ORGANIZATION: Final = "INSERT INTO active_series.organization (name) VALUES (%s) RETURNING id"

NEW_PROJECT: Final = """
INSERT INTO active_series.project (organization_id, name, visibility)
VALUES (%s, %s, 'private') RETURNING id
"""

# the testbed, benchmark or measure tables: project_id and name
NEW_NAMED: Final = "INSERT INTO active_series.{} (project_id, name) VALUES (%s, %s) RETURNING id"

SET_BILLING_PERIOD: Final = (
    "SELECT active_series.set_billing_period(%s, to_timestamp(%s), to_timestamp(%s))"
)

NEW_REPORT: Final = """
INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)
VALUES (%s, %s, now() - interval '1 minute', now()) RETURNING id
"""

NEW_REPORT_BENCHMARK: Final = """
INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
VALUES (%s, %s, 0) RETURNING id
"""

NEW_METRIC: Final = """
INSERT INTO active_series.metric (report_benchmark_id, measure_id, value) VALUES (%s, %s, %s)
"""

CURRENT: Final = """
SELECT c.period_start, c.period_end, active_series.period_usage(%s)
FROM active_series.current_period(%s) AS c
"""

CLOSED_PERIODS: Final = """
SELECT organization_id, period_start, period_usage
FROM active_series.relay_periods
WHERE closed_at IS NOT NULL
ORDER BY closed_at
"""

# changes not yet relayed, posts of unknown outcome, ended periods not yet closed
UNSETTLED: Final = """
SELECT (SELECT coalesce(sum(outbox_depth), 0) FROM active_series.relay_status)
    + (SELECT count(*) FROM active_series.relay_periods
       WHERE stripe_value_status = 'pending'
           OR (closed_at IS NULL AND period_end <= clock_timestamp()))
"""

PERIODS: Final = """
SELECT period_start, period_end, active_series FROM active_series.periods(%s)
ORDER BY period_start
"""

# when the worker closed each of an organization's periods (NULL: not yet)
PERIOD_CLOSES: Final = """
SELECT period_start, closed_at FROM active_series.relay_periods WHERE organization_id = %s
"""
