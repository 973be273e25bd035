CREATE FUNCTION active_series._recount_period(
    p_organization_id bigint,
    p_period_start timestamptz
)
RETURNS void
LANGUAGE sql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Rebuilds one period's per-project counts from its history rows (admin paths only:
-- re-bucketing and backfill; ingest keeps them incrementally).
DELETE FROM active_series._period_usage AS u
WHERE u.organization_id = p_organization_id AND u.period_start = p_period_start;
INSERT INTO active_series._period_usage (organization_id, period_start, project_id, series_count)
SELECT h.organization_id, h.period_start, h.project_id, count(*)
FROM active_series._series_period AS h
WHERE h.organization_id = p_organization_id AND h.period_start = p_period_start
GROUP BY h.organization_id, h.period_start, h.project_id;
$$;
COMMENT ON FUNCTION active_series._recount_period(bigint, timestamptz) IS
'Internal: recompute one period''s per-project counts from its history rows.';
