CREATE FUNCTION active_series._watched(p_organization_id bigint)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Whether an ingest commit that raises the organization's count must check it
-- (_check_usage): it has a series cap, an enabled alert threshold, or a price tier with an
-- upper bound (a bound that set_alert disabled still counts: _check_usage decides exactly).
-- The one definition; _period.watched holds its value for every period (triggers/watch.sql).
SELECT
    EXISTS (
        SELECT FROM active_series.billing_account AS b
        WHERE b.organization_id = p_organization_id AND b.series_cap IS NOT NULL
    )
    OR EXISTS (
        SELECT FROM active_series._alert_threshold AS a
        WHERE a.organization_id = p_organization_id AND a.enabled
    )
    OR EXISTS (
        SELECT FROM active_series._price_tier AS t
        WHERE t.organization_id = p_organization_id AND t.up_to IS NOT NULL
    );
$$;
COMMENT ON FUNCTION active_series._watched(bigint) IS
'Internal: whether the organization has a series cap, an enabled alert threshold or a bounded price tier.';
