"""Every SQL statement the relay sends, in one place (the CLI's are in ``cli/queries.py``).

The work itself lives in the schema's functions (``_relay_work``, ``_relay_claim``,
``_relay_held``, ...); these are the calls and the few plain statements around them.
Times cross the wire as Unix seconds (``float8``) so Python never does calendar math.
"""

from __future__ import annotations

from typing import Final

# -- discovery (autocommit connection) ---------------------------------------------------
WORK: Final = """
SELECT organization_id
FROM active_series._relay_work(make_interval(secs => %s), make_interval(secs => %s))
"""

NEXT_WAKEUP: Final = """
SELECT extract(EPOCH FROM active_series._relay_next_wakeup(
    make_interval(secs => %s), make_interval(secs => %s)
))::float8
"""

GAUGES: Final = """
SELECT
    (SELECT count(*) FROM active_series._outbox) AS outbox_depth,
    (SELECT extract(EPOCH FROM clock_timestamp() - min(o.created))::float8
        FROM active_series._outbox AS o) AS oldest_change_age,
    (SELECT count(*) FROM active_series._relay_state WHERE parked_at IS NOT NULL) AS parked,
    (SELECT count(*) FROM active_series.billing_drift) AS drift
"""

# -- claim transaction (one per batch of organizations, on the claim connection) ---------
# Rows of several columns are read by name: each statement's columns are named as the
# fields of the record it is read into (confirm.Claim, confirm.Period, ...).
CLAIM: Final = """
SELECT organization_id AS org, stripe_customer_id AS customer, billed,
       max_outbox_id AS max_outbox, extract(EPOCH FROM oldest_change)::float8 AS oldest_change
FROM active_series._relay_claim(%s)
"""

# the pending posts of the claimed organizations, and (in_flight_until) until when a call of one
# may still be in flight: one whose worker held its claim on another server instance (it lost
# the claim to a promotion or a restart, and may be alive and calling); on this instance the
# claim's row lock is gone only with the worker's session
PENDING_POSTS: Final = """
SELECT organization_id AS org, stripe_customer_id AS customer, value,
       event_timestamp AS timestamp, identifier,
       CASE
           WHEN in_flight_until > clock_timestamp()
               AND in_flight_on IS DISTINCT FROM active_series._relay_instance()
               THEN extract(EPOCH FROM in_flight_until)::float8
       END AS in_flight_until
FROM active_series._ledger
WHERE organization_id = ANY(%s) AND status = 'pending'
ORDER BY organization_id, event_timestamp, id
"""

PLAN: Final = """
SELECT organization_id AS org, period_start AS start, period_end AS "end", phase, usage,
       coalesce(held_value, 0) AS held, held_status, next_timestamp AS next_ts,
       due_second AS due, first_second, last_second,
       floor(extract(EPOCH FROM clock_timestamp()))::bigint AS now
FROM active_series._relay_plan(%s, make_interval(secs => %s), make_interval(secs => %s))
"""

# (organization, newest outbox id) pairs: the outbox rows each claim accounted for
DELETE_OUTBOX: Final = """
DELETE FROM active_series._outbox AS o
USING unnest(%s::bigint[], %s::bigint[]) AS d (organization_id, max_id)
WHERE o.organization_id = d.organization_id AND o.id <= d.max_id
"""

# the rules of a period's state (_relay_period), each a function of the schema: a change to
# a finalized period (since when its usage differs from what was billed), closing, and
# finalizing (Stripe bills what it held; billed NULL: the organization was not billed)
NOTE_DRIFT: Final = "SELECT active_series._relay_note_drift(%s::bigint[])"

CLOSE_PERIOD: Final = "SELECT active_series._relay_close_period(%s, %s)"

FINALIZE_PERIOD: Final = (
    "SELECT active_series._relay_finalize_period(%(org)s, %(start)s, %(billed)s::bigint)"
)

# an organization's relay state (_relay_state), written through the rules of the schema
# only: (organization, newest event timestamp accepted) pairs relayed; an organization
# backing off until a moment (organization, Unix seconds); a failed attempt counted (returns
# the count); an organization parked (organization, reason)
STATE_DONE: Final = "SELECT active_series._relay_done(%s::bigint[], %s::bigint[])"

STATE_DEFER: Final = "SELECT active_series._relay_defer(ARRAY[%s::bigint], ARRAY[%s::float8])"

# (organization, Unix second) pairs: organizations whose next post must wait for its second
STATE_DEFER_UNTIL: Final = "SELECT active_series._relay_defer(%s::bigint[], %s::float8[])"

# the first statement of a failed attempt; its backoff is then set with STATE_DEFER
STATE_COUNT_ATTEMPT: Final = "SELECT active_series._relay_count_attempt(%s)"

STATE_PARK: Final = "SELECT active_series._relay_park(%s, %s)"

# -- ledger (autocommit connection: committed before the Stripe call) --------------------
# the ledger's rules, each a function of the schema (_relay_ledger_*): the worker writes the
# ledger through them only. Every post of a batch, written pending in one call, each with
# the seconds until its call's deadline; returns the posts' identifiers, in the order given
LEDGER_PENDING: Final = """
SELECT * FROM active_series._relay_ledger_pending(
    %s::bigint[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::bigint[], %s::bigint[],
    %s::float8[]
)
"""

# pending posts about to be resent: (identifier, seconds until the call's deadline) pairs
LEDGER_IN_FLIGHT: Final = "SELECT active_series._relay_ledger_in_flight(%s::text[], %s::float8[])"

# a value that cannot be posted: recorded failed with the reason, under the identifier its
# post would have had (organization, customer, period start, end, value, timestamp, reason)
LEDGER_FAILED_NEW: Final = "SELECT active_series._relay_ledger_failed(%s, %s, %s, %s, %s, %s, %s)"

# outcomes of a round of calls: (identifier, made, status, error) tuples; status sent or
# failed, or pending for an attempt that failed without an answer or a call not made (resent
# later); no call is in flight any more
LEDGER_OUTCOMES: Final = (
    "SELECT active_series._relay_ledger_outcomes(%s::text[], %s::boolean[], %s::text[], %s::text[])"
)

# (idempotency key, identifier) pairs: the posts each request about to be made carries
ATTEMPTS_NEW: Final = "SELECT active_series._relay_note_attempts(%s::text[], %s::text[])"

# the keys of requests made more than 31 days ago: no error report can name them any more
ATTEMPTS_PRUNE: Final = "SELECT active_series._relay_prune_attempts()"

# the posts the requests of the given idempotency keys carried: key, organization,
# identifier, customer, event timestamp, and when the request was made (Unix seconds)
ATTEMPTS_POSTS: Final = """
SELECT a.idempotency_key AS key, l.organization_id AS org, l.identifier,
       l.stripe_customer_id AS customer, l.event_timestamp AS timestamp,
       extract(EPOCH FROM a.created)::float8 AS sent_at
FROM active_series._post_attempt AS a
JOIN active_series._ledger AS l ON l.identifier = a.identifier
WHERE a.idempotency_key = ANY(%s)
ORDER BY a.idempotency_key, l.organization_id, l.event_timestamp
"""

# refusals reported later (error reports, v1 and v2): the post failed after all
LEDGER_REFUSED_LATER: Final = """
SELECT org, identifier, reason FROM active_series._relay_ledger_refused(%s::text[], %s::text[])
"""

# -- billing periods from the Stripe subscription ----------------------------------------
CURRENT_BOUNDS: Final = """
SELECT extract(EPOCH FROM period_start)::float8 AS start,
       extract(EPOCH FROM period_end)::float8 AS "end"
FROM active_series.current_period(%s)
"""

# (organization, subscription start, end of the customer's previous subscription or NULL):
# the unfinalized periods that ended at or before the subscription began, and began at or
# after the previous one ended, finalized without a post (no invoice bills them)
SKIP_BEFORE_SUBSCRIPTION: Final = """
SELECT period_start, period_end, usage
FROM active_series._relay_finalize_unbilled(%s, to_timestamp(%s), to_timestamp(%s::float8))
"""

SET_BILLING_PERIOD: Final = (
    "SELECT active_series.set_billing_period(%s, to_timestamp(%s), to_timestamp(%s))"
)
# -- the metered price, read with the subscription (prices.py) ---------------------------
STORE_PRICE: Final = "SELECT active_series._store_price(%s, %s, %s)"

# -- what Stripe holds, read from the meter's event summaries (_relay_confirmation) ------
# per period given (organization, start, end, customer): what a summary read must find to
# confirm its last post (_relay_expected: the post, the window, the value expected, whether
# a later post shares the window) and the period's last read (whether one is due, for which
# post, what it held, when); in the order given
CONFIRM_STATE: Final = """
SELECT
    x.organization_id AS org, x.period_start AS start,
    h.event_timestamp AS held_ts, h.value AS held_value, h.status AS held_status,
    h.sent AS held_sent, h.window_start, h.window_end, h.expected,
    c.organization_id IS NOT NULL AS has_row,
    coalesce(c.due_at <= clock_timestamp(), FALSE) AS due,
    c.event_timestamp AS read_ts, c.stripe_value AS read_stripe, c.ledger_value AS read_ledger,
    extract(EPOCH FROM c.read_at)::float8 AS read_at,
    coalesce(c.reposts, 0) AS reposts,
    extract(EPOCH FROM clock_timestamp())::float8 AS now,
    h.shared
FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::text[])
    WITH ORDINALITY AS x (organization_id, period_start, period_end, customer, n)
LEFT JOIN active_series._relay_confirmation AS c
    ON x.organization_id = c.organization_id AND x.period_start = c.period_start
CROSS JOIN LATERAL active_series._relay_expected(x.customer, x.period_start, x.period_end) AS h
ORDER BY x.n
"""

# posts Stripe accepted (identifiers): their periods' summaries are read once they have
# settled, %(after)s seconds from now doubled for each post made again since Stripe last
# agreed (RelayConfig.confirm_delay, written out)
CONFIRM_SCHEDULE: Final = """
INSERT INTO active_series._relay_confirmation AS c (
    organization_id, period_start, period_end, stripe_customer_id, due_at
)
SELECT DISTINCT ON (l.organization_id, l.period_start)
    l.organization_id, l.period_start, l.period_end, l.stripe_customer_id,
    clock_timestamp() + make_interval(secs => %(after)s)
FROM active_series._ledger AS l
WHERE l.identifier = ANY(%(idents)s) AND l.status = 'sent'
ORDER BY l.organization_id, l.period_start, l.event_timestamp DESC
ON CONFLICT (organization_id, period_start) DO UPDATE
SET due_at = clock_timestamp() + make_interval(
    secs => least(%(after)s * power(2, least(c.reposts, 16)), greatest(%(longest)s, %(after)s))
)
RETURNING c.organization_id, c.period_start
"""

# of the given (organization, period start) pairs, those whose last post the summary has not
# confirmed yet and whose read is due, not parked: how many, and the seconds to the nearest
# moment one may be read (its due time, or its organization's backoff if later)
CONFIRM_WAITING: Final = """
SELECT
    count(*) AS waiting,
    extract(
        EPOCH FROM min(greatest(c.due_at, s.next_attempt_at)) - clock_timestamp()
    )::float8 AS next_in
FROM unnest(%s::bigint[], %s::timestamptz[]) AS x (organization_id, period_start)
INNER JOIN active_series.relay_periods AS r
    ON x.organization_id = r.organization_id AND x.period_start = r.period_start
INNER JOIN active_series._relay_confirmation AS c
    ON x.organization_id = c.organization_id AND x.period_start = c.period_start
LEFT JOIN active_series._relay_state AS s ON x.organization_id = s.organization_id
WHERE r.confirming AND c.due_at IS NOT NULL AND s.parked_at IS NULL
"""

# a read of a period's summary: (stripe value, ledger value, the post it confirms or NULL,
# window start, window end, reposts since Stripe last agreed, next due as Unix seconds or
# NULL, organization, period start, the read's lease or NULL); a read made off the claim
# (CONFIRM_LEASE) is recorded only while its lease holds: a post made since rescheduled the
# read, and the result, of an earlier post, is dropped
CONFIRM_READ: Final = """
UPDATE active_series._relay_confirmation
SET stripe_value = %s, ledger_value = %s, event_timestamp = %s, window_start = %s,
    window_end = %s, read_at = clock_timestamp(), last_error = NULL,
    reposts = %s,
    due_at = to_timestamp(%s::float8)
WHERE
    organization_id = %s AND period_start = %s
    AND due_at IS NOT DISTINCT FROM coalesce(%s::timestamptz, due_at)
"""

# the claimed organizations' due reads, among the periods of the plan given (organization,
# period start); the due reads of their periods that the plan no longer has (finalized, or
# re-bucketed by set_billing_period) are dropped
CONFIRM_DUE: Final = """
WITH x AS (
    SELECT * FROM unnest(%s::bigint[], %s::timestamptz[]) AS x (organization_id, period_start)
),
dropped AS (
    UPDATE active_series._relay_confirmation AS c
    SET due_at = NULL
    WHERE
        c.organization_id = ANY(%s::bigint[]) AND c.due_at IS NOT NULL
        AND NOT EXISTS (
            SELECT FROM x
            WHERE x.organization_id = c.organization_id AND x.period_start = c.period_start
        )
)
SELECT c.organization_id, c.period_start
FROM active_series._relay_confirmation AS c
INNER JOIN x ON c.organization_id = x.organization_id AND c.period_start = x.period_start
WHERE c.due_at <= clock_timestamp()
"""

# the summary reads due that need no claim, handed out off the claims (at most %(limit)s,
# soonest due first): a period whose last post is sent, not to finalize (its end plus
# %(invoice_grace)s not passed: a claim reads it and finalizes it with what Stripe held), not
# shared with a later period's posts, and not read differing from that post (a claim posts
# it again), of an organization neither parked nor backing off. Each is leased for
# %(lease)s seconds (CONFIRM_LEASE) in the same statement (a worker leases only what no
# other leased meanwhile) and returned as (organization, period start, period end,
# customer, the lease) and the columns of CONFIRM_STATE
CONFIRM_PICK: Final = """
WITH due AS (
    SELECT c.organization_id, c.period_start, c.period_end, c.stripe_customer_id AS customer
    FROM active_series._relay_confirmation AS c
    LEFT JOIN active_series._relay_state AS s ON c.organization_id = s.organization_id
    WHERE
        c.due_at <= clock_timestamp()
        AND c.period_end + make_interval(secs => %(invoice_grace)s) > clock_timestamp()
        AND s.parked_at IS NULL
        AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= clock_timestamp())
    ORDER BY c.due_at
    LIMIT %(limit)s
),
st AS (
    SELECT
        x.organization_id, x.period_start, x.period_end, x.customer,
        h.event_timestamp, h.value, h.status, h.sent,
        h.window_start, h.window_end, h.expected, h.shared
    FROM due AS x
    CROSS JOIN LATERAL active_series._relay_expected(x.customer, x.period_start, x.period_end) AS h
),
leased AS (
    UPDATE active_series._relay_confirmation AS c
    SET due_at = clock_timestamp() + make_interval(secs => %(lease)s)
    FROM st
    WHERE
        c.organization_id = st.organization_id AND c.period_start = st.period_start
        AND c.due_at <= clock_timestamp()
        AND st.status = 'sent' AND NOT st.shared
        AND (c.event_timestamp IS DISTINCT FROM st.event_timestamp
            OR c.stripe_value IS NOT DISTINCT FROM c.ledger_value)
    RETURNING
        c.organization_id, c.period_start, c.due_at,
        c.event_timestamp, c.stripe_value, c.ledger_value,
        extract(EPOCH FROM c.read_at)::float8 AS read_at, c.reposts
)
SELECT
    st.organization_id AS org, st.period_start AS start, st.period_end, st.customer,
    leased.due_at AS lease,
    st.event_timestamp AS held_ts, st.value AS held_value, st.status AS held_status,
    st.sent AS held_sent,
    st.window_start, st.window_end, st.expected,
    TRUE AS has_row, TRUE AS due,
    leased.event_timestamp AS read_ts, leased.stripe_value AS read_stripe,
    leased.ledger_value AS read_ledger, leased.read_at, leased.reposts,
    extract(EPOCH FROM clock_timestamp())::float8 AS now,
    st.shared
FROM st
INNER JOIN leased
    ON st.organization_id = leased.organization_id AND st.period_start = leased.period_start
"""

# reads handed to the worker's summary readers (organization, period start, seconds): not
# due for that long (nor for another worker) unless a post reschedules them; the due time
# returned is the read's lease (CONFIRM_READ, CONFIRM_FAILED)
CONFIRM_LEASE: Final = """
UPDATE active_series._relay_confirmation AS c
SET due_at = clock_timestamp() + make_interval(secs => %s)
FROM unnest(%s::bigint[], %s::timestamptz[]) AS x (organization_id, period_start)
WHERE c.organization_id = x.organization_id AND c.period_start = x.period_start
RETURNING c.organization_id, c.period_start, c.due_at
"""

# a read that failed (error, next due as Unix seconds, organization, period start, the
# read's lease or NULL: as CONFIRM_READ); a period without a row yet (its posts predate the
# reads, or were made without the worker) gets one
CONFIRM_FAILED: Final = """
INSERT INTO active_series._relay_confirmation AS c (
    organization_id, period_start, period_end, stripe_customer_id, due_at, last_error
)
VALUES (%(org)s, %(start)s, %(end)s, %(customer)s, to_timestamp(%(due)s::float8), %(error)s)
ON CONFLICT (organization_id, period_start) DO UPDATE
SET last_error = excluded.last_error, due_at = excluded.due_at
WHERE c.due_at IS NOT DISTINCT FROM coalesce(%(lease)s::timestamptz, c.due_at)
"""

# a period with no row yet, read for the first time (its posts predate the reads)
CONFIRM_NEW: Final = """
INSERT INTO active_series._relay_confirmation (
    organization_id, period_start, period_end, stripe_customer_id
)
VALUES (%s, %s, %s, %s)
ON CONFLICT (organization_id, period_start) DO NOTHING
"""

# nothing to read for these (organization, period start) pairs any more
CONFIRM_NOT_DUE: Final = """
UPDATE active_series._relay_confirmation AS c
SET due_at = NULL
FROM unnest(%s::bigint[], %s::timestamptz[]) AS x (organization_id, period_start)
WHERE c.organization_id = x.organization_id AND c.period_start = x.period_start
"""

# -- the subscription's edges (posting.py: Poster.sync_subscriptions, Poster.edges) --------
# (organization, customer, ended, cancel_at, billed_since, price, started, prior end): as the
# last read saw them
SUBSCRIPTION_EDGES_SET: Final = """
INSERT INTO active_series._relay_subscription AS r (
    organization_id, stripe_customer_id, ended_at, cancel_at, billed_since, stripe_price_id,
    started_at, prior_ended_at
)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (organization_id) DO UPDATE
SET stripe_customer_id = excluded.stripe_customer_id, ended_at = excluded.ended_at,
    cancel_at = excluded.cancel_at, billed_since = excluded.billed_since,
    stripe_price_id = excluded.stripe_price_id, started_at = excluded.started_at,
    prior_ended_at = excluded.prior_ended_at, read_at = now()
"""

# the recorded edges of the claimed organizations: (organization, customer) pairs, the rows
# of another customer than the one claimed ignored
SUBSCRIPTION_EDGES: Final = """
SELECT
    r.organization_id AS org, r.ended_at AS ended, r.cancel_at, r.billed_since AS since,
    r.stripe_price_id AS price, r.started_at AS started, r.prior_ended_at AS prior_end
FROM active_series._relay_subscription AS r
JOIN unnest(%s::bigint[], %s::text[]) AS c (organization_id, customer)
    ON r.organization_id = c.organization_id AND r.stripe_customer_id = c.customer
"""

# (recheck seconds, at most this many): the billed organizations whose customer's
# subscriptions no worker has read for that long (or ever, since the organization was first
# relayed), not parked or backing off; the longest unread first. Claimed without a change, so
# that a cancellation or a price change is seen without activity (Poster.rechecks)
RECHECK_DUE: Final = """
SELECT s.organization_id
FROM active_series._relay_state AS s
INNER JOIN active_series.billing_account AS b ON s.organization_id = b.organization_id
LEFT JOIN active_series._relay_subscription AS r
    ON s.organization_id = r.organization_id AND b.stripe_customer_id = r.stripe_customer_id
WHERE
    b.stripe_customer_id IS NOT NULL AND coalesce(b.plan, 'free') <> 'free'
    AND s.parked_at IS NULL AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now())
    AND (r.read_at IS NULL OR r.read_at <= now() - make_interval(secs => %s))
ORDER BY r.read_at NULLS FIRST, s.organization_id
LIMIT %s
"""

# what Stripe holds of a customer's posts within [first, last] seconds (the part of a
# period a subscription bills): the newest post not refused, its status and timestamp
HELD_WITHIN: Final = """
SELECT l.value, l.status, l.event_timestamp AS timestamp
FROM active_series._ledger AS l
WHERE l.stripe_customer_id = %s AND l.status <> 'failed'
    AND l.event_timestamp BETWEEN %s AND %s
ORDER BY l.event_timestamp DESC
LIMIT 1
"""

# the next post's timestamp and due second within a period, after the held one
NEXT_TIMESTAMP: Final = "SELECT * FROM active_series._relay_timestamp(%s, %s, %s, %s)"
