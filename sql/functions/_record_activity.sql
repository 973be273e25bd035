CREATE FUNCTION active_series._record_activity(p_activity active_series._series_activity[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Records a batch of series activity (one element per series and period: the ingest
-- trigger passes a whole transaction's metrics at commit, backfill a batch of reports)
-- in last_seen, the period history and the per-period counts; appends an outbox row and
-- a NOTIFY for each organization whose count changed.
--
-- One (testbed, benchmark) at a time, in key order. The common case, a report whose
-- benchmark carries the same measures as its previous report in the same period, is one
-- HOT update of that benchmark's _benchmark_seen row: nothing per series. Everything
-- else (a new benchmark or measure, a measure that stopped, a new period, activity older
-- than what is recorded) goes through _record_benchmark_activity.
--
-- Locks, always in this order, so that concurrent transactions cannot deadlock: the
-- _benchmark_seen rows of the batch in key order; then rows belonging to those
-- benchmarks only (their _series_seen and history rows); last, _period_usage rows in key
-- order when a series is new in a period.
DECLARE
    v_group record;
    v_seen active_series._benchmark_seen;
    v_new active_series._series_activity [] := ARRAY[]::active_series._series_activity [];
BEGIN
    IF p_activity IS NULL THEN
        RETURN;
    END IF;
    FOR v_group IN
        SELECT
            a.organization_id, a.testbed_id, a.benchmark_id,
            min(a.project_id) AS project_id,
            min(a.first_seen) AS first_seen,
            max(a.last_seen) AS last_seen,
            min(a.period_start) AS min_period,
            max(a.period_start) AS max_period,
            array_agg(DISTINCT a.measure_id ORDER BY a.measure_id) AS measure_ids,
            -- the measures of the batch's newest report of this benchmark
            array_agg(DISTINCT a.measure_id ORDER BY a.measure_id)
                FILTER (WHERE a.last_seen = a.benchmark_last) AS latest_measure_ids
        FROM (
            SELECT
                x.*,
                max(x.last_seen) OVER (
                    PARTITION BY x.organization_id, x.testbed_id, x.benchmark_id
                ) AS benchmark_last
            FROM unnest(p_activity) AS x
        ) AS a
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id
        ORDER BY a.organization_id, a.testbed_id, a.benchmark_id
    LOOP
        -- the common case in one statement: same measures, same period, a newer report
        UPDATE active_series._benchmark_seen AS b
        SET last_seen = v_group.last_seen
        WHERE b.organization_id = v_group.organization_id
            AND b.testbed_id = v_group.testbed_id
            AND b.benchmark_id = v_group.benchmark_id
            AND b.last_seen <= v_group.first_seen
            AND b.last_seen < v_group.last_seen
            AND b.period_start = v_group.min_period
            AND b.period_start = v_group.max_period
            AND b.measure_ids = v_group.measure_ids
            AND b.measure_ids = v_group.latest_measure_ids;
        IF FOUND THEN
            CONTINUE;
        END IF;
        SELECT * INTO v_seen
        FROM active_series._benchmark_seen AS b
        WHERE b.organization_id = v_group.organization_id
            AND b.testbed_id = v_group.testbed_id
            AND b.benchmark_id = v_group.benchmark_id
        FOR UPDATE;
        IF NOT FOUND THEN
            -- a placeholder to lock (a concurrent first report of it waits here)
            INSERT INTO active_series._benchmark_seen AS b (
                organization_id, testbed_id, benchmark_id, project_id, last_seen,
                period_start, measure_ids
            )
            VALUES (
                v_group.organization_id, v_group.testbed_id, v_group.benchmark_id,
                v_group.project_id, '-infinity', '-infinity', '{}'
            )
            ON CONFLICT (organization_id, testbed_id, benchmark_id) DO NOTHING;
            SELECT * INTO STRICT v_seen
            FROM active_series._benchmark_seen AS b
            WHERE b.organization_id = v_group.organization_id
                AND b.testbed_id = v_group.testbed_id
                AND b.benchmark_id = v_group.benchmark_id
            FOR UPDATE;
        END IF;
        IF v_group.first_seen = v_seen.last_seen
            AND v_group.last_seen = v_seen.last_seen
            AND v_group.min_period = v_seen.period_start
            AND v_group.max_period = v_seen.period_start
            AND v_group.measure_ids <@ v_seen.measure_ids
        THEN
            -- nothing newer than recorded (another statement of the same transaction time)
            CONTINUE;
        END IF;
        v_new := v_new || active_series._record_benchmark_activity(
            v_seen,
            array(
                SELECT a
                FROM unnest(p_activity) AS a
                WHERE a.organization_id = v_group.organization_id
                    AND a.testbed_id = v_group.testbed_id
                    AND a.benchmark_id = v_group.benchmark_id
            )
        );
    END LOOP;

    IF cardinality(v_new) > 0 THEN
        INSERT INTO active_series._period_usage AS u (
            organization_id, period_start, project_id, series_count
        )
        SELECT n.organization_id, n.period_start, n.project_id, count(*)
        FROM unnest(v_new) AS n
        GROUP BY n.organization_id, n.period_start, n.project_id
        ORDER BY n.organization_id, n.period_start, n.project_id
        ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
        SET series_count = u.series_count + excluded.series_count;

        PERFORM active_series._changed(c.organization_id, c.period_start, 'ingest')
        FROM (
            SELECT DISTINCT n.organization_id, n.period_start
            FROM unnest(v_new) AS n
            ORDER BY n.organization_id, n.period_start
        ) AS c;
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(active_series._series_activity[]) IS
'Internal: record a batch of series activity in last_seen, history and counts (the commit-time ingest trigger and backfill share it).';
