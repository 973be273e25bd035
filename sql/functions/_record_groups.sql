CREATE FUNCTION active_series._record_groups(
    p_groups active_series._shape_group[],
    p_reason text DEFAULT 'ingest'
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- (as _record_activity: generic plans on index paths, whatever the statistics were)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Writes activity into the history (the words: docs/DESIGN-NOTES.md): each element of
-- p_groups says that a testbed reported these series within one (recorded) period between
-- first_seen and last_seen. Row writes follow what changed, never the number of series:
-- * activity of a shape the testbed already has a sighting of in the period widens that
--   sighting (its _shape_seen row's first_seen/last_seen: one HOT update; nothing when
--   already inside);
-- * activity the history already holds (a late commit, backfill over recorded data) writes
--   nothing;
-- * a shape new to the testbed in the period adds a sighting; when it holds series the
--   testbed had not reported in the period, the period shape (_testbed_period, the union of
--   the sightings) is replaced, and _period_usage grows by the difference;
-- * the shapes themselves are stored once (_shape) and shared by testbeds and periods.
-- Then an outbox row for each (organization, period) whose count changed.
-- Locks, in this order, so that concurrent callers cannot deadlock: the testbeds' history
-- locks (_lock_testbeds: every write to a testbed's history happens under it); the
-- empty variants and shapes it creates (_resolve_shapes; nobody waits for a shape); last,
-- the _period_usage rows in key order, and then the _period_watch rows (_check_rises) in
-- key order. The caller holds the organizations' period locks.
DECLARE
    v_groups active_series._shape_group [];
    v_todo integer;
    v_new active_series._shape_group [];
    v_unions active_series._shape_group [];
BEGIN
    PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(p_groups) AS g));

    -- one group per (testbed, period, shape), in key order
    SELECT
        array_agg(
            active_series._shape_group(
                p_organization_id => a.organization_id,
                p_project_id => a.project_id,
                p_testbed_id => a.testbed_id,
                p_period_start => a.period_start,
                p_first_seen => a.first_seen,
                p_last_seen => a.last_seen,
                p_shape_id => a.shape_id
            )
            ORDER BY a.testbed_id, a.period_start, a.shape_id
        ),
        count(*)
    INTO v_groups, v_todo
    FROM (
        SELECT
            g.testbed_id, g.period_start, g.shape_id,
            min(g.organization_id) AS organization_id, min(g.project_id) AS project_id,
            min(g.first_seen) AS first_seen, max(g.last_seen) AS last_seen
        FROM unnest(active_series._resolve_shapes(ARRAY(
            SELECT g FROM unnest(p_groups) AS g WHERE NOT active_series._covered(g)
        ))) AS g
        GROUP BY g.testbed_id, g.period_start, g.shape_id
    ) AS a;
    IF v_todo = 0 THEN
        RETURN;
    END IF;

    -- Shapes the testbed has a sighting of in the period: widen it. The others are new.
    PERFORM active_series._widen(v_groups);
    SELECT array_agg(g) INTO v_new
    FROM unnest(v_groups) AS g
    WHERE NOT coalesce((
        SELECT true
        FROM active_series._shape_seen AS s
        WHERE s.testbed_id = g.testbed_id
            AND s.period_start = g.period_start
            AND s.shape_id = g.shape_id
        LIMIT 1
    ), false);
    IF v_new IS NULL THEN
        RETURN;
    END IF;

    -- The period shape with the new sightings' shapes added, where that adds series: the new
    -- shape itself when the testbed had none (no unfolding), else the union unfolded
    WITH t AS (
        SELECT
            n.testbed_id, n.period_start,
            min(n.organization_id) AS organization_id, min(n.project_id) AS project_id,
            array_agg(DISTINCT n.shape_id) AS shape_ids,
            (
                SELECT p.shape_id FROM active_series._testbed_period AS p
                WHERE p.testbed_id = n.testbed_id AND p.period_start = n.period_start
            ) AS old_shape_id
        FROM unnest(v_new) AS n
        GROUP BY n.testbed_id, n.period_start
    )
    SELECT array_agg(
        active_series._shape_group(
            p_organization_id => t.organization_id,
            p_project_id => t.project_id,
            p_testbed_id => t.testbed_id,
            p_period_start => t.period_start,
            p_benchmark_ids => e.benchmark_ids,
            p_variant_ids => e.variant_ids,
            p_measure_ids => e.measure_ids,
            p_shape_id => CASE
                WHEN t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1
                    THEN t.shape_ids[1]
            END
        )
        ORDER BY t.testbed_id, t.period_start
    )
    INTO v_unions
    FROM t
    LEFT JOIN LATERAL (
        SELECT
            array_agg(x.b ORDER BY x.b, x.v, x.m) AS benchmark_ids,
            array_agg(x.v ORDER BY x.b, x.v, x.m) AS variant_ids,
            array_agg(x.m ORDER BY x.b, x.v, x.m) AS measure_ids
        FROM (
            SELECT e.b, e.v, e.m
            FROM active_series._shape AS s
            CROSS JOIN LATERAL unnest(s.benchmark_ids, s.variant_ids, s.measure_ids)
                AS e (b, v, m)
            WHERE s.id = ANY(t.shape_ids || t.old_shape_id)
            GROUP BY e.b, e.v, e.m
        ) AS x
    ) AS e ON NOT (t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1)
    WHERE t.old_shape_id IS NULL
        OR cardinality(e.measure_ids) > (
            SELECT o.series FROM active_series._shape AS o WHERE o.id = t.old_shape_id
        );
    IF v_unions IS NULL THEN
        -- (every new shape was inside the period shape: no count changes)
        INSERT INTO active_series._shape_seen AS s (
            testbed_id, period_start, shape_id, first_seen, last_seen
        )
        SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
        FROM unnest(v_new) AS n
        ORDER BY n.testbed_id, n.period_start, n.shape_id;
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM unnest(v_unions) AS u WHERE u.shape_id IS NULL) THEN
        v_unions := active_series._resolve_shapes(v_unions);
    END IF;

    -- the period shapes, and the counts by what they gained
    WITH old AS (
        SELECT
            u.*,
            (SELECT s.series FROM active_series._shape AS s WHERE s.id = u.shape_id) AS series,
            coalesce((
                SELECT s.series FROM active_series._shape AS s
                WHERE s.id = (
                    SELECT p.shape_id FROM active_series._testbed_period AS p
                    WHERE p.testbed_id = u.testbed_id AND p.period_start = u.period_start
                )
            ), 0) AS old_series
        FROM unnest(v_unions) AS u
    ),
    written AS (
        INSERT INTO active_series._testbed_period AS p (
            testbed_id, period_start, organization_id, project_id, shape_id
        )
        SELECT o.testbed_id, o.period_start, o.organization_id, o.project_id, o.shape_id
        FROM old AS o
        ORDER BY o.testbed_id, o.period_start
        ON CONFLICT (testbed_id, period_start) DO UPDATE SET shape_id = excluded.shape_id
    )
    INSERT INTO active_series._period_usage AS u (
        organization_id, period_start, project_id, series_count
    )
    SELECT o.organization_id, o.period_start, o.project_id, sum(o.series - o.old_series)
    FROM old AS o
    GROUP BY o.organization_id, o.period_start, o.project_id
    ORDER BY o.organization_id, o.period_start, o.project_id
    ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
    SET series_count = u.series_count + excluded.series_count;
    -- (each of those counts rose: the cap and the alerts)
    PERFORM active_series._check_rises(v_unions);

    INSERT INTO active_series._shape_seen AS s (
        testbed_id, period_start, shape_id, first_seen, last_seen
    )
    SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
    FROM unnest(v_new) AS n
    ORDER BY n.testbed_id, n.period_start, n.shape_id;

    PERFORM active_series._changed(c.organization_id, c.period_start, p_reason)
    FROM (
        SELECT DISTINCT u.organization_id, u.period_start
        FROM unnest(v_unions) AS u
        ORDER BY u.organization_id, u.period_start
    ) AS c;
END;
$$;
COMMENT ON FUNCTION active_series._record_groups(active_series._shape_group[], text) IS
'Internal: write sets of series reported by testbeds within periods into the history and the per-period counts (writes follow what changed, not the number of series).';
