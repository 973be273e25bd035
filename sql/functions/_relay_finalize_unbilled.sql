CREATE FUNCTION active_series._relay_finalize_unbilled(
    p_organization_id bigint,
    p_before timestamptz,
    p_after timestamptz
)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, usage bigint)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: no invoice bills a period that ended at or before p_before (a subscription's
-- start, or the end of its trial) and began at or after p_after (the end of an earlier
-- subscription, or the trial's start; NULL: no bound): each unfinalized one is finalized
-- unbilled (billed_value NULL, no drift) without a post. Returns those periods with their
-- usage.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT p.organization_id, p.period_start, p.period_end
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS q
            ON p.organization_id = q.organization_id AND p.period_start = q.period_start
        WHERE
            p.organization_id = p_organization_id
            AND q.finalized_at IS NULL
            AND p.period_end <= p_before
            AND p.period_start >= coalesce(p_after, '-infinity')
    ),

    done AS (
        INSERT INTO active_series._relay_period AS r (
            organization_id, period_start, closed_at, finalized_at
        )
        SELECT d.organization_id, d.period_start, clock_timestamp(), clock_timestamp()
        FROM due AS d
        ON CONFLICT ON CONSTRAINT _relay_period_pkey DO UPDATE
        SET
            closed_at = coalesce(r.closed_at, excluded.closed_at),
            finalized_at = excluded.finalized_at,
            billed_value = NULL,
            drift_since = NULL
        WHERE r.finalized_at IS NULL
        RETURNING r.organization_id, r.period_start
    )

    SELECT
        d.period_start,
        d.period_end,
        active_series.period_usage(d.organization_id, d.period_start)
    FROM done AS f
    INNER JOIN due AS d
        ON f.organization_id = d.organization_id AND f.period_start = d.period_start
    ORDER BY d.period_start;
END;
$$;
COMMENT ON FUNCTION active_series._relay_finalize_unbilled(bigint, timestamptz, timestamptz) IS
'Internal (relay): finalize unbilled, without a post, the periods no invoice bills (ended by a subscription''s start or its trial''s end, begun after the previous bound); returns them with their usage.';
