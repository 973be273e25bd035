CREATE FUNCTION active_series._record_activity(p_groups active_series._series_activity [])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Records a batch of series activity (one element per series and period) in
-- series_last_seen, the period history and the per-period counts; appends an outbox row
-- and a NOTIFY for each organization whose count changed. Used by the ingest trigger and
-- by backfill, so both keep the same state.
--
-- Locks: series_last_seen rows in key order (the upsert), then history rows of those
-- same series only, then _period_usage rows in key order when a series is new in a
-- period. A row already current is not written: a series that reported earlier in the
-- same period costs one HOT update of series_last_seen per report and nothing else.
DECLARE
    v_moves active_series._series_move [];
    v_rest active_series._series_activity [];
    v_new active_series._series_activity [];
    v_more active_series._series_activity [];
BEGIN
    IF p_groups IS NULL OR cardinality(p_groups) = 0 THEN
        RETURN;
    END IF;

    -- 1. last_seen rises (GREATEST, monotonic); remember which series entered a new period
    WITH latest AS (
        SELECT DISTINCT ON (g.organization_id, g.testbed_id, g.benchmark_id, g.measure_id)
            g.organization_id, g.testbed_id, g.benchmark_id, g.measure_id,
            g.project_id, g.last_seen, g.period_start
        FROM unnest(p_groups) AS g
        ORDER BY g.organization_id, g.testbed_id, g.benchmark_id, g.measure_id,
            g.period_start DESC
    ),
    upserted AS (
        INSERT INTO active_series.series_last_seen AS s (
            organization_id, testbed_id, benchmark_id, measure_id,
            project_id, last_seen, period_start
        )
        SELECT
            l.organization_id, l.testbed_id, l.benchmark_id, l.measure_id,
            l.project_id, l.last_seen, l.period_start
        FROM latest AS l
        ORDER BY l.organization_id, l.testbed_id, l.benchmark_id, l.measure_id
        ON CONFLICT (organization_id, testbed_id, benchmark_id, measure_id) DO UPDATE
        SET last_seen = excluded.last_seen,
            period_start = excluded.period_start,
            period_changed = excluded.period_start <> s.period_start,
            previous_period_start = CASE
                WHEN excluded.period_start <> s.period_start THEN s.period_start
                ELSE s.previous_period_start
            END,
            previous_last_seen = CASE
                WHEN excluded.period_start <> s.period_start THEN s.last_seen
                ELSE s.previous_last_seen
            END
        WHERE s.last_seen < excluded.last_seen
        RETURNING
            s.organization_id, s.testbed_id, s.benchmark_id, s.measure_id, s.period_start,
            s.xmax = 0 AS inserted, s.period_changed,
            s.previous_period_start, s.previous_last_seen
    )
    SELECT array_agg(u::active_series._series_move)
    INTO v_moves
    FROM upserted AS u;

    -- 2. series new in their latest period get a history row (open: last_seen NULL);
    --    the period they left gets its final last_seen
    IF v_moves IS NOT NULL THEN
        WITH entering AS (
            SELECT m.*
            FROM unnest(v_moves) AS m
            WHERE m.inserted OR m.period_changed
        ),
        inserted AS (
            INSERT INTO active_series._series_period AS h (
                organization_id, period_start, testbed_id, benchmark_id, measure_id,
                project_id, first_seen, last_seen
            )
            SELECT
                g.organization_id, g.period_start, g.testbed_id, g.benchmark_id,
                g.measure_id, g.project_id, g.first_seen, NULL
            FROM entering AS e
            INNER JOIN unnest(p_groups) AS g
                ON g.organization_id = e.organization_id
                AND g.testbed_id = e.testbed_id
                AND g.benchmark_id = e.benchmark_id
                AND g.measure_id = e.measure_id
                AND g.period_start = e.period_start
            ORDER BY g.organization_id, g.period_start, g.testbed_id, g.benchmark_id,
                g.measure_id
            ON CONFLICT (organization_id, period_start, testbed_id, benchmark_id, measure_id)
            DO UPDATE SET first_seen = excluded.first_seen
            WHERE excluded.first_seen < h.first_seen
            RETURNING h.organization_id, h.project_id, h.testbed_id, h.benchmark_id,
                h.measure_id, h.period_start, h.first_seen, h.last_seen, h.xmax = 0 AS fresh
        ),
        -- (data-modifying WITH queries always run to completion, read or not)
        closed AS (
            UPDATE active_series._series_period AS h
            SET last_seen = greatest(h.last_seen, e.previous_last_seen)
            FROM entering AS e
            WHERE e.period_changed
                AND h.organization_id = e.organization_id
                AND h.period_start = e.previous_period_start
                AND h.testbed_id = e.testbed_id
                AND h.benchmark_id = e.benchmark_id
                AND h.measure_id = e.measure_id
                AND (h.last_seen IS NULL OR h.last_seen < e.previous_last_seen)
            RETURNING 1
        )
        SELECT array_agg(
            row(
                i.organization_id, i.project_id, i.testbed_id, i.benchmark_id,
                i.measure_id, i.period_start, i.first_seen, i.last_seen
            )::active_series._series_activity
        )
        INTO v_new
        FROM inserted AS i
        WHERE i.fresh;
    END IF;

    -- 3. everything else: activity of a series whose last_seen did not rise (an earlier
    --    statement of the same report, a concurrent later report, an explicit older
    --    created) and older periods of a batch spanning several. Usually nothing is written.
    SELECT array_agg(g)
    INTO v_rest
    FROM unnest(p_groups) AS g
    WHERE NOT EXISTS (
        SELECT
        FROM unnest(v_moves) AS m
        WHERE m.organization_id = g.organization_id
            AND m.testbed_id = g.testbed_id
            AND m.benchmark_id = g.benchmark_id
            AND m.measure_id = g.measure_id
            AND m.period_start = g.period_start
    );
    IF v_rest IS NOT NULL THEN
        WITH upserted AS (
            INSERT INTO active_series._series_period AS h (
                organization_id, period_start, testbed_id, benchmark_id, measure_id,
                project_id, first_seen, last_seen
            )
            SELECT
                g.organization_id, g.period_start, g.testbed_id, g.benchmark_id,
                g.measure_id, g.project_id, g.first_seen,
                CASE WHEN g.period_start < s.period_start THEN g.last_seen END
            FROM unnest(v_rest) AS g
            INNER JOIN active_series.series_last_seen AS s
                ON s.organization_id = g.organization_id
                AND s.testbed_id = g.testbed_id
                AND s.benchmark_id = g.benchmark_id
                AND s.measure_id = g.measure_id
            ORDER BY g.organization_id, g.period_start, g.testbed_id, g.benchmark_id,
                g.measure_id
            ON CONFLICT (organization_id, period_start, testbed_id, benchmark_id, measure_id)
            DO UPDATE SET
                first_seen = least(h.first_seen, excluded.first_seen),
                last_seen = CASE
                    WHEN h.last_seen IS NULL THEN NULL
                    ELSE greatest(h.last_seen, excluded.last_seen)
                END
            WHERE excluded.first_seen < h.first_seen
                OR (h.last_seen IS NOT NULL AND h.last_seen < excluded.last_seen)
            RETURNING h.organization_id, h.project_id, h.testbed_id, h.benchmark_id,
                h.measure_id, h.period_start, h.first_seen, h.last_seen, h.xmax = 0 AS fresh
        )
        SELECT array_agg(
            row(
                u.organization_id, u.project_id, u.testbed_id, u.benchmark_id,
                u.measure_id, u.period_start, u.first_seen, u.last_seen
            )::active_series._series_activity
        )
        INTO v_more
        FROM upserted AS u
        WHERE u.fresh;
        v_new := v_new || v_more;
    END IF;

    -- 4. counts: only when a series is new in a period; then tell the relay
    IF v_new IS NOT NULL AND cardinality(v_new) > 0 THEN
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
        ) AS c;
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(active_series._series_activity []) IS
'Internal: record a batch of series activity in last_seen, history and counts (the ingest trigger and backfill share it).';
