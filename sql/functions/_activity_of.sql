CREATE FUNCTION active_series._activity_of(p_report_benchmark_ids bigint[])
RETURNS active_series._series_activity[]
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Resolves the metrics of some report_benchmarks into series activity: one element per
-- (series, billing period) with the smallest and greatest report.created. Only index
-- lookups: each report_benchmark once with its report and project, its metrics through
-- metric (report_benchmark_id, measure_id), and the period of each distinct
-- (organization, created) once (recorded on first use). PL/pgSQL rather than SQL so
-- that its plan is cached: it runs at every ingest commit.
DECLARE
    v_activity active_series._series_activity [];
BEGIN
    WITH benchmarks AS MATERIALIZED (
        SELECT
            rb.id, rb.benchmark_id, r.project_id, r.testbed_id, r.created, p.organization_id
        FROM (SELECT DISTINCT x.id FROM unnest(p_report_benchmark_ids) AS x (id)) AS d
        INNER JOIN active_series.report_benchmark AS rb ON rb.id = d.id
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
    ),
    periods AS MATERIALIZED (
        SELECT t.organization_id, t.created, f.period_start
        FROM (
            SELECT DISTINCT b.organization_id, b.created
            FROM benchmarks AS b
            WHERE EXISTS (
                SELECT FROM active_series.metric AS m WHERE m.report_benchmark_id = b.id
            )
        ) AS t
        CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
    )
    SELECT array_agg(
        row(
            g.organization_id, g.project_id, g.testbed_id, g.benchmark_id, g.measure_id,
            g.period_start, g.first_seen, g.last_seen
        )::active_series._series_activity
    )
    INTO v_activity
    FROM (
        SELECT
            b.organization_id, b.project_id, b.testbed_id, b.benchmark_id, m.measure_id,
            t.period_start,
            min(b.created) AS first_seen,
            max(b.created) AS last_seen
        FROM benchmarks AS b
        INNER JOIN active_series.metric AS m ON m.report_benchmark_id = b.id
        INNER JOIN periods AS t ON t.organization_id = b.organization_id AND t.created = b.created
        GROUP BY b.organization_id, b.project_id, b.testbed_id, b.benchmark_id, m.measure_id,
            t.period_start
    ) AS g;
    RETURN v_activity;
END;
$$;
COMMENT ON FUNCTION active_series._activity_of(bigint[]) IS
'Internal: series activity per billing period of the metrics of a set of report_benchmarks.';
