"""Every SQL statement the command line sends: public functions and views only."""

from __future__ import annotations

from typing import Final

VERIFY: Final = "SELECT organization_id, problem, detail FROM active_series.verify(%s)"

# the current period's count
PERIOD_USAGE: Final = "SELECT active_series.period_usage(%s)"

COUNT_ACTIVE: Final = "SELECT active_series.count_active(%s, %s, %s, %s)"

# the current period of each organization, with its price and alert state (usage_summary)
USAGE: Final = """
SELECT * FROM (
    SELECT u.organization_id, u.organization_name, u.plan, u.stripe_customer_id,
           u.period_start, u.period_end, u.active_series, u.private_series, u.public_series,
           s.amount, s.currency, s.series_cap, s.next_alert, s.stripe_in_sync
    FROM active_series.usage AS u
    CROSS JOIN LATERAL active_series.usage_summary(u.organization_id) AS s
) AS usage
"""

USAGE_SUMMARY: Final = "SELECT * FROM active_series.usage_summary(%s)"

# the period starting at %(start)s (NULL: the current one) with its exact count
PERIOD: Final = """
WITH cur AS (SELECT period_start, period_end FROM active_series.current_period(%(org)s))
SELECT p.period_start, p.period_end, p.active_series
FROM active_series.periods(%(org)s) AS p
WHERE p.period_start = coalesce(%(start)s, (SELECT period_start FROM cur))
UNION ALL
SELECT c.period_start, c.period_end, 0::bigint
FROM cur AS c
WHERE coalesce(%(start)s, c.period_start) = c.period_start
    AND NOT EXISTS (SELECT FROM active_series.periods(%(org)s) AS p
                    WHERE p.period_start = c.period_start)
"""

PERIODS: Final = """
SELECT %(org)s::bigint AS organization_id, period_start, period_end, active_series
FROM active_series.periods(%(org)s)
ORDER BY period_start
"""

RECENT_PERIOD_STARTS: Final = """
SELECT period_start FROM active_series.periods(%s) ORDER BY 1 DESC LIMIT 3
"""

EXPLAIN: Final = """
SELECT p.name AS project, t.name AS testbed, b.name AS benchmark,
       v.parameters AS variant, m.name AS measure, s.first_seen, s.last_seen
FROM active_series.period_series(%s, %s) AS s
JOIN active_series.project AS p ON p.id = s.project_id
JOIN active_series.testbed AS t ON t.id = s.testbed_id
JOIN active_series.benchmark AS b ON b.id = s.benchmark_id
LEFT JOIN active_series.variant AS v ON v.id = s.variant_id
JOIN active_series.measure AS m ON m.id = s.measure_id
ORDER BY p.name, t.name, b.name, v.parameters::text, m.name
"""

BACKFILL: Final = "CALL active_series.backfill(%s)"

RELAY_STATUS: Final = """
SELECT organization_id, stripe_customer_id, plan, period_start, period_end, period_usage,
       stripe_value, stripe_value_status, in_sync, outbox_depth,
       oldest_unposted_change_age, parked, parked_reason, next_attempt_at, confirming,
       stripe_summary, stripe_summary_at
FROM active_series.relay_status
"""

RELAY_FAILURES: Final = """
SELECT organization_id, kind, ledger_id, period_start, value, reason, at
FROM active_series.relay_failures
"""

RELAY_RESUME: Final = "SELECT active_series.relay_resume(%s)"

# may this role claim relay work? (NULL: the schema is not installed, or is older)
RELAY_ALLOWED: Final = """
SELECT has_function_privilege(p, 'EXECUTE')
FROM (SELECT to_regprocedure('active_series._relay_work(interval, interval)') AS p) AS f
WHERE p IS NOT NULL
"""
