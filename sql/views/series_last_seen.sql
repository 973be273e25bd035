CREATE VIEW active_series.series_last_seen AS
SELECT
    b.organization_id,
    b.project_id,
    b.testbed_id,
    b.benchmark_id,
    m.measure_id,
    b.last_seen,
    b.period_start
FROM active_series._benchmark_seen AS b
CROSS JOIN LATERAL unnest(b.measure_ids) AS m (measure_id)
UNION ALL
SELECT
    s.organization_id,
    s.project_id,
    s.testbed_id,
    s.benchmark_id,
    s.measure_id,
    s.last_seen,
    s.period_start
FROM active_series._series_seen AS s;
COMMENT ON VIEW active_series.series_last_seen IS
'One row per series: the greatest report.created ever recorded for it (only rises), and the billing period containing it.';
