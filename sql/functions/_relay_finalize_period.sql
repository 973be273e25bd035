CREATE FUNCTION active_series._relay_finalize_period(
    p_organization_id bigint,
    p_period_start timestamptz,
    p_billed bigint
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: once the invoice is final (the period's end plus the worker's --invoice-grace,
-- or the subscription ended within it) the period is finalized, closed too if it was not,
-- and nothing is posted for it again. p_billed is what Stripe held for it (NULL: the
-- organization was not billed); a difference from the period's usage is drift from now on
-- (billing_drift). Once; a period no longer recorded is left alone.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._relay_period AS r (
        organization_id, period_start, closed_at, finalized_at, billed_value, drift_since
    )
    SELECT
        p.organization_id,
        p.period_start,
        clock_timestamp(),
        clock_timestamp(),
        p_billed,
        CASE
            WHEN p_billed <> active_series.period_usage(p.organization_id, p.period_start)
                THEN clock_timestamp()
        END
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start = p_period_start
    ON CONFLICT ON CONSTRAINT _relay_period_pkey DO UPDATE
    SET
        closed_at = coalesce(r.closed_at, excluded.closed_at),
        finalized_at = excluded.finalized_at,
        billed_value = excluded.billed_value,
        drift_since = excluded.drift_since
    WHERE r.finalized_at IS NULL;
END;
$$;
COMMENT ON FUNCTION active_series._relay_finalize_period(bigint, timestamptz, bigint) IS
'Internal (relay): finalize a recorded period with what Stripe billed for it (NULL: not billed); once, never posted again.';
