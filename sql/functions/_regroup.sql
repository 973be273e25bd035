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
    row(
        g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
        g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids, NULL
    )::active_series._shape_group
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
