CREATE FUNCTION active_series._regroup(p_spans active_series._series_span[])
RETURNS active_series._shape_group[]
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Per-series history as sets: the series of one testbed and period that share their first
-- and last activity become one group (for re-bucketing, re-recording after a hard delete
-- and upgrades: the paths that start from per-series history).
SELECT coalesce(array_agg(
    active_series._shape_group(
        p_organization_id => g.organization_id,
        p_project_id => g.project_id,
        p_testbed_id => g.testbed_id,
        p_period_start => g.period_start,
        p_first_seen => g.first_seen,
        p_last_seen => g.last_seen,
        p_benchmark_ids => g.benchmark_ids,
        p_variant_ids => g.variant_ids,
        p_measure_ids => g.measure_ids
    )
), '{}')
FROM (
    SELECT
        s.organization_id, s.project_id, s.testbed_id, s.period_start, s.first_seen,
        s.last_seen,
        array_agg(s.benchmark_id ORDER BY s.benchmark_id, s.variant_id, s.measure_id)
            AS benchmark_ids,
        array_agg(s.variant_id ORDER BY s.benchmark_id, s.variant_id, s.measure_id)
            AS variant_ids,
        array_agg(s.measure_id ORDER BY s.benchmark_id, s.variant_id, s.measure_id)
            AS measure_ids
    FROM unnest(p_spans) AS s
    GROUP BY s.organization_id, s.project_id, s.testbed_id, s.period_start, s.first_seen,
        s.last_seen
) AS g;
$$;
COMMENT ON FUNCTION active_series._regroup(active_series._series_span[]) IS
'Internal: group per-series history into sets of series sharing testbed, period and first and last activity.';
