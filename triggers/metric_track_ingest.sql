CREATE FUNCTION active_series._track_metric_insert()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Statement-level AFTER INSERT on metric: appends a _pending row with the
-- (report_benchmark, measure) pairs of the statement's new metrics (its transition table;
-- the commit drops repeats), so that the commit reads no metric back. The deferred
-- trigger of the transaction's first such row records them all at commit, in one batch,
-- so that a transaction of many statements takes its locks once, in key order. A row per
-- statement keeps a long loading transaction linear.
-- Locks: none beyond the inserted row.
-- SECURITY DEFINER: it fires as the ingesting role (active_series_ingest), which may not
-- write _pending itself (else it could queue other transactions' report_benchmarks or
-- delete its own row to skip recording); it writes only what the transition table holds.
BEGIN
    INSERT INTO active_series._pending (report_benchmark_ids, measure_ids, head)
    SELECT
        array_agg(n.report_benchmark_id),
        array_agg(n.measure_id),
        NOT EXISTS (SELECT FROM active_series._pending AS p WHERE p.txid = txid_current())
    FROM new_metric AS n
    HAVING count(*) > 0;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._track_metric_insert() IS
'Trigger: note a statement''s new metrics for the transaction''s commit-time recording.';

CREATE TRIGGER metric_track_ingest
AFTER INSERT ON active_series.metric
REFERENCING NEW TABLE AS new_metric
FOR EACH STATEMENT
EXECUTE FUNCTION active_series._track_metric_insert();
