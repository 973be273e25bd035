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
END;
$$;
COMMENT ON FUNCTION active_series._period_at(bigint, timestamptz) IS
'Internal: the billing period containing a time (recorded, else derived); writes nothing.';
