CREATE FUNCTION active_series._track_metric_insert()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Statement-level AFTER INSERT on metric: notes which report_benchmarks the statement's
-- new metrics (its transition table) belong to in the transaction's _pending row. The
-- deferred trigger on _pending records them all at commit, in one batch, so that a
-- transaction of many statements takes its locks once, in key order.
-- Locks: only the transaction's own _pending row.
-- SECURITY DEFINER: it fires as the ingesting role (active_series_ingest), which may not
-- write _pending itself (else it could queue other transactions' report_benchmarks or
-- delete its own row to skip recording); it writes only what the transition table holds.
BEGIN
    INSERT INTO active_series._pending AS p (report_benchmark_ids)
    SELECT array_agg(DISTINCT n.report_benchmark_id)
    FROM new_metric AS n
    HAVING count(*) > 0
    ON CONFLICT (txid) DO UPDATE
    SET report_benchmark_ids = p.report_benchmark_ids || excluded.report_benchmark_ids;
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
