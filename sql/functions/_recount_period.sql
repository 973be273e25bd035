CREATE FUNCTION active_series._recount_period(
    p_organization_id bigint,
    p_period_start timestamptz
)
RETURNS void
LANGUAGE sql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Rebuilds one period's per-project counts from the testbeds' sets of series in it
-- (admin paths only: re-bucketing and backfill; ingest keeps them incrementally).
DELETE FROM active_series._period_usage AS u
WHERE u.organization_id = p_organization_id AND u.period_start = p_period_start;
INSERT INTO active_series._period_usage (organization_id, period_start, project_id, series_count)
SELECT t.organization_id, t.period_start, t.project_id, sum(s.series)
FROM active_series._testbed_period AS t
INNER JOIN active_series._shape AS s ON s.id = t.shape_id
WHERE t.organization_id = p_organization_id AND t.period_start = p_period_start
GROUP BY t.organization_id, t.period_start, t.project_id;
$$;
COMMENT ON FUNCTION active_series._recount_period(bigint, timestamptz) IS
'Internal: recompute one period''s per-project counts from the testbeds'' sets of series.';
