CREATE FUNCTION active_series.verify(p_organization_id bigint DEFAULT NULL)
RETURNS TABLE (organization_id bigint, problem text, detail text)
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Compares the cache and history with a from-scratch recomputation over the metrics (of
-- one organization, or all): no rows means healthy. Problems:
--   count      a per-project period count differs from the series in its history
--   last_seen  a series' last_seen is missing or older than its newest metric
--   history    a series' activity in a period is missing from, or outside, its history
--   period     activity falls in no recorded period
--   set        a testbed's set of series for a period is not the union of what it reported
--   sighting   a _shape_seen row without its testbed history (_testbed_period row)
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
        SELECT p.organization_id, r.project_id, r.testbed_id, rb.benchmark_id,
            active_series._variant_key(rb.variant_id) AS variant_id, m.measure_id, r.created
        FROM active_series.metric AS m
        INNER JOIN active_series.report_benchmark AS rb ON rb.id = m.report_benchmark_id
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE p_organization_id IS NULL OR p.organization_id = p_organization_id
    ),
    history AS (
        SELECT h.*
        FROM active_series._series_history AS h
        WHERE p_organization_id IS NULL OR h.organization_id = p_organization_id
    ),
    per_series AS (
        SELECT a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id,
            max(a.created) AS last_seen
        FROM activity AS a
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id
    ),
    per_period AS (
        SELECT a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id,
            q.period_start, min(a.created) AS first_seen, max(a.created) AS last_seen
        FROM activity AS a
        LEFT JOIN active_series._period AS q
            ON q.organization_id = a.organization_id
            AND q.period_start <= a.created
            AND q.period_end > a.created
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id,
            q.period_start
    )
    SELECT x.organization_id, 'last_seen'::text,
        format('series (%s, %s, %s, %s): last_seen %s, newest metric %s',
            x.testbed_id, x.benchmark_id, x.variant_id, x.measure_id,
            coalesce(s.last_seen::text, 'missing'), x.last_seen)
    FROM per_series AS x
    LEFT JOIN (
        SELECT h.testbed_id, h.benchmark_id, h.variant_id, h.measure_id,
            max(h.last_seen) AS last_seen
        FROM history AS h
        GROUP BY h.testbed_id, h.benchmark_id, h.variant_id, h.measure_id
    ) AS s
        ON s.testbed_id = x.testbed_id
        AND s.benchmark_id = x.benchmark_id
        AND s.variant_id = x.variant_id
        AND s.measure_id = x.measure_id
    WHERE s.last_seen IS NULL OR s.last_seen < x.last_seen
    UNION ALL
    SELECT y.organization_id,
        CASE WHEN y.period_start IS NULL THEN 'period' ELSE 'history' END,
        format('series (%s, %s, %s, %s) period %s: active %s .. %s, history %s .. %s',
            y.testbed_id, y.benchmark_id, y.variant_id, y.measure_id,
            coalesce(y.period_start::text, 'none'), y.first_seen, y.last_seen,
            coalesce(h.first_seen::text, 'missing'), coalesce(h.last_seen::text, 'missing'))
    FROM per_period AS y
    LEFT JOIN history AS h
        ON h.period_start = y.period_start
        AND h.testbed_id = y.testbed_id
        AND h.benchmark_id = y.benchmark_id
        AND h.variant_id = y.variant_id
        AND h.measure_id = y.measure_id
    WHERE h.first_seen IS NULL
        OR h.first_seen > y.first_seen
        OR h.last_seen < y.last_seen;

    RETURN QUERY
    SELECT t.organization_id, 'set'::text,
        format('testbed %s period %s: set of %s series, %s reported',
            t.testbed_id, t.period_start, u.series, coalesce(n.series, 0))
    FROM active_series._testbed_period AS t
    INNER JOIN active_series._shape AS u ON u.id = t.shape_id
    LEFT JOIN LATERAL (
        SELECT count(*) AS series, bool_and(x.in_set) AS all_in_set
        FROM (
            SELECT DISTINCT e.b, e.v, e.m,
                (e.b, e.v, e.m) IN (
                    SELECT f.b, f.v, f.m
                    FROM unnest(u.benchmark_ids, u.variant_ids, u.measure_ids) AS f (b, v, m)
                ) AS in_set
            FROM active_series._shape_seen AS s
            INNER JOIN active_series._shape AS h ON h.id = s.shape_id
            CROSS JOIN LATERAL unnest(h.benchmark_ids, h.variant_ids, h.measure_ids)
                AS e (b, v, m)
            WHERE s.testbed_id = t.testbed_id AND s.period_start = t.period_start
        ) AS x
    ) AS n ON true
    WHERE (p_organization_id IS NULL OR t.organization_id = p_organization_id)
        AND (n.series IS DISTINCT FROM u.series::bigint OR NOT n.all_in_set);

    -- (the organization of a sighting without its history: its shape's project's)
    RETURN QUERY
    SELECT p.organization_id, 'sighting'::text,
        format('testbed %s period %s shape %s: a sighting without its testbed history',
            s.testbed_id, s.period_start, s.shape_id)
    FROM active_series._shape_seen AS s
    LEFT JOIN active_series._shape AS h ON h.id = s.shape_id
    LEFT JOIN active_series.project AS p ON p.id = h.project_id
    WHERE (p_organization_id IS NULL OR p.organization_id = p_organization_id)
        AND NOT EXISTS (
            SELECT FROM active_series._testbed_period AS t
            WHERE t.testbed_id = s.testbed_id AND t.period_start = s.period_start
        );
END;
$$;
COMMENT ON FUNCTION active_series.verify(bigint) IS
'Rows where cached counts, last_seen or period history disagree with a from-scratch recomputation over the metrics (one organization or all); no rows means healthy.';
