CREATE FUNCTION active_series._testbed_period_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Statement-level AFTER DELETE on _testbed_period (a testbed or project hard-deleted
-- cascades its history away; re-bucketing and re-recording delete and rewrite it): delete
-- the sightings of the histories deleted (no foreign key cascades them: see _shape_seen),
-- lower the counts by the sets deleted and tell the relay.
-- SECURITY DEFINER: the hard delete that cascades here may be an ingest client's
-- (active_series_ingest), which may not write _period_usage or _outbox.
BEGIN
    DELETE FROM active_series._shape_seen AS s
    USING old_testbed_period AS o
    WHERE s.testbed_id = o.testbed_id AND s.period_start = o.period_start;
    UPDATE active_series._period_usage AS u
    SET series_count = u.series_count - d.n
    FROM (
        SELECT o.organization_id, o.period_start, o.project_id, sum(s.series) AS n
        FROM old_testbed_period AS o
        INNER JOIN active_series._shape AS s ON s.id = o.shape_id
        GROUP BY o.organization_id, o.period_start, o.project_id
    ) AS d
    WHERE u.organization_id = d.organization_id
        AND u.period_start = d.period_start
        AND u.project_id = d.project_id;
    PERFORM active_series._changed(c.organization_id, c.period_start, 'delete')
    FROM (
        SELECT DISTINCT o.organization_id, o.period_start FROM old_testbed_period AS o
    ) AS c;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._testbed_period_deleted() IS
'Trigger: keep per-period counts right when a testbed''s history of a period is deleted.';

CREATE TRIGGER testbed_period_deleted
AFTER DELETE ON active_series._testbed_period
REFERENCING OLD TABLE AS old_testbed_period
FOR EACH STATEMENT
EXECUTE FUNCTION active_series._testbed_period_deleted();
