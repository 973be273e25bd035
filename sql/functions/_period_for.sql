CREATE FUNCTION active_series._period_for(
    p_organization_id bigint,
    p_at timestamptz,
    OUT period_start timestamptz,
    OUT period_end timestamptz
)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The period containing p_at, recorded in _period if it was not yet. Takes the
-- organization's period lock in shared mode (set_billing_period takes it exclusively),
-- so that period boundaries stay fixed until the calling transaction ends.
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1634956099, hashint8(p_organization_id));
    SELECT p.period_start, p.period_end
    INTO period_start, period_end
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start <= p_at
    ORDER BY p.period_start DESC
    LIMIT 1;
    IF period_end > p_at THEN
        RETURN;
    END IF;
    SELECT d.period_start, d.period_end
    INTO period_start, period_end
    FROM active_series._derive_period(p_organization_id, p_at) AS d;
    -- a concurrent transaction may record the same period first: same bounds, nothing to do
    INSERT INTO active_series._period (organization_id, period_start, period_end)
    VALUES (p_organization_id, period_start, period_end)
    ON CONFLICT ON CONSTRAINT _period_pkey DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._period_for(bigint, timestamptz) IS
'Internal: the billing period containing a time, recorded on first use; holds the organization''s period lock (shared) until commit.';
