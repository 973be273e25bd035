CREATE FUNCTION active_series._period_usage_grew()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Row-level AFTER INSERT / UPDATE OF series_count on _period_usage, fired only when a
-- count rose (see WHEN). Checks the cap and the alerts (_check_usage) when the rise comes
-- from the ingest path, i.e. from within the commit-time trigger (trigger depth > 1):
-- re-bucketing by set_billing_period and CALL backfill write counts from a top-level
-- statement and are administrative (they never refuse and never alert). A rise in a
-- soft-deleted project changes no billed count. Row events fire in the order the statement
-- wrote the rows, which the ingest path makes key order, so watch rows lock in key order.
-- Most organizations have neither a cap nor a threshold: one query (cached plan) answers
-- that, without calling _check_usage (whose threshold list is a SQL function, planned at
-- each call). A tier bound that set_alert disabled still calls it; it decides exactly.
-- The rises of a re-recording after a hard delete (_rerecording) only undo its falls.
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RETURN NULL;
    END IF;
    PERFORM FROM active_series.project AS p
    WHERE p.id = new.project_id AND p.deleted_at IS NULL
        AND (
            EXISTS (
                SELECT FROM active_series.billing_account AS b
                WHERE b.organization_id = new.organization_id AND b.series_cap IS NOT NULL
            )
            OR EXISTS (
                SELECT FROM active_series._alert_threshold AS a
                WHERE a.organization_id = new.organization_id AND a.enabled
            )
            OR EXISTS (
                SELECT FROM active_series._price_tier AS t
                WHERE t.organization_id = new.organization_id AND t.up_to IS NOT NULL
            )
        );
    -- (nested: a condition with a subquery is not a simple expression, and would run the
    -- executor at every call, FOUND or not)
    IF FOUND THEN
        IF NOT EXISTS (
            SELECT FROM active_series._rerecording AS r WHERE r.txid = txid_current()
        ) THEN
            PERFORM active_series._check_usage(new.organization_id, new.period_start);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._period_usage_grew() IS
'Trigger: an ingest commit raised a period''s count; enforce the series cap and write alerts.';

CREATE TRIGGER period_usage_inserted
AFTER INSERT ON active_series._period_usage
FOR EACH ROW
WHEN (new.series_count > 0)
EXECUTE FUNCTION active_series._period_usage_grew();

CREATE TRIGGER period_usage_grew
AFTER UPDATE OF series_count ON active_series._period_usage
FOR EACH ROW
WHEN (new.series_count > old.series_count)
EXECUTE FUNCTION active_series._period_usage_grew();
