CREATE FUNCTION active_series._relay_close_period(
    p_organization_id bigint,
    p_period_start timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a period is closed once its final value is posted (or cannot be) after its end
-- plus the worker's --grace; it is closed once, and a closed period's changes are still
-- posted until it is finalized. A period no longer recorded (set_billing_period merged or
-- dropped it meanwhile) is left alone.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._relay_period AS r (organization_id, period_start, closed_at)
    SELECT p.organization_id, p.period_start, clock_timestamp()
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start = p_period_start
    ON CONFLICT ON CONSTRAINT _relay_period_pkey DO UPDATE
    SET closed_at = excluded.closed_at
    WHERE r.closed_at IS NULL;
END;
$$;
COMMENT ON FUNCTION active_series._relay_close_period(bigint, timestamptz) IS
'Internal (relay): close a recorded period (its final value is posted); once.';
