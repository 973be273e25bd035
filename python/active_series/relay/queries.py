"""Every SQL statement the relay sends, in one place (the CLI's are in ``cli/queries.py``).

The work itself lives in the schema's functions (``_relay_work``, ``_relay_claim``,
``_relay_held``, ...); these are the calls and the few plain statements around them.
Times cross the wire as Unix seconds (``float8``) so Python never does calendar math.
"""

from __future__ import annotations

from typing import Final

# -- discovery (autocommit connection) ---------------------------------------------------
WORK: Final = "SELECT organization_id FROM active_series._relay_work(make_interval(secs => %s))"

NEXT_WAKEUP: Final = """
SELECT extract(EPOCH FROM active_series._relay_next_wakeup(make_interval(secs => %s)))::float8
"""

GAUGES: Final = """
SELECT
    (SELECT count(*) FROM active_series._outbox),
    (SELECT extract(EPOCH FROM clock_timestamp() - min(o.created))::float8
        FROM active_series._outbox AS o),
    (SELECT count(*) FROM active_series._relay_state WHERE parked_at IS NOT NULL)
"""

# -- claim transaction (one per organization, on the claim connection) -------------------
CLAIM: Final = """
SELECT stripe_customer_id, billed, max_outbox_id,
       extract(EPOCH FROM oldest_change)::float8
FROM active_series._relay_claim(%s)
"""

NOW: Final = "SELECT extract(EPOCH FROM clock_timestamp())::float8"

DELETE_OUTBOX: Final = """
DELETE FROM active_series._outbox WHERE organization_id = %s AND id <= %s
"""

PENDING_POSTS: Final = """
SELECT id, stripe_customer_id, extract(EPOCH FROM period_start)::float8, value,
       event_timestamp, identifier
FROM active_series._ledger
WHERE organization_id = %s AND status = 'pending'
ORDER BY event_timestamp, id
"""

# unclosed periods that have ended, oldest first, with their whole-second event window
ENDED_PERIODS: Final = """
SELECT p.period_start, p.period_end, extract(EPOCH FROM p.period_end)::float8,
       w.first_second, w.last_second
FROM active_series._period AS p
CROSS JOIN active_series._relay_window(p.period_start, p.period_end) AS w
WHERE p.organization_id = %s AND p.closed_at IS NULL AND p.period_end <= clock_timestamp()
ORDER BY p.period_start
"""

CLOSE_ENDED_PERIODS: Final = """
UPDATE active_series._period SET closed_at = clock_timestamp()
WHERE organization_id = %s AND closed_at IS NULL
    AND period_end + make_interval(secs => %s) <= clock_timestamp()
"""

CLOSE_PERIOD: Final = """
UPDATE active_series._period SET closed_at = clock_timestamp()
WHERE organization_id = %s AND period_start = %s AND closed_at IS NULL
"""

CURRENT_PERIOD: Final = """
SELECT c.period_start, c.period_end, w.first_second, w.last_second
FROM active_series._period_at(%s, clock_timestamp()) AS c
CROSS JOIN active_series._relay_window(c.period_start, c.period_end) AS w
"""

USAGE: Final = "SELECT active_series.period_usage(%s, %s)"

HELD: Final = "SELECT value, status FROM active_series._relay_held(%s, %s, %s)"

LAST_TIMESTAMP: Final = "SELECT active_series._relay_last_timestamp(%s)"

STATE_DONE: Final = """
UPDATE active_series._relay_state
SET attempts = 0, next_attempt_at = NULL, updated_at = now(),
    last_event_timestamp = greatest(last_event_timestamp, %s)
WHERE organization_id = %s
"""

STATE_DEFER: Final = """
UPDATE active_series._relay_state
SET next_attempt_at = to_timestamp(%s), updated_at = now(),
    last_event_timestamp = greatest(last_event_timestamp, %s)
WHERE organization_id = %s
"""

# the first statement of a failed attempt; its backoff is then set with STATE_DEFER
STATE_COUNT_ATTEMPT: Final = """
UPDATE active_series._relay_state
SET attempts = attempts + 1, updated_at = now()
WHERE organization_id = %s
RETURNING attempts
"""

STATE_PARK: Final = """
UPDATE active_series._relay_state
SET parked_at = now(), parked_reason = %s, next_attempt_at = NULL, updated_at = now()
WHERE organization_id = %s
"""

# -- ledger (autocommit connection: committed before the Stripe call) --------------------
IDENTIFIER: Final = "SELECT active_series._relay_identifier(%s, %s, %s)"

LEDGER_PENDING: Final = """
INSERT INTO active_series._ledger AS l (
    organization_id, stripe_customer_id, period_start, period_end, value, event_timestamp,
    identifier
)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (identifier) DO UPDATE
SET status = 'pending', updated = clock_timestamp()
WHERE l.status = 'failed'
"""

LEDGER_FAILED_NEW: Final = """
INSERT INTO active_series._ledger AS l (
    organization_id, stripe_customer_id, period_start, period_end, value, event_timestamp,
    identifier, status, last_error
)
VALUES (%s, %s, %s, %s, %s, %s, %s, 'failed', %s)
ON CONFLICT (identifier) DO NOTHING
"""

LEDGER_SENT: Final = """
UPDATE active_series._ledger
SET status = 'sent', attempts = attempts + 1, last_error = %s, updated = clock_timestamp()
WHERE identifier = %s
"""

LEDGER_ATTEMPT_FAILED: Final = """
UPDATE active_series._ledger
SET attempts = attempts + 1, last_error = %s, updated = clock_timestamp()
WHERE identifier = %s
"""

LEDGER_REFUSED: Final = """
UPDATE active_series._ledger
SET status = 'failed', attempts = attempts + 1, last_error = %s, updated = clock_timestamp()
WHERE identifier = %s
"""

# -- billing periods from the Stripe subscription ----------------------------------------
CURRENT_BOUNDS: Final = """
SELECT extract(EPOCH FROM period_start)::float8, extract(EPOCH FROM period_end)::float8
FROM active_series.current_period(%s)
"""

SET_BILLING_PERIOD: Final = (
    "SELECT active_series.set_billing_period(%s, to_timestamp(%s), to_timestamp(%s))"
)
# -- the metered price, read with the subscription (prices.py) ---------------------------
STORE_PRICE: Final = "SELECT active_series._store_price(%s, %s, %s)"
