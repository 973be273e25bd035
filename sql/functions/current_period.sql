CREATE FUNCTION active_series.current_period(p_organization_id bigint)
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
ROWS 1
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The organization's billing period containing now(). Writes nothing, takes no locks.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the billing
-- tables themselves; it returns counts only, of the organization named.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    RETURN QUERY
    SELECT a.period_start, a.period_end
    FROM active_series._period_at(p_organization_id, now()) AS a;
END;
$$;
COMMENT ON FUNCTION active_series.current_period(bigint) IS
'The billing period [period_start, period_end) of an organization that contains now().';
