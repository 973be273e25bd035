CREATE FUNCTION active_series._check_rises(p_groups active_series._shape_group[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The recorder grew the counts of p_groups' (organization, period, project)s: check the cap
-- and the alerts (_check_usage) of each (organization, period), in key order (so the watch
-- rows lock in key order), when the rise comes from the ingest path, i.e. from within the
-- commit-time trigger (trigger depth above 0): re-bucketing by set_billing_period and CALL
-- backfill record from a top-level statement and are administrative (they never refuse and
-- never alert). A rise in a soft-deleted project changes no billed count. Most
-- organizations have neither a cap nor a threshold nor a bounded price tier: the period's
-- watched flag (_watched, kept by triggers/watch.sql) answers that in the same query,
-- without calling _check_usage (whose threshold list is a SQL function, planned at each
-- call); a tier bound that set_alert disabled still calls it, it decides exactly. The rises
-- of a re-recording after a hard delete (_rerecording) only undo its falls.
-- (_record_activity reads the flag with the period for one group.)
BEGIN
    IF pg_trigger_depth() < 1 THEN
        RETURN;
    END IF;
    PERFORM active_series._check_usage(c.organization_id, c.period_start)
    FROM (
        SELECT DISTINCT g.organization_id, g.period_start
        FROM unnest(p_groups) AS g
        WHERE EXISTS (
            SELECT FROM active_series.project AS p
            WHERE p.id = g.project_id AND p.deleted_at IS NULL
        )
        AND EXISTS (
            SELECT FROM active_series._period AS w
            WHERE w.organization_id = g.organization_id
                AND w.period_start = g.period_start
                AND w.watched
        )
        ORDER BY g.organization_id, g.period_start
    ) AS c
    WHERE NOT EXISTS (
        SELECT FROM active_series._rerecording AS r WHERE r.txid = txid_current()
    );
END;
$$;
COMMENT ON FUNCTION active_series._check_rises(active_series._shape_group[]) IS
'Internal: an ingest commit raised these periods'' counts; enforce the series cap and write alerts.';
