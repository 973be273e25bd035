CREATE FUNCTION active_series.relay_resume(p_organization_id bigint)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Un-parks the organization's relay (after the cause was fixed, e.g. a new Stripe
-- customer id) and clears its backoff; enqueues a change so a worker relays it at once.
-- Returns whether it was parked. Locks the _relay_state row (waits for a worker
-- relaying the organization right now).
DECLARE
    v_was_parked boolean;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    INSERT INTO active_series._relay_state (organization_id)
    VALUES (p_organization_id)
    ON CONFLICT ON CONSTRAINT _relay_state_pkey DO NOTHING;
    SELECT s.parked_at IS NOT NULL INTO v_was_parked
    FROM active_series._relay_state AS s
    WHERE s.organization_id = p_organization_id
    FOR UPDATE;
    UPDATE active_series._relay_state AS s
    SET parked_at = NULL, parked_reason = NULL, next_attempt_at = NULL, attempts = 0,
        updated_at = now()
    WHERE s.organization_id = p_organization_id;
    PERFORM active_series._changed(p_organization_id, NULL, 'resume');
    RETURN coalesce(v_was_parked, FALSE);
END;
$$;
COMMENT ON FUNCTION active_series.relay_resume(bigint) IS
'Resume relaying a parked organization to Stripe (after fixing the cause shown in relay_failures); returns whether it was parked.';
