CREATE FUNCTION active_series.set_alert(
    p_organization_id bigint,
    p_series_count bigint,
    p_enabled boolean DEFAULT true
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Sets (p_enabled) or removes (false) an alert at p_series_count active series: the first
-- ingest commit of a period that brings the count to it or above writes one alert row.
-- false also silences a price tier's upper bound. Locks the threshold's row.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_series_count IS NULL OR p_enabled IS NULL THEN
        RAISE EXCEPTION 'active_series: set_alert needs a series count and whether it is enabled'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_series_count < 1 THEN
        RAISE EXCEPTION 'active_series: an alert threshold must be a positive number of series (got %)',
            p_series_count
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass the number of active series to be alerted at (1 or more).';
    END IF;
    INSERT INTO active_series._alert_threshold AS a (organization_id, series_count, enabled)
    VALUES (p_organization_id, p_series_count, p_enabled)
    ON CONFLICT (organization_id, series_count) DO UPDATE
    SET enabled = excluded.enabled, updated_at = now();
END;
$$;
COMMENT ON FUNCTION active_series.set_alert(bigint, bigint, boolean) IS
'Set (true, the default) or remove (false) an alert threshold of an organization, in active series; false also silences a price tier''s bound.';
