CREATE FUNCTION active_series.verify(p_organization_id bigint DEFAULT NULL)
RETURNS TABLE (organization_id bigint, problem text, detail text)
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Compares the cache and history with a from-scratch recomputation over the metrics (of
-- one organization, or all): no rows means healthy. Problems:
--   count      a per-project period count differs from its history rows
--   last_seen  a series' last_seen is missing or older than its newest metric
--   history    a series' activity in a period is missing from, or outside, its history row
--   period     activity falls in no recorded period
--   open       a series' latest history row is not the one series_last_seen points at
-- Activity of deleted reports is legitimately in history without metrics: not a problem.
-- Reads everything of the organization; takes no locks.
BEGIN
    IF p_organization_id IS NOT NULL THEN
        PERFORM active_series._require_organization(p_organization_id);
    END IF;

    RETURN QUERY
    SELECT d.organization_id, 'count'::text,
        format('period %s project %s: count %s, history rows %s',
            d.period_start, d.project_id, d.actual, d.expected)
    FROM active_series._count_drift AS d
    WHERE p_organization_id IS NULL OR d.organization_id = p_organization_id;

    RETURN QUERY
    WITH activity AS (
        SELECT p.organization_id, r.project_id, r.testbed_id, rb.benchmark_id, m.measure_id,
            r.created
        FROM active_series.metric AS m
        INNER JOIN active_series.report_benchmark AS rb ON rb.id = m.report_benchmark_id
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE p_organization_id IS NULL OR p.organization_id = p_organization_id
    ),
    per_series AS (
        SELECT a.organization_id, a.testbed_id, a.benchmark_id, a.measure_id,
            max(a.created) AS last_seen
        FROM activity AS a
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id, a.measure_id
    ),
    per_period AS (
        SELECT a.organization_id, a.testbed_id, a.benchmark_id, a.measure_id, q.period_start,
            min(a.created) AS first_seen, max(a.created) AS last_seen
        FROM activity AS a
        LEFT JOIN active_series._period AS q
            ON q.organization_id = a.organization_id
            AND q.period_start <= a.created
            AND q.period_end > a.created
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id, a.measure_id, q.period_start
    )
    SELECT x.organization_id, 'last_seen'::text,
        format('series (%s, %s, %s): last_seen %s, newest metric %s',
            x.testbed_id, x.benchmark_id, x.measure_id,
            coalesce(s.last_seen::text, 'missing'), x.last_seen)
    FROM per_series AS x
    LEFT JOIN active_series.series_last_seen AS s
        ON s.organization_id = x.organization_id
        AND s.testbed_id = x.testbed_id
        AND s.benchmark_id = x.benchmark_id
        AND s.measure_id = x.measure_id
    WHERE s.last_seen IS NULL OR s.last_seen < x.last_seen
    UNION ALL
    SELECT y.organization_id,
        CASE WHEN y.period_start IS NULL THEN 'period' ELSE 'history' END,
        format('series (%s, %s, %s) period %s: active %s .. %s, history %s .. %s',
            y.testbed_id, y.benchmark_id, y.measure_id, coalesce(y.period_start::text, 'none'),
            y.first_seen, y.last_seen,
            coalesce(h.first_seen::text, 'missing'),
            coalesce(coalesce(h.last_seen, s.last_seen)::text, 'missing'))
    FROM per_period AS y
    LEFT JOIN active_series._series_period AS h
        ON h.organization_id = y.organization_id
        AND h.period_start = y.period_start
        AND h.testbed_id = y.testbed_id
        AND h.benchmark_id = y.benchmark_id
        AND h.measure_id = y.measure_id
    LEFT JOIN active_series.series_last_seen AS s
        ON s.organization_id = y.organization_id
        AND s.testbed_id = y.testbed_id
        AND s.benchmark_id = y.benchmark_id
        AND s.measure_id = y.measure_id
    WHERE h.first_seen IS NULL
        OR h.first_seen > y.first_seen
        OR coalesce(h.last_seen, s.last_seen) < y.last_seen;

    RETURN QUERY
    SELECT s.organization_id, 'open'::text,
        format('series (%s, %s, %s): last_seen %s in period %s, open history rows in %s',
            s.testbed_id, s.benchmark_id, s.measure_id, s.last_seen, s.period_start,
            coalesce(o.periods, 'none'))
    FROM active_series.series_last_seen AS s
    LEFT JOIN LATERAL (
        SELECT string_agg(h.period_start::text, ', ' ORDER BY h.period_start) AS periods,
            count(*) AS n,
            bool_and(h.period_start = s.period_start) AS at_latest
        FROM active_series._series_period AS h
        WHERE h.organization_id = s.organization_id
            AND h.testbed_id = s.testbed_id
            AND h.benchmark_id = s.benchmark_id
            AND h.measure_id = s.measure_id
            AND h.last_seen IS NULL
    ) AS o ON true
    LEFT JOIN active_series._period AS q
        ON q.organization_id = s.organization_id
        AND q.period_start = s.period_start
    WHERE (p_organization_id IS NULL OR s.organization_id = p_organization_id)
        AND (
            o.n <> 1
            OR NOT o.at_latest
            OR q.period_start IS NULL
            OR s.last_seen < q.period_start
            OR s.last_seen >= q.period_end
        );
END;
$$;
COMMENT ON FUNCTION active_series.verify(bigint) IS
'Rows where cached counts, last_seen or period history disagree with a from-scratch recomputation over the metrics (one organization or all); no rows means healthy.';
