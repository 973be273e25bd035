CREATE FUNCTION active_series._flush_pending()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Deferred (fires at commit) for the transaction's _pending row, inserted by its first
-- ingest statement (the later ones append to it): records the activity of every metric
-- the transaction inserted, in one batch (_record_activity), and deletes the row. Still
-- inside the ingest transaction: a failure aborts the commit.
-- SECURITY DEFINER: it fires at commit as the ingesting role, which may neither write the
-- cache, history, counts and outbox nor call the internal functions that do; what it
-- records is derived from committed-to-be metric rows only, never from arguments.
-- A refusal found deep inside the recording (the series cap, _check_usage; a series with
-- another project's benchmark or measure, _resolve_shapes) is noted in the transaction
-- setting active_series._refusal instead of raised there, and raised here, at the top:
-- the client then sees its message, detail and hint with one line of context, not the
-- nested statements of the recorder. (No exception block: that would cost a
-- subtransaction at every commit.)
DECLARE
    v_report_benchmark_ids bigint [];
    v_measure_ids bigint [];
    v_refusal jsonb;
    v_defer text;
BEGIN
    -- (set_config assigned, here and below: a simple expression, where PERFORM would run a
    -- query)
    v_defer := pg_catalog.set_config('active_series._refusal', 'defer', true);
    -- (the row as the last statement left it: NEW is the first statement's version)
    DELETE FROM active_series._pending AS p
    WHERE p.txid = NEW.txid
    RETURNING p.report_benchmark_ids, p.measure_ids
    INTO v_report_benchmark_ids, v_measure_ids;
    PERFORM active_series._record_activity(v_report_benchmark_ids, v_measure_ids);
    v_refusal := nullif(pg_catalog.current_setting('active_series._refusal'), v_defer)::jsonb;
    v_defer := pg_catalog.set_config('active_series._refusal', '', true);
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
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
