CREATE VIEW active_series.alerts AS
SELECT
    a.id,
    a.organization_id,
    o.name AS organization_name,
    a.period_start,
    p.period_end,
    a.threshold,
    a.series_count,
    a.source,
    a.created
FROM active_series._alert AS a
INNER JOIN active_series._organization_rows() AS o ON o.id = a.organization_id
LEFT JOIN active_series._period AS p
    ON p.organization_id = a.organization_id AND p.period_start = a.period_start;
COMMENT ON VIEW active_series.alerts IS
'Every alert written: the organization, the period, the threshold its count reached and the count then (source: set_alert or a price tier''s upper bound), oldest first by id.';
