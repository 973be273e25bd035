CREATE FUNCTION active_series.period_series(
    p_organization_id bigint,
    p_period_start timestamptz DEFAULT NULL
)
RETURNS TABLE (
    project_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    variant_id bigint,
    measure_id bigint,
    first_seen timestamptz,
    last_seen timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The series a period's bill is made of, with their first and last activity in the
-- period (NULL period: the current one); soft-deleted projects excluded; in no particular
-- order. Takes no locks. A testbed whose sets in the period are disjoint (their sizes add up
-- to the size of its whole set, _testbed_period.shape_id: a single set, or reports of
-- separate parts) has each series in one _shape_seen row, whose first_seen and last_seen are
-- the series': its sets are unfolded as they are. The distinct sets of the testbeds with
-- overlapping sets are cut into parts (the series held by exactly the same of those sets),
-- each set unfolded once however many testbeds share it: a testbed has the parts of its
-- sets, first and last seen at the earliest and latest of its rows of the part's sets. The
-- empty variant's id, for variant 0, is looked up once per distinct series of the sets, not
-- per row.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the history
-- tables themselves; it returns the series of the organization named only.
DECLARE
    v_start timestamptz := p_period_start;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF v_start IS NULL THEN
        SELECT a.period_start INTO v_start
        FROM active_series._period_at(p_organization_id, now()) AS a;
    END IF;
    RETURN QUERY
    WITH seen AS MATERIALIZED (
        SELECT
            t.project_id, t.testbed_id, s.shape_id, s.first_seen, s.last_seen,
            sum(h.series) OVER (PARTITION BY t.testbed_id) = u.series AS disjoint
        FROM active_series._testbed_period AS t
        INNER JOIN active_series.project AS p ON p.id = t.project_id
        INNER JOIN active_series._shape AS u ON u.id = t.shape_id
        INNER JOIN active_series._shape_seen AS s
            ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
        INNER JOIN active_series._shape AS h ON h.id = s.shape_id
        WHERE t.organization_id = p_organization_id
            AND t.period_start = v_start
            AND p.deleted_at IS NULL
    ),
    -- each disjoint set with its variants as returned (variant 0: the benchmark's empty
    -- variant, if any)
    shapes AS MATERIALIZED (
        SELECT
            e.shape_id, array_agg(e.benchmark_id) AS benchmark_ids,
            array_agg(coalesce(v.id, nullif(e.variant_id, 0))) AS variant_ids,
            array_agg(e.measure_id) AS measure_ids
        FROM (
            SELECT
                h.id AS shape_id, unnest(h.benchmark_ids) AS benchmark_id,
                unnest(h.variant_ids) AS variant_id, unnest(h.measure_ids) AS measure_id
            FROM active_series._shape AS h
            WHERE h.id IN (SELECT w.shape_id FROM seen AS w WHERE w.disjoint)
        ) AS e
        LEFT JOIN active_series.variant AS v
            ON e.variant_id = 0 AND v.benchmark_id = e.benchmark_id AND v.parameters = '{}'::jsonb
        GROUP BY e.shape_id
    ),
    -- the distinct sets of the overlapping testbeds cut into parts: the series held by
    -- exactly the same of those sets (each set unfolded once, however many testbeds share it)
    parts AS MATERIALIZED (
        SELECT
            row_number() OVER () AS part, m.shape_ids,
            array_agg(m.benchmark_id) AS benchmark_ids,
            array_agg(coalesce(v.id, nullif(m.variant_id, 0))) AS variant_ids,
            array_agg(m.measure_id) AS measure_ids
        FROM (
            SELECT
                e.benchmark_id, e.variant_id, e.measure_id,
                -- (the sets in scan order, unsorted: a part listed in two orders is two parts,
                -- with the same result)
                array_agg(e.shape_id) AS shape_ids
            FROM (
                SELECT
                    h.id AS shape_id, unnest(h.benchmark_ids) AS benchmark_id,
                    unnest(h.variant_ids) AS variant_id, unnest(h.measure_ids) AS measure_id
                FROM active_series._shape AS h
                WHERE h.id IN (SELECT w.shape_id FROM seen AS w WHERE NOT w.disjoint)
            ) AS e
            GROUP BY e.benchmark_id, e.variant_id, e.measure_id
        ) AS m
        LEFT JOIN active_series.variant AS v
            ON m.variant_id = 0 AND v.benchmark_id = m.benchmark_id AND v.parameters = '{}'::jsonb
        GROUP BY m.shape_ids
    )
    -- (the arrays unfolded side by side in the select list: one pass, no tuplestore per row)
    SELECT
        w.project_id, w.testbed_id, unnest(h.benchmark_ids), unnest(h.variant_ids),
        unnest(h.measure_ids), w.first_seen, w.last_seen
    FROM seen AS w
    INNER JOIN shapes AS h ON h.shape_id = w.shape_id
    WHERE w.disjoint
    UNION ALL
    -- the overlapping testbeds: a part's series are in a testbed's rows whose set is one of
    -- the part's sets, first and last seen at the earliest and latest of them
    SELECT
        g.project_id, g.testbed_id, unnest(a.benchmark_ids), unnest(a.variant_ids),
        unnest(a.measure_ids), g.first_seen, g.last_seen
    FROM (
        SELECT
            w.project_id, w.testbed_id, a.part, min(w.first_seen) AS first_seen,
            max(w.last_seen) AS last_seen
        FROM parts AS a
        CROSS JOIN LATERAL unnest(a.shape_ids) AS k (shape_id)
        INNER JOIN seen AS w ON w.shape_id = k.shape_id
        WHERE NOT w.disjoint
        GROUP BY w.project_id, w.testbed_id, a.part
    ) AS g
    INNER JOIN parts AS a ON a.part = g.part;
END;
$$;
COMMENT ON FUNCTION active_series.period_series(bigint, timestamptz) IS
'The series (testbed, benchmark, variant, measure) counted in a billing period (NULL: current) with their first and last activity in it: what the bill is made of.';
