CREATE FUNCTION active_series._record_activity(p_report_benchmark_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths, so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
-- Records the activity of the metrics of some report_benchmarks (the ingest trigger
-- passes a whole transaction's at commit, backfill a batch of reports') in last_seen, the
-- period history and the per-period counts; appends an outbox row and a NOTIFY for each
-- organization whose count changed. Resolves metrics to (testbed, benchmark) summaries
-- with index lookups only; per-series detail (_activity_of) only for the general case.
--
-- The common case, a report whose benchmark carries the same measures as its previous
-- report in the same period, is one HOT update of that benchmark's _benchmark_seen row:
-- nothing per series, and one statement for all such benchmarks of the batch. Everything
-- else (a new benchmark or measure, a measure that stopped, a new period, activity older
-- than what is recorded) goes through _record_benchmark_activity, one (testbed,
-- benchmark) at a time in key order.
--
-- Locks, always in this order, so that concurrent transactions cannot deadlock: the
-- _benchmark_seen rows of the batch in key order (when one is new: first every row of
-- the batch inserted in key order, existing ones left alone, then all of them locked in
-- key order); then rows belonging to those benchmarks only (their _series_seen and
-- history rows); last, _period_usage rows in key order when a series is new in a period.
DECLARE
    v_batches active_series._benchmark_batch [];
    v_known boolean;
    v_rest active_series._benchmark_batch [];
    v_group active_series._benchmark_batch;
    v_seen active_series._benchmark_seen;
    v_new active_series._period_delta [] := ARRAY[]::active_series._period_delta [];
    v_delta active_series._period_delta;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    -- One summary per (organization, testbed, benchmark) with metrics, in key order, and
    -- whether all of them have a _benchmark_seen row already. Each report_benchmark is
    -- looked up on its own (OFFSET 0 keeps the LATERAL subquery a per-row index lookup)
    -- and its measures come sorted from the metric index: whatever the statistics said
    -- when this plan was cached (an empty table, say), nothing reads a whole table.
    WITH benchmarks AS MATERIALIZED (
        SELECT
            k.id, k.benchmark_id, k.project_id, k.testbed_id, k.created, k.organization_id,
            k.measure_ids
        FROM (SELECT DISTINCT x.id FROM unnest(p_report_benchmark_ids) AS x (id)) AS d
        CROSS JOIN LATERAL (
            SELECT
                rb.id, rb.benchmark_id, r.project_id, r.testbed_id, r.created,
                p.organization_id,
                ARRAY(
                    SELECT DISTINCT m.measure_id
                    FROM active_series.metric AS m
                    WHERE m.report_benchmark_id = rb.id
                    ORDER BY m.measure_id
                ) AS measure_ids
            FROM active_series.report_benchmark AS rb
            INNER JOIN active_series.report AS r ON r.id = rb.report_id
            INNER JOIN active_series.project AS p ON p.id = r.project_id
            WHERE rb.id = d.id
            OFFSET 0
        ) AS k
        WHERE k.measure_ids <> '{}'
    ),
    periods AS MATERIALIZED (
        SELECT t.organization_id, t.created, f.period_start
        FROM (SELECT DISTINCT b.organization_id, b.created FROM benchmarks AS b) AS t
        CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
    ),
    batches AS (
        SELECT
            b.organization_id, b.testbed_id, b.benchmark_id,
            min(b.project_id) AS project_id,
            min(b.created) AS first_seen,
            max(b.created) AS last_seen,
            min(t.period_start) AS min_period,
            max(t.period_start) AS max_period,
            CASE
                WHEN count(*) = 1 THEN min(b.measure_ids)
                ELSE ARRAY(
                    SELECT DISTINCT m.measure_id
                    FROM active_series.metric AS m
                    WHERE m.report_benchmark_id = ANY(array_agg(b.id))
                    ORDER BY m.measure_id
                )
            END AS measure_ids,
            array_agg(b.id) AS report_benchmark_ids
        FROM benchmarks AS b
        INNER JOIN periods AS t
            ON t.organization_id = b.organization_id AND t.created = b.created
        GROUP BY b.organization_id, b.testbed_id, b.benchmark_id
    )
    SELECT
        array_agg(
            row(
                g.organization_id, g.testbed_id, g.benchmark_id, g.project_id, g.first_seen,
                g.last_seen, g.min_period, g.max_period, g.measure_ids,
                g.report_benchmark_ids
            )::active_series._benchmark_batch
            ORDER BY g.organization_id, g.testbed_id, g.benchmark_id
        ),
        bool_and(EXISTS (
            SELECT FROM active_series._benchmark_seen AS s
            WHERE s.organization_id = g.organization_id
                AND s.testbed_id = g.testbed_id
                AND s.benchmark_id = g.benchmark_id
        ))
    INTO v_batches, v_known
    FROM batches AS g;
    IF v_batches IS NULL THEN
        RETURN;
    END IF;

    IF NOT v_known THEN
        -- a placeholder for each new one, every row of the batch in key order before any
        -- is locked (a concurrent first report of one waits here)
        INSERT INTO active_series._benchmark_seen AS b (
            organization_id, testbed_id, benchmark_id, project_id, last_seen, period_start,
            measure_ids
        )
        SELECT
            g.organization_id, g.testbed_id, g.benchmark_id, g.project_id, '-infinity',
            '-infinity', '{}'
        FROM unnest(v_batches) AS g
        ORDER BY g.organization_id, g.testbed_id, g.benchmark_id
        ON CONFLICT (organization_id, testbed_id, benchmark_id) DO NOTHING;
    END IF;
    -- lock the batch's rows in key order (LockRows runs above the sort)
    PERFORM
    FROM active_series._benchmark_seen AS b
    INNER JOIN unnest(v_batches) AS g
        ON b.organization_id = g.organization_id
            AND b.testbed_id = g.testbed_id
            AND b.benchmark_id = g.benchmark_id
    ORDER BY b.organization_id, b.testbed_id, b.benchmark_id
    FOR UPDATE OF b;

    -- the common case, for all such benchmarks at once: one newer report (all its metrics
    -- at one created) with the same measures, in the same period; the others remain
    WITH done AS (
        UPDATE active_series._benchmark_seen AS b
        SET last_seen = g.last_seen
        FROM unnest(v_batches) AS g
        WHERE b.organization_id = g.organization_id
            AND b.testbed_id = g.testbed_id
            AND b.benchmark_id = g.benchmark_id
            AND g.first_seen = g.last_seen
            AND b.last_seen < g.last_seen
            AND b.period_start = g.min_period
            AND b.period_start = g.max_period
            AND b.measure_ids = g.measure_ids
        RETURNING b.organization_id, b.testbed_id, b.benchmark_id
    )
    SELECT array_agg(g ORDER BY g.organization_id, g.testbed_id, g.benchmark_id)
    INTO v_rest
    FROM unnest(v_batches) AS g
    WHERE NOT EXISTS (
        SELECT FROM done AS d
        WHERE d.organization_id = g.organization_id
            AND d.testbed_id = g.testbed_id
            AND d.benchmark_id = g.benchmark_id
    );

    FOREACH v_group IN ARRAY coalesce(v_rest, ARRAY[]::active_series._benchmark_batch []) LOOP
        SELECT * INTO v_seen
        FROM active_series._benchmark_seen AS b
        WHERE b.organization_id = v_group.organization_id
            AND b.testbed_id = v_group.testbed_id
            AND b.benchmark_id = v_group.benchmark_id
        FOR UPDATE;
        IF NOT FOUND THEN
            -- (only if it was deleted since the batch's rows were inserted)
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
