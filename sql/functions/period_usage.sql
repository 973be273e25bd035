CREATE FUNCTION active_series.period_usage(
    p_organization_id bigint,
    p_period_start timestamptz DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The exact number of distinct series active in the period starting at p_period_start
-- (NULL: the current period), excluding soft-deleted projects: 0 when no period with
-- activity starts there. Reads one count row per project, never the series.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the billing
-- tables themselves; it returns counts only, of the organization named.
DECLARE
    v_start timestamptz := p_period_start;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF v_start IS NULL THEN
        SELECT a.period_start INTO v_start
        FROM active_series._period_at(p_organization_id, now()) AS a;
    END IF;
    RETURN (
        SELECT coalesce(sum(u.series_count), 0)::bigint
        FROM active_series._billed_usage AS u
        WHERE u.organization_id = p_organization_id AND u.period_start = v_start
    );
END;
$$;
COMMENT ON FUNCTION active_series.period_usage(bigint, timestamptz) IS
'Exact active-series count of an organization for the billing period starting at p_period_start (NULL: current period), any past period too; soft-deleted projects excluded.';
