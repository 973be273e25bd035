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
-- The period containing p_at, recorded in _period if it was not yet.
-- Locks: the organization's period lock in shared mode until the transaction ends
-- (set_billing_period takes it exclusively, so boundaries stay fixed while they are
-- used); recording a new period also takes the organization's period-creation lock, so
-- that two transactions never derive overlapping periods from different snapshots.
BEGIN
    PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(p_organization_id));
    -- the recorded one (as _recorded_period, written out: this runs at every ingest commit)
    SELECT l.period_start, l.period_end
    INTO period_start, period_end
    FROM (
        SELECT p.period_start, p.period_end
        FROM active_series._period AS p
        WHERE p.organization_id = p_organization_id AND p.period_start <= p_at
        ORDER BY p.period_start DESC
        LIMIT 1
    ) AS l
    WHERE l.period_end > p_at;
    IF period_start IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(_lock_key('period_creation'), hashint8(p_organization_id));
    -- a fresh snapshot: a period recorded meanwhile by a committed transaction counts
    SELECT a.period_start, a.period_end
    INTO period_start, period_end
    FROM active_series._period_at(p_organization_id, p_at) AS a;
    INSERT INTO active_series._period (organization_id, period_start, period_end)
    VALUES (p_organization_id, period_start, period_end)
    ON CONFLICT ON CONSTRAINT _period_pkey DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._period_for(bigint, timestamptz) IS
'Internal: the billing period containing a time, recorded on first use; holds the organization''s period lock (shared) until commit.';
