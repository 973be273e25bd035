CREATE FUNCTION active_series._flush_pending()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Deferred (fires at commit) for the transaction's _pending row: records the activity of
-- every metric the transaction inserted, in one batch (_record_activity), and removes the
-- row. Still inside the ingest transaction: a failure here aborts the commit.
-- SECURITY DEFINER: it fires at commit as the ingesting role, which may neither write the
-- cache, history, counts and outbox nor call the internal functions that do; what it
-- records is derived from committed-to-be metric rows only, never from arguments.
DECLARE
    v_report_benchmark_ids bigint [];
BEGIN
    DELETE FROM active_series._pending AS p
    WHERE p.txid = NEW.txid
    RETURNING p.report_benchmark_ids INTO v_report_benchmark_ids;
    IF v_report_benchmark_ids IS NOT NULL THEN
        PERFORM active_series._record_activity(v_report_benchmark_ids);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._flush_pending() IS
'Trigger: at commit, record the activity of the metrics a transaction inserted.';

CREATE CONSTRAINT TRIGGER pending_flush
AFTER INSERT ON active_series._pending
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
EXECUTE FUNCTION active_series._flush_pending();
