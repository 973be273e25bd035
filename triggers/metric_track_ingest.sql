CREATE FUNCTION active_series._track_metric_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Statement-level AFTER INSERT on metric: records the statement's new metrics (all of
-- them at once, from the transition table) as series activity, in the ingest transaction.
-- Locks: see _record_activity.
DECLARE
    v_report_benchmark_ids bigint [];
    v_measure_ids bigint [];
BEGIN
    SELECT array_agg(n.report_benchmark_id), array_agg(n.measure_id)
    INTO v_report_benchmark_ids, v_measure_ids
    FROM (SELECT DISTINCT m.report_benchmark_id, m.measure_id FROM new_metric AS m) AS n;
    IF v_report_benchmark_ids IS NOT NULL THEN
        PERFORM active_series._record_activity(
            active_series._activity_of(v_report_benchmark_ids, v_measure_ids)
        );
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._track_metric_insert() IS
'Trigger: keep last_seen, period history and counts of the series in a statement''s new metrics.';

CREATE TRIGGER metric_track_ingest
AFTER INSERT ON active_series.metric
REFERENCING NEW TABLE AS new_metric
FOR EACH STATEMENT
EXECUTE FUNCTION active_series._track_metric_insert();
