CREATE FUNCTION active_series._resolve_shapes(p_groups active_series._shape_group[])
RETURNS active_series._shape_group[]
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Fills in each group's shape_id: the stored shape with the same project and series, else
-- a new one. A new shape is checked first: its benchmarks and measures must be its
-- project's (a series never joins another project's catalog), and the empty variant of
-- each benchmark it reports without a variant is created. Shapes are never updated and
-- have no unique key (two transactions may store the same set; either serves), so
-- creating one waits for nobody.
-- Locks: the empty variants it creates (benchmark order), nothing else.
DECLARE
    v_groups active_series._shape_group [];
    v_foreign record;
    v_refusal jsonb;
BEGIN
    v_groups := ARRAY(
        SELECT active_series._shape_group(
            p_organization_id => g.organization_id,
            p_project_id => g.project_id,
            p_testbed_id => g.testbed_id,
            p_period_start => g.period_start,
            p_first_seen => g.first_seen,
            p_last_seen => g.last_seen,
            p_benchmark_ids => g.benchmark_ids,
            p_variant_ids => g.variant_ids,
            p_measure_ids => g.measure_ids,
            p_shape_id => coalesce(
                g.shape_id,
                active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
        )
        FROM unnest(p_groups) AS g
    );
    IF NOT EXISTS (SELECT FROM unnest(v_groups) AS g WHERE g.shape_id IS NULL) THEN
        RETURN v_groups;
    END IF;

    SELECT x.kind, x.id, x.project_id, x.report_project_id INTO v_foreign
    FROM (
        SELECT DISTINCT 'benchmark' AS kind, e.id, b.project_id, g.project_id AS report_project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids) AS e (id)
        INNER JOIN active_series.benchmark AS b ON b.id = e.id
        WHERE g.shape_id IS NULL
        UNION ALL
        SELECT DISTINCT 'measure', e.id, m.project_id, g.project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.measure_ids) AS e (id)
        INNER JOIN active_series.measure AS m ON m.id = e.id
        WHERE g.shape_id IS NULL
    ) AS x
    WHERE x.project_id <> x.report_project_id
    ORDER BY x.kind, x.id
    LIMIT 1;
    IF FOUND THEN
        v_refusal := jsonb_build_object(
            'sqlstate', '23503',
            'message', format(
                'active_series: %s %s belongs to project %s, not to project %s of the report',
                v_foreign.kind, v_foreign.id, v_foreign.project_id, v_foreign.report_project_id
            ),
            'detail', format(
                'A series is a testbed, benchmark, variant and measure of one project; %s %s '
                'is in project %s.', v_foreign.kind, v_foreign.id, v_foreign.project_id
            ),
            'hint', format(
                'Nothing of this transaction was written. Use the %s of the same name in '
                'project %s (the report''s), creating it there if needed.',
                v_foreign.kind, v_foreign.report_project_id
            )
        );
        -- within the commit-time recording (a trigger), _flush_pending raises it at the top:
        -- the groups with a new shape are left out, so that the recording ends cleanly
        IF pg_trigger_depth() > 0
            AND (
                current_setting('active_series._refusal', true) = 'defer'
                OR current_setting('active_series._refusal', true) LIKE '{%'
            ) THEN
            IF current_setting('active_series._refusal', true) = 'defer' THEN
                PERFORM set_config('active_series._refusal', v_refusal::text, true);
            END IF;
            RETURN ARRAY(SELECT g FROM unnest(v_groups) AS g WHERE g.shape_id IS NOT NULL);
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
    END IF;

    -- (without a variant table, every report_benchmark reports the empty variant)
    IF EXISTS (SELECT FROM active_series._attachment AS a WHERE a.role = 'variant') THEN
        INSERT INTO active_series.variant (benchmark_id, parameters)
        SELECT DISTINCT e.benchmark_id, '{}'::jsonb
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids, g.variant_ids) AS e (benchmark_id, variant_id)
        WHERE g.shape_id IS NULL AND e.variant_id = 0
        ORDER BY e.benchmark_id
        ON CONFLICT (benchmark_id, parameters) DO NOTHING;
    END IF;

    WITH missing AS (
        SELECT DISTINCT g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
    ),
    created AS (
        INSERT INTO active_series._shape (
            project_id, benchmark_ids, variant_ids, measure_ids, series
        )
        SELECT
            m.project_id, m.benchmark_ids, m.variant_ids, m.measure_ids,
            cardinality(m.measure_ids)
        FROM missing AS m
        RETURNING id, project_id, benchmark_ids, variant_ids, measure_ids
    )
    SELECT array_agg(
        active_series._shape_group(
            p_organization_id => g.organization_id,
            p_project_id => g.project_id,
            p_testbed_id => g.testbed_id,
            p_period_start => g.period_start,
            p_first_seen => g.first_seen,
            p_last_seen => g.last_seen,
            p_benchmark_ids => g.benchmark_ids,
            p_variant_ids => g.variant_ids,
            p_measure_ids => g.measure_ids,
            p_shape_id => coalesce(g.shape_id, c.id)
        )
    )
    INTO v_groups
    FROM unnest(v_groups) AS g
    LEFT JOIN created AS c
        ON g.shape_id IS NULL
        AND c.project_id = g.project_id
        AND c.benchmark_ids = g.benchmark_ids
        AND c.variant_ids = g.variant_ids
        AND c.measure_ids = g.measure_ids;
    RETURN v_groups;
END;
$$;
COMMENT ON FUNCTION active_series._resolve_shapes(active_series._shape_group[]) IS
'Internal: the stored shape of each group''s set of series, created (after the project check) when new.';
