-- The history unfolded: one row per (series, period) with its first and last activity.
CREATE VIEW active_series._series_history AS
SELECT
    t.organization_id,
    t.period_start,
    t.project_id,
    t.testbed_id,
    e.benchmark_id,
    e.variant_id,
    e.measure_id,
    min(s.first_seen) AS first_seen,
    max(s.last_seen) AS last_seen
FROM active_series._testbed_period AS t
INNER JOIN active_series._shape_seen AS s
    ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
INNER JOIN active_series._shape AS h ON h.id = s.shape_id
CROSS JOIN
    LATERAL unnest(h.benchmark_ids, h.variant_ids, h.measure_ids)
        AS e (benchmark_id, variant_id, measure_id)
GROUP BY
    t.organization_id, t.period_start, t.project_id, t.testbed_id, e.benchmark_id,
    e.variant_id, e.measure_id;
COMMENT ON VIEW active_series._series_history IS
'Internal: the history unfolded, a row per series and period it was active in, with its first and last report.created there (variant_id 0: the benchmark''s empty variant).';
