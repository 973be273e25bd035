CREATE FUNCTION active_series.periods(p_organization_id bigint)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, active_series bigint)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Every recorded billing period of the organization, oldest first, with its exact
-- active-series count (soft-deleted projects excluded). Takes no locks.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the billing
-- tables themselves; it returns counts only, of the organization named.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    RETURN QUERY
    SELECT
        p.period_start, p.period_end,
        coalesce((
            SELECT sum(u.series_count)
            FROM active_series._billed_usage AS u
            WHERE u.organization_id = p.organization_id AND u.period_start = p.period_start
        ), 0)::bigint
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id
    ORDER BY p.period_start;
END;
$$;
COMMENT ON FUNCTION active_series.periods(bigint) IS
'The recorded billing periods of an organization with their exact active-series counts, oldest first.';
