CREATE FUNCTION active_series._relay_ledger_pending(
    p_organization_ids bigint[],
    p_customers text[],
    p_period_starts timestamptz[],
    p_period_ends timestamptz[],
    p_values bigint[],
    p_timestamps bigint[],
    p_leases float8[]
)
RETURNS SETOF text
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a post's ledger row is written pending, and committed, before its Stripe call,
-- so that a worker killed mid-call resends exactly the same identifier, value and
-- timestamp. Each row carries the deadline by which its call ends (now plus its lease, in
-- seconds) and the server instance the worker holds its claim on; a post already failed is
-- made pending again, one pending or sent is left as it is. Every post of a batch in one
-- call (the instance read once); returns the posts' identifiers in the order given.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    RETURN QUERY
    WITH i AS MATERIALIZED (SELECT active_series._relay_instance() AS instance),
    p AS MATERIALIZED (
        SELECT
            x.*,
            active_series._relay_identifier(x.customer, x.ts, x.value) AS identifier
        FROM unnest(
            p_organization_ids, p_customers, p_period_starts, p_period_ends, p_values,
            p_timestamps, p_leases
        ) WITH ORDINALITY
            AS x (organization_id, customer, period_start, period_end, value, ts, lease, n)
    ),
    w AS (
        INSERT INTO active_series._ledger AS l (
            organization_id, stripe_customer_id, period_start, period_end, value,
            event_timestamp, identifier, in_flight_until, in_flight_on
        )
        SELECT
            p.organization_id, p.customer, p.period_start, p.period_end, p.value, p.ts,
            p.identifier, clock_timestamp() + make_interval(secs => p.lease), i.instance
        FROM p CROSS JOIN i
        ON CONFLICT (identifier) DO UPDATE
        SET status = 'pending', updated = clock_timestamp(),
            in_flight_until = excluded.in_flight_until, in_flight_on = excluded.in_flight_on
        WHERE l.status = 'failed'
    )
    SELECT p.identifier FROM p ORDER BY p.n;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_pending(
    bigint[], text[], timestamptz[], timestamptz[], bigint[], bigint[], float8[]
) IS
'Internal (relay): write a batch of posts pending before their Stripe calls, each with its call''s deadline; returns their identifiers in the order given.';

CREATE FUNCTION active_series._relay_ledger_in_flight(
    p_identifiers text[],
    p_leases float8[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a pending post about to be sent again is marked in flight first (committed
-- before the call): the deadline by which its call ends (now plus its lease, in seconds)
-- and the server instance the worker holds its claim on. A claim on another instance
-- leaves its organization alone until then.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    UPDATE active_series._ledger AS l
    SET
        in_flight_until = clock_timestamp() + make_interval(secs => x.lease),
        in_flight_on = i.instance
    FROM unnest(p_identifiers, p_leases) AS x (identifier, lease)
    CROSS JOIN (SELECT active_series._relay_instance() AS instance) AS i
    WHERE l.identifier = x.identifier;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_in_flight(text[], float8[]) IS
'Internal (relay): mark pending posts in flight (their calls'' deadlines and the server instance) before they are sent again.';

CREATE FUNCTION active_series._relay_ledger_outcomes(
    p_identifiers text[],
    p_made boolean[],
    p_statuses text[],
    p_errors text[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: the outcome of each call of a round is recorded on its post: sent (Stripe
-- accepted it), failed (refused for good), or pending again (no answer, or the call was
-- not made: a later claim resends it). A call made counts as an attempt and its error, if
-- any, is kept; no call of the round is in flight any more.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    UPDATE active_series._ledger AS l
    SET
        status = o.status,
        attempts = l.attempts + o.made::integer,
        last_error = CASE WHEN o.made THEN o.error ELSE l.last_error END,
        updated = clock_timestamp(),
        in_flight_until = NULL,
        in_flight_on = NULL
    FROM unnest(p_identifiers, p_made, p_statuses, p_errors)
        AS o (identifier, made, status, error)
    WHERE l.identifier = o.identifier;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_outcomes(text[], boolean[], text[], text[]) IS
'Internal (relay): record the outcomes of a round of calls (sent, failed, or pending again); none is in flight any more.';

CREATE FUNCTION active_series._relay_ledger_failed(
    p_organization_id bigint,
    p_customer text,
    p_period_start timestamptz,
    p_period_end timestamptz,
    p_value bigint,
    p_timestamp bigint,
    p_error text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a value that cannot be posted (no timestamp inside its period is left within
-- Stripe's limits) is recorded failed, with the reason, under the identifier its post would
-- have had; a post already recorded under that identifier is left as it is.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._ledger (
        organization_id, stripe_customer_id, period_start, period_end, value,
        event_timestamp, identifier, status, last_error
    )
    VALUES (
        p_organization_id, p_customer, p_period_start, p_period_end, p_value, p_timestamp,
        active_series._relay_identifier(p_customer, p_timestamp, p_value), 'failed', p_error
    )
    ON CONFLICT (identifier) DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_failed(
    bigint, text, timestamptz, timestamptz, bigint, bigint, text
) IS
'Internal (relay): record a value that cannot be posted as a failed post, with the reason.';

CREATE FUNCTION active_series._relay_ledger_refused(
    p_identifiers text[],
    p_errors text[]
)
RETURNS TABLE (org bigint, identifier text, reason text)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a post Stripe accepted and refused later (its error reports, v1 and v2) failed
-- after all: it is marked failed with the reason. Returns the posts so marked (those not
-- failed already): their organizations, identifiers and reasons.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    RETURN QUERY
    UPDATE active_series._ledger AS l
    SET status = 'failed', last_error = o.error, updated = clock_timestamp()
    FROM unnest(p_identifiers, p_errors) AS o (identifier, error)
    WHERE l.identifier = o.identifier AND l.status <> 'failed'
    RETURNING l.organization_id, l.identifier, o.error;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_refused(text[], text[]) IS
'Internal (relay): mark failed the posts Stripe refused after accepting them; returns those marked.';
