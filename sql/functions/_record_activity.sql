CREATE FUNCTION active_series._record_activity(p_report_benchmark_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Records the activity of the metrics of some report_benchmarks (the ingest trigger
-- passes a whole transaction's at commit, backfill a batch of reports') in last_seen, the
-- period history and the per-period counts; appends an outbox row and a NOTIFY for each
-- organization whose count changed. Resolves metrics to (testbed, benchmark) summaries
-- with index lookups only; per-series detail (_activity_of) only for the general case.
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
    v_new active_series._period_delta [] := ARRAY[]::active_series._period_delta [];
    v_delta active_series._period_delta;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    FOR v_group IN
        WITH benchmarks AS MATERIALIZED (
            SELECT
                rb.id, rb.benchmark_id, r.project_id, r.testbed_id, r.created,
                p.organization_id
            FROM (SELECT DISTINCT x.id FROM unnest(p_report_benchmark_ids) AS x (id)) AS d
            INNER JOIN active_series.report_benchmark AS rb ON rb.id = d.id
            INNER JOIN active_series.report AS r ON r.id = rb.report_id
            INNER JOIN active_series.project AS p ON p.id = r.project_id
        ),
        periods AS MATERIALIZED (
            SELECT t.organization_id, t.created, f.period_start
            FROM (
                SELECT DISTINCT b.organization_id, b.created
                FROM benchmarks AS b
                WHERE EXISTS (
                    SELECT FROM active_series.metric AS m WHERE m.report_benchmark_id = b.id
                )
            ) AS t
            CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
        ),
        metrics AS (
            SELECT
                b.organization_id, b.project_id, b.testbed_id, b.benchmark_id, b.id,
                b.created, m.measure_id, t.period_start
            FROM benchmarks AS b
            INNER JOIN active_series.metric AS m ON m.report_benchmark_id = b.id
            INNER JOIN periods AS t
                ON t.organization_id = b.organization_id AND t.created = b.created
        )
        SELECT
            a.organization_id, a.testbed_id, a.benchmark_id,
            min(a.project_id) AS project_id,
            min(a.created) AS first_seen,
            max(a.created) AS last_seen,
            min(a.period_start) AS min_period,
            max(a.period_start) AS max_period,
            array_agg(DISTINCT a.measure_id ORDER BY a.measure_id) AS measure_ids,
            array_agg(DISTINCT a.id) AS report_benchmark_ids
        FROM metrics AS a
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id
        ORDER BY a.organization_id, a.testbed_id, a.benchmark_id
    LOOP
        -- the common case in one statement: one newer report (all its metrics at one
        -- created) with the same measures, in the same period
        UPDATE active_series._benchmark_seen AS b
        SET last_seen = v_group.last_seen
        WHERE b.organization_id = v_group.organization_id
            AND b.testbed_id = v_group.testbed_id
            AND b.benchmark_id = v_group.benchmark_id
            AND v_group.first_seen = v_group.last_seen
            AND b.last_seen < v_group.last_seen
            AND b.period_start = v_group.min_period
            AND b.period_start = v_group.max_period
            AND b.measure_ids = v_group.measure_ids;
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
        -- (appending element by element keeps a large backfill batch linear)
        FOREACH v_delta IN ARRAY active_series._record_benchmark_activity(
            v_seen, active_series._activity_of(v_group.report_benchmark_ids)
        ) LOOP
            v_new := array_append(v_new, v_delta);
        END LOOP;
    END LOOP;

    IF cardinality(v_new) > 0 THEN
        INSERT INTO active_series._period_usage AS u (
            organization_id, period_start, project_id, series_count
        )
        SELECT n.organization_id, n.period_start, n.project_id, sum(n.series)
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
COMMENT ON FUNCTION active_series._record_activity(bigint[]) IS
'Internal: record the activity of the metrics of some report_benchmarks in last_seen, history and counts (the commit-time ingest trigger and backfill share it).';
