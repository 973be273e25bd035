CREATE FUNCTION active_series._period_at(
    p_organization_id bigint,
    p_at timestamptz,
    OUT period_start timestamptz,
    OUT period_end timestamptz
)
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The period containing p_at: the recorded one, else the derived one. Writes nothing.
BEGIN
    SELECT a.period_start, a.period_end
    INTO period_start, period_end
    FROM active_series._recorded_period(p_organization_id, p_at) AS a;
    IF period_start IS NULL THEN
        SELECT d.period_start, d.period_end
        INTO period_start, period_end
        FROM active_series._derive_period(p_organization_id, p_at) AS d;
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._period_at(bigint, timestamptz) IS
'Internal: the billing period containing a time (recorded, else derived); writes nothing.';
