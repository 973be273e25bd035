CREATE FUNCTION active_series._series_activity_bound(
    p_span active_series._series_span,
    p_from timestamptz,
    p_to timestamptz,
    p_latest boolean
)
RETURNS timestamptz
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The earliest (p_latest false) or latest report.created in [p_from, p_to) among the
-- metrics of one series; NULL when none remain. For re-bucketing only.
SELECT CASE WHEN p_latest THEN max(r.created) ELSE min(r.created) END
FROM active_series.report AS r
INNER JOIN active_series.report_benchmark AS rb ON rb.report_id = r.id
INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
WHERE r.project_id = p_span.project_id
    AND r.testbed_id = p_span.testbed_id
    AND rb.benchmark_id = p_span.benchmark_id
    AND active_series._variant_key(rb.variant_id) = p_span.variant_id
    AND m.measure_id = p_span.measure_id
    AND r.created >= p_from
    AND r.created < p_to;
$$;
COMMENT ON FUNCTION active_series._series_activity_bound(
    active_series._series_span, timestamptz, timestamptz, boolean
) IS
'Internal: first or last recorded activity of one series within a time range, from its metrics.';
