CREATE FUNCTION active_series._relay_note_drift(p_organization_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a change (an outbox row) to a billed, finalized period is not posted; the
-- period drifts from the first change after which its usage differs from what was billed
-- (drift_since, kept while it differs), and stops drifting when its usage is back to it.
-- Called by the claim before it deletes the outbox rows it relayed, for its organizations.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_period AS r
    SET drift_since = CASE
        WHEN active_series.period_usage(r.organization_id, r.period_start) <> r.billed_value
            THEN coalesce(r.drift_since, x.first_change)
    END
    FROM (
        SELECT o.organization_id, o.period_start, min(o.created) AS first_change
        FROM active_series._outbox AS o
        WHERE o.organization_id = ANY(p_organization_ids)
        GROUP BY o.organization_id, o.period_start
    ) AS x
    WHERE
        r.organization_id = x.organization_id AND r.period_start = x.period_start
        AND r.finalized_at IS NOT NULL AND r.billed_value IS NOT NULL;
END;
$$;
COMMENT ON FUNCTION active_series._relay_note_drift(bigint[]) IS
'Internal (relay): note since when each finalized, billed period of the organizations given differs from what was billed, after changes in the outbox.';
