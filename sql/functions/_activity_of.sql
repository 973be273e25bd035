CREATE FUNCTION active_series._activity_of(
    p_report_benchmark_ids bigint [],
    p_measure_ids bigint []
)
RETURNS active_series._series_activity []
LANGUAGE sql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Resolves (report_benchmark, measure) pairs of new metrics into series activity: one
-- element per (series, billing period) with the smallest and greatest report.created.
-- Only primary-key lookups: each distinct report_benchmark once, then its report and
-- project; the period of each distinct (organization, created) once (recorded on first use).
WITH pairs AS (
    SELECT x.report_benchmark_id, x.measure_id
    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (report_benchmark_id, measure_id)
),
benchmarks AS MATERIALIZED (
    SELECT
        rb.id, rb.benchmark_id, r.project_id, r.testbed_id, r.created, p.organization_id
    FROM (SELECT DISTINCT pairs.report_benchmark_id FROM pairs) AS d
    INNER JOIN active_series.report_benchmark AS rb ON rb.id = d.report_benchmark_id
    INNER JOIN active_series.report AS r ON r.id = rb.report_id
    INNER JOIN active_series.project AS p ON p.id = r.project_id
),
periods AS MATERIALIZED (
    SELECT t.organization_id, t.created, f.period_start
    FROM (SELECT DISTINCT b.organization_id, b.created FROM benchmarks AS b) AS t
    CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
)
SELECT array_agg(
    row(
        g.organization_id, g.project_id, g.testbed_id, g.benchmark_id, g.measure_id,
        g.period_start, g.first_seen, g.last_seen
    )::active_series._series_activity
)
FROM (
    SELECT
        b.organization_id, b.project_id, b.testbed_id, b.benchmark_id, x.measure_id,
        t.period_start,
        min(b.created) AS first_seen,
        max(b.created) AS last_seen
    FROM pairs AS x
    INNER JOIN benchmarks AS b ON b.id = x.report_benchmark_id
    INNER JOIN periods AS t ON t.organization_id = b.organization_id AND t.created = b.created
    GROUP BY b.organization_id, b.project_id, b.testbed_id, b.benchmark_id, x.measure_id,
        t.period_start
) AS g;
$$;
COMMENT ON FUNCTION active_series._activity_of(bigint [], bigint []) IS
'Internal: series activity per billing period of a set of (report_benchmark, measure) pairs.';
