CREATE FUNCTION active_series._relay_done(
    p_organization_ids bigint[],
    p_timestamps bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: an organization whose claim relayed what it had (its posts accepted, or
-- nothing to post) starts afresh: no failed attempt counted, no backoff; it remembers the
-- newest event timestamp Stripe accepted (never an older one). Given as (organization,
-- event timestamp) pairs.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_state AS s
    SET
        attempts = 0,
        next_attempt_at = NULL,
        updated_at = now(),
        last_event_timestamp = greatest(s.last_event_timestamp, d.ts)
    FROM unnest(p_organization_ids, p_timestamps) AS d (organization_id, ts)
    WHERE s.organization_id = d.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_done(bigint[], bigint[]) IS
'Internal (relay): organizations relayed: no attempt counted, no backoff; the newest event timestamp Stripe accepted.';

CREATE FUNCTION active_series._relay_defer(
    p_organization_ids bigint[],
    p_until float8[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: an organization backs off until a moment (Unix seconds): a failed call's
-- backoff, a pause that Stripe's rate limit or an outage imposes, the second its next post
-- must wait for, or the deadline of a call still in flight elsewhere. No claim takes it
-- before then. Given as (organization, moment) pairs.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_state AS s
    SET next_attempt_at = to_timestamp(d.until), updated_at = now()
    FROM unnest(p_organization_ids, p_until) AS d (organization_id, until)
    WHERE s.organization_id = d.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_defer(bigint[], float8[]) IS
'Internal (relay): organizations backing off until the given moments (Unix seconds).';

CREATE FUNCTION active_series._relay_count_attempt(p_organization_id bigint)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a call that failed for a reason that may pass (no answer, a server error) is
-- counted on its organization; the count sets its backoff (_relay_defer) and is cleared
-- when the organization is relayed (_relay_done). Returns the count, NULL for an
-- organization without relay state.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
DECLARE
    v_attempts integer;
BEGIN
    UPDATE active_series._relay_state AS s
    SET attempts = s.attempts + 1, updated_at = now()
    WHERE s.organization_id = p_organization_id
    RETURNING s.attempts INTO v_attempts;
    RETURN v_attempts;
END;
$$;
COMMENT ON FUNCTION active_series._relay_count_attempt(bigint) IS
'Internal (relay): count a failed attempt of the organization; returns the count.';

CREATE FUNCTION active_series._relay_park(p_organization_id bigint, p_reason text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a refusal that posting again cannot mend (an unknown customer, a meter that
-- does not fit, a post refused later) parks the organization, with the reason: no claim
-- takes it (its backoff cleared) until an operator resumes it (relay_resume).
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_state AS s
    SET
        parked_at = now(),
        parked_reason = p_reason,
        next_attempt_at = NULL,
        updated_at = now()
    WHERE s.organization_id = p_organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_park(bigint, text) IS
'Internal (relay): park the organization with the reason, until relay_resume.';
