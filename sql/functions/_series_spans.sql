CREATE FUNCTION active_series._series_spans(
    p_organization_id bigint,
    p_from timestamptz,
    p_to timestamptz
)
RETURNS active_series._series_span[]
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The organization's history of the periods starting in [p_from, p_to), per series.
SELECT coalesce(array_agg(
    row(
        h.organization_id, h.project_id, h.testbed_id, h.period_start, h.benchmark_id,
        h.variant_id, h.measure_id, h.first_seen, h.last_seen
    )::active_series._series_span
), '{}')
FROM active_series._series_history AS h
WHERE h.organization_id = p_organization_id
    AND h.period_start >= p_from
    AND h.period_start < p_to;
$$;
COMMENT ON FUNCTION active_series._series_spans(bigint, timestamptz, timestamptz) IS
'Internal: the per-series history of an organization''s periods starting in a time range.';
