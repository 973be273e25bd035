CREATE FUNCTION active_series.period_series(
    p_organization_id bigint,
    p_period_start timestamptz DEFAULT NULL
)
RETURNS TABLE (
    project_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    variant_id bigint,
    measure_id bigint,
    first_seen timestamptz,
    last_seen timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The series a period's bill is made of, with their first and last activity in the
-- period (NULL period: the current one); soft-deleted projects excluded. Takes no locks.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the history
-- tables themselves; it returns the series of the organization named only.
DECLARE
    v_start timestamptz := p_period_start;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF v_start IS NULL THEN
        SELECT a.period_start INTO v_start
        FROM active_series._period_at(p_organization_id, now()) AS a;
    END IF;
    RETURN QUERY
    SELECT
        h.project_id, h.testbed_id, h.benchmark_id, coalesce(v.id, nullif(h.variant_id, 0)),
        h.measure_id, h.first_seen, h.last_seen
    FROM active_series._series_history AS h
    INNER JOIN active_series.project AS p ON p.id = h.project_id
    LEFT JOIN active_series.variant AS v
        ON h.variant_id = 0 AND v.benchmark_id = h.benchmark_id AND v.parameters = '{}'::jsonb
    WHERE h.organization_id = p_organization_id
        AND h.period_start = v_start
        AND p.deleted_at IS NULL
    ORDER BY h.project_id, h.testbed_id, h.benchmark_id, 4, h.measure_id;
END;
$$;
COMMENT ON FUNCTION active_series.period_series(bigint, timestamptz) IS
'The series (testbed, benchmark, variant, measure) counted in a billing period (NULL: current) with their first and last activity in it: what the bill is made of.';
