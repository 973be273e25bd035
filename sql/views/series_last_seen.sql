CREATE VIEW active_series.series_last_seen AS
SELECT
    h.organization_id,
    h.project_id,
    h.testbed_id,
    h.benchmark_id,
    coalesce(v.id, nullif(h.variant_id, 0)) AS variant_id,
    h.measure_id,
    max(h.last_seen) AS last_seen,
    max(h.period_start) AS period_start
FROM active_series._series_history AS h
LEFT JOIN active_series._variant_rows() AS v
    ON h.variant_id = 0 AND v.benchmark_id = h.benchmark_id AND v.parameters = '{}'::jsonb
GROUP BY
    h.organization_id, h.project_id, h.testbed_id, h.benchmark_id, h.variant_id, v.id,
    h.measure_id;
COMMENT ON VIEW active_series.series_last_seen IS
'One row per series: the greatest report.created ever recorded for it (only rises), and the billing period containing it.';
