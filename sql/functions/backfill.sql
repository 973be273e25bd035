CREATE PROCEDURE active_series.backfill(p_batch_size integer DEFAULT 500)
LANGUAGE plpgsql
AS $$
-- (Re)builds series_last_seen, period history and counts from the metrics already in
-- the database, p_batch_size reports at a time (after a ramp of 1, 2, 4, ... reports),
-- committing after each batch so that ingest is never blocked for long; progress is
-- reported as NOTICEs. Additive and
-- idempotent: activity already recorded (also of deleted reports) is kept, and a second
-- run writes nothing. Runs the same code as the ingest trigger (_record_activity).
-- Call it outside a transaction block: CALL active_series.backfill();
-- Locks: a session advisory lock so that only one backfill runs at a time.
-- (A procedure that commits cannot carry SET search_path; every name is qualified.)
DECLARE
    v_lo bigint;
    v_max bigint;
    v_done bigint := 0;
    v_total bigint;
    v_rb bigint [];
    v_measures bigint [];
    v_org bigint;
    v_period timestamptz;
    v_batches bigint := 0;
    v_size bigint;
BEGIN
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'active_series: backfill batch size must be a positive number of reports'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_catalog.pg_try_advisory_lock(active_series._lock_key('backfill'), 0) THEN
        RAISE EXCEPTION 'active_series: another backfill is running'
            USING ERRCODE = 'lock_not_available';
    END IF;
    SELECT pg_catalog.min(r.id), pg_catalog.max(r.id), pg_catalog.count(*)
    INTO v_lo, v_max, v_total
    FROM active_series.report AS r;
    WHILE v_lo <= v_max LOOP
        -- Statements are planned once and cached; planned against empty cache tables
        -- (after an ANALYZE of them, e.g. a database-wide one) they scan whole tables, and
        -- one batch of many new series would grow those tables under the scans: quadratic.
        -- Batches of 1, 2, 4, ... reports, each followed by ANALYZE (which also replans),
        -- bound that growth until the statistics describe tables of real size.
        v_size := LEAST(p_batch_size::bigint, 1::bigint << LEAST(v_batches, 62)::integer);
        SELECT pg_catalog.array_agg(m.report_benchmark_id), pg_catalog.array_agg(m.measure_id)
        INTO v_rb, v_measures
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
        WHERE rb.report_id >= v_lo AND rb.report_id < v_lo + v_size;
        IF v_rb IS NOT NULL THEN
            PERFORM active_series._record_activity(v_rb, v_measures);
        END IF;
        SELECT v_done + pg_catalog.count(*) INTO v_done
        FROM active_series.report AS r
        WHERE r.id >= v_lo AND r.id < v_lo + v_size;
        v_lo := v_lo + v_size;
        v_batches := v_batches + 1;
        COMMIT;
        -- the history grows fastest at the start: fresh statistics (which also replan the
        -- cached statements) after each batch of the ramp, then after batches 16, 32, 64, ...
        IF v_size < p_batch_size OR v_batches & (v_batches - 1) = 0 THEN
            ANALYZE active_series._shape, active_series._shape_seen,
            active_series._testbed_period, active_series._period_usage, active_series._period;
            COMMIT;
        END IF;
        RAISE NOTICE 'active_series backfill: % of % reports', v_done, v_total;
    END LOOP;
    -- counts follow the history rows (repairs a drifted count)
    FOR v_org, v_period IN
        SELECT DISTINCT d.organization_id, d.period_start FROM active_series._count_drift AS d
    LOOP
        PERFORM active_series._recount_period(v_org, v_period);
    END LOOP;
    COMMIT;
    PERFORM pg_catalog.pg_advisory_unlock(active_series._lock_key('backfill'), 0);
    RAISE NOTICE 'active_series backfill: done, % reports', v_done;
END;
$$;
COMMENT ON PROCEDURE active_series.backfill (integer) IS
'Rebuild last_seen, period history and counts from existing metrics, in committed batches of reports (CALL it outside a transaction). Idempotent, additive, reports progress as NOTICEs.';
