CREATE FUNCTION active_series._record_activity(p_report_benchmark_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
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
    v_first active_series._benchmark_batch;
    v_group active_series._benchmark_batch;
    v_prev active_series._benchmark_batch;
    v_one_time boolean;
    v_known boolean := true;
    v_period timestamptz;
    v_ctids tid [];
    v_last_seen timestamptz [];
    v_rest active_series._benchmark_batch [];
    v_seen active_series._benchmark_seen;
    v_new active_series._period_delta [] := ARRAY[]::active_series._period_delta [];
    v_delta active_series._period_delta;
    v_foreign record;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    -- Each report_benchmark with metrics, as a batch of its own (its periods left out),
    -- sorted by (organization, created, testbed, benchmark). Each is looked up on its own
    -- (OFFSET 0 keeps the LATERAL subquery a per-row index lookup) and its measures come
    -- sorted from the metric index: whatever the statistics said when this plan was
    -- cached (an empty table, say), nothing reads a whole table.
    v_batches := ARRAY(
        SELECT
            row(
                k.organization_id, k.testbed_id, k.benchmark_id, k.project_id, k.created,
                k.created, NULL, NULL, k.measure_ids, ARRAY[k.id],
                -- (a LIMIT, not EXISTS: never a hashed scan of the whole table)
                coalesce((
                    SELECT true FROM active_series._benchmark_seen AS s
                    WHERE s.organization_id = k.organization_id
                        AND s.testbed_id = k.testbed_id
                        AND s.benchmark_id = k.benchmark_id
                    LIMIT 1
                ), false)
            )::active_series._benchmark_batch
        FROM unnest(p_report_benchmark_ids) AS d (id)
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
        ORDER BY k.organization_id, k.created, k.testbed_id, k.benchmark_id
    );
    IF cardinality(v_batches) = 0 THEN
        RETURN;
    END IF;

    -- One organization and one created (one report, or reports of one transaction), each
    -- (testbed, benchmark) once: the batches are final, in key order, all in one period.
    v_first := v_batches[1];
    v_group := v_batches[cardinality(v_batches)];
    v_one_time := v_group.organization_id = v_first.organization_id
        AND v_group.first_seen = v_first.first_seen;
    IF v_one_time THEN
        FOREACH v_group IN ARRAY v_batches LOOP
            IF v_group.testbed_id = v_prev.testbed_id
                AND v_group.benchmark_id = v_prev.benchmark_id
            THEN
                v_one_time := false;
                EXIT;
            END IF;
            v_known := v_known AND v_group.known;
            v_prev := v_group;
        END LOOP;
    END IF;
    IF v_one_time THEN
        -- (the batches' min_period and max_period stand for v_period below)
        v_period := (active_series._period_for(
            v_first.organization_id, v_first.first_seen
        )).period_start;
    ELSE
        -- Otherwise one batch per (organization, testbed, benchmark), in key order; a
        -- period per distinct (organization, created).
        WITH periods AS MATERIALIZED (
            SELECT t.organization_id, t.created, f.period_start
            FROM (
                SELECT DISTINCT b.organization_id, b.first_seen AS created
                FROM unnest(v_batches) AS b
            ) AS t
            CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
        )
        SELECT
            array_agg(
                row(
                    g.organization_id, g.testbed_id, g.benchmark_id, g.project_id,
                    g.first_seen, g.last_seen, g.min_period, g.max_period, g.measure_ids,
                    g.report_benchmark_ids, g.known
                )::active_series._benchmark_batch
                ORDER BY g.organization_id, g.testbed_id, g.benchmark_id
            ),
            bool_and(g.known)
        INTO v_batches, v_known
        FROM (
            SELECT
                b.organization_id, b.testbed_id, b.benchmark_id,
                min(b.project_id) AS project_id,
                min(b.first_seen) AS first_seen,
                max(b.last_seen) AS last_seen,
                min(t.period_start) AS min_period,
                max(t.period_start) AS max_period,
                array_agg(DISTINCT m.id ORDER BY m.id) AS measure_ids,
                array_agg(DISTINCT b.report_benchmark_ids[1]) AS report_benchmark_ids,
                bool_and(b.known) AS known
            FROM unnest(v_batches) AS b
            INNER JOIN periods AS t
                ON t.organization_id = b.organization_id AND t.created = b.first_seen
            CROSS JOIN LATERAL unnest(b.measure_ids) AS m (id)
            GROUP BY b.organization_id, b.testbed_id, b.benchmark_id
        ) AS g;
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

    IF cardinality(v_batches) = 1 THEN
        -- one benchmark: the common case is one statement, which locks its one row
        v_group := v_batches[1];
        UPDATE active_series._benchmark_seen AS b
        SET last_seen = v_group.last_seen
        WHERE b.organization_id = v_group.organization_id
            AND b.testbed_id = v_group.testbed_id
            AND b.benchmark_id = v_group.benchmark_id
            AND v_group.first_seen = v_group.last_seen
            AND b.last_seen < v_group.last_seen
            AND b.period_start = coalesce(v_group.min_period, v_period)
            AND b.period_start = coalesce(v_group.max_period, v_period)
            AND b.measure_ids = v_group.measure_ids;
        IF NOT FOUND THEN
            v_rest := v_batches;
        END IF;
    ELSE
        -- Lock the batch's rows in key order: the LATERAL subquery runs once per element
        -- of v_batches, in the array's order (key order). Then the common case, for all
        -- such benchmarks at once: one newer report (all its metrics at one created) with
        -- the same measures, in the same period: its row (by ctid: locked, so it stays
        -- put) gets the new last_seen; the others remain for the general case.
        SELECT
            array_agg(l.ctid) FILTER (WHERE l.fast),
            array_agg(g.last_seen) FILTER (WHERE l.fast),
            array_agg(g) FILTER (WHERE NOT coalesce(l.fast, false))
        INTO v_ctids, v_last_seen, v_rest
        FROM unnest(v_batches) AS g
        LEFT JOIN LATERAL (
            SELECT
                b.ctid,
                g.first_seen = g.last_seen
                AND b.last_seen < g.last_seen
                AND b.period_start = coalesce(g.min_period, v_period)
                AND b.period_start = coalesce(g.max_period, v_period)
                AND b.measure_ids = g.measure_ids AS fast
            FROM active_series._benchmark_seen AS b
            WHERE b.organization_id = g.organization_id
                AND b.testbed_id = g.testbed_id
                AND b.benchmark_id = g.benchmark_id
            FOR UPDATE
        ) AS l ON true;
        IF v_ctids IS NOT NULL THEN
            UPDATE active_series._benchmark_seen AS b
            SET last_seen = x.last_seen
            FROM unnest(v_ctids, v_last_seen) AS x (ctid, last_seen)
            WHERE b.ctid = x.ctid;
        END IF;
    END IF;

    FOREACH v_group IN ARRAY coalesce(v_rest, ARRAY[]::active_series._benchmark_batch []) LOOP
        v_group.min_period := coalesce(v_group.min_period, v_period);
        v_group.max_period := coalesce(v_group.max_period, v_period);
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
        -- Nothing to record: activity no newer than recorded, in the benchmark's recorded
        -- period, of measures of its known set (each has its history row for that period)
        -- and none before that row's first_seen. Concurrent ingest of one benchmark ends
        -- here whenever the transaction that started later committed first; so do the
        -- other statements of one transaction time.
        IF v_group.last_seen <= v_seen.last_seen
            AND v_group.min_period = v_seen.period_start
            AND v_group.max_period = v_seen.period_start
            AND v_group.measure_ids <@ v_seen.measure_ids
            AND NOT coalesce((
                SELECT true FROM active_series._series_period AS h
                WHERE h.organization_id = v_group.organization_id
                    AND h.period_start = v_seen.period_start
                    AND h.testbed_id = v_group.testbed_id
                    AND h.benchmark_id = v_group.benchmark_id
                    AND h.measure_id = ANY(v_group.measure_ids)
                    AND h.first_seen > v_group.first_seen
                LIMIT 1
            ), false)
        THEN
            CONTINUE;
        END IF;
        -- The benchmark and the measures must be the report's project's (the testbed is, by
        -- its foreign key): a series never joins another project's or organization's
        -- catalog. Checked only on the way to the per-series path: the common case and the
        -- case above carry measures of the benchmark's known set, which all came this way.
        SELECT x.kind, x.id, x.project_id INTO v_foreign
        FROM (
            SELECT 'benchmark' AS kind, b.id, b.project_id
            FROM active_series.benchmark AS b
            WHERE b.id = v_group.benchmark_id
            UNION ALL
            SELECT 'measure', m.id, m.project_id
            FROM active_series.measure AS m
            WHERE m.id = ANY(v_group.measure_ids)
        ) AS x
        WHERE x.project_id <> v_group.project_id
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'active_series: % % belongs to project %, not to project % of the report',
                v_foreign.kind, v_foreign.id, v_foreign.project_id, v_group.project_id
                USING ERRCODE = 'foreign_key_violation',
                HINT = 'Use the ' || v_foreign.kind || ' of the same name in the report''s project.';
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
