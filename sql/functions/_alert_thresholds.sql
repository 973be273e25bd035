CREATE FUNCTION active_series._alert_thresholds(p_organization_id bigint)
RETURNS TABLE (threshold bigint, source text)
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The organization's alert thresholds: those set with set_alert, and the upper bounds of
-- its stored price's tiers unless set_alert disabled them. Takes no locks.
SELECT a.series_count, 'set_alert'
FROM active_series._alert_threshold AS a
WHERE a.organization_id = p_organization_id AND a.enabled
UNION
SELECT t.up_to, 'price_tier'
FROM active_series._price_tier AS t
WHERE t.organization_id = p_organization_id
    AND t.up_to IS NOT NULL
    AND NOT EXISTS (
        SELECT FROM active_series._alert_threshold AS a
        WHERE a.organization_id = p_organization_id AND a.series_count = t.up_to
    );
$$;
COMMENT ON FUNCTION active_series._alert_thresholds(bigint) IS
'Internal: the organization''s alert thresholds (set_alert''s, and its price tiers'' upper bounds unless overridden).';
