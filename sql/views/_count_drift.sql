-- Per-(organization, period, project) counts that disagree with the history.
CREATE VIEW active_series._count_drift AS
SELECT
    coalesce(h.organization_id, u.organization_id) AS organization_id,
    coalesce(h.period_start, u.period_start) AS period_start,
    coalesce(h.project_id, u.project_id) AS project_id,
    coalesce(h.n, 0) AS expected,
    coalesce(u.series_count, 0) AS actual
FROM (
    SELECT
        s.organization_id,
        s.period_start,
        s.project_id,
        count(*) AS n
    FROM active_series._series_history AS s
    GROUP BY s.organization_id, s.period_start, s.project_id
) AS h
FULL JOIN active_series._period_usage AS u
    ON
        u.organization_id = h.organization_id
        AND u.period_start = h.period_start
        AND u.project_id = h.project_id
WHERE coalesce(h.n, 0) <> coalesce(u.series_count, 0);
COMMENT ON VIEW active_series._count_drift IS
'Internal: per-project period counts that differ from the number of series in the history (empty when healthy).';
