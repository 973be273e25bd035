CREATE FUNCTION active_series.set_series_cap(
    p_organization_id bigint,
    p_series_cap bigint
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Sets the organization's hard cap on a period's active series (NULL: no cap, the
-- default). From then on an ingest commit that would raise a period's count above it
-- fails with SQLSTATE AS001. A cap below the current count refuses new series only.
-- Locks the billing_account row.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_series_cap < 0 THEN
        RAISE EXCEPTION 'active_series: a series cap must be 0 or more (got %)', p_series_cap
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass a number of series, or NULL for no cap.';
    END IF;
    INSERT INTO active_series.billing_account AS b (organization_id, series_cap)
    VALUES (p_organization_id, p_series_cap)
    ON CONFLICT (organization_id) DO UPDATE
    SET series_cap = excluded.series_cap, updated_at = now();
END;
$$;
COMMENT ON FUNCTION active_series.set_series_cap(bigint, bigint) IS
'Set (or with NULL remove) an organization''s hard cap on the active series of a period.';
