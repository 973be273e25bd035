-- The history period_series reads, as views: period_series is a plain SQL function that
-- the planner inlines into the caller's query (a set-returning function that is not
-- inlined stores every row it returns before the caller sees the first), so it runs with
-- its caller's rights; a view reads its table with its owner's. Granted to the roles that
-- may call period_series (sql/grants.sql; docs/roles.md says what that lets them see).
CREATE VIEW active_series._read_testbed_period AS
SELECT
    t.organization_id,
    t.period_start,
    t.project_id,
    t.testbed_id,
    t.shape_id
FROM active_series._testbed_period AS t;
COMMENT ON VIEW active_series._read_testbed_period IS
'Internal: _testbed_period as period_series reads it (with its owner''s rights).';

CREATE VIEW active_series._read_shape_seen AS
SELECT
    s.testbed_id,
    s.period_start,
    s.shape_id,
    s.first_seen,
    s.last_seen
FROM active_series._shape_seen AS s;
COMMENT ON VIEW active_series._read_shape_seen IS
'Internal: _shape_seen as period_series reads it (with its owner''s rights).';

CREATE VIEW active_series._read_shape AS
SELECT
    h.id,
    h.series,
    h.benchmark_ids,
    h.variant_ids,
    h.measure_ids
FROM active_series._shape AS h;
COMMENT ON VIEW active_series._read_shape IS
'Internal: _shape as period_series reads it (with its owner''s rights).';

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
LANGUAGE sql
STABLE
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
-- Plain SQL, no SET clause, not SECURITY DEFINER: the planner inlines it into the caller's
-- query, so the rows stream out instead of being stored first. It runs with the caller's
-- rights and search_path: it reads the history through the _read_* views (their owner's
-- rights), and names every function, operator and type by its schema. current_period
-- (SECURITY DEFINER, the reader may call it) raises for a NULL or unknown organization, in
-- a one-time filter that runs before any row; with no period given it names the current
-- one.
WITH seen AS MATERIALIZED (
    SELECT
        t.project_id, t.testbed_id, s.shape_id, s.first_seen, s.last_seen,
        pg_catalog.sum(h.series) OVER (PARTITION BY t.testbed_id)
        OPERATOR(pg_catalog.=) u.series AS disjoint
    FROM active_series._read_testbed_period AS t
    INNER JOIN active_series.project AS p ON p.id OPERATOR(pg_catalog.=) t.project_id
    INNER JOIN active_series._read_shape AS u ON u.id OPERATOR(pg_catalog.=) t.shape_id
    INNER JOIN active_series._read_shape_seen AS s
        ON
            s.testbed_id OPERATOR(pg_catalog.=) t.testbed_id
            AND s.period_start OPERATOR(pg_catalog.=) t.period_start
    INNER JOIN active_series._read_shape AS h ON h.id OPERATOR(pg_catalog.=) s.shape_id
    WHERE
        t.organization_id OPERATOR(pg_catalog.=) p_organization_id
        AND t.period_start OPERATOR(pg_catalog.=) coalesce(
            p_period_start,
            (SELECT c.period_start FROM active_series.current_period(p_organization_id) AS c)
        )
        AND p.deleted_at IS NULL
),
-- each disjoint set with its variants as returned (variant 0: the benchmark's empty
-- variant, if any)
shapes AS MATERIALIZED (
    SELECT
        e.shape_id, pg_catalog.array_agg(e.benchmark_id) AS benchmark_ids,
        pg_catalog.array_agg(
            CASE WHEN e.variant_id OPERATOR(pg_catalog.=) 0 THEN v.id ELSE e.variant_id END
        ) AS variant_ids,
        pg_catalog.array_agg(e.measure_id) AS measure_ids
    FROM (
        SELECT
            h.id AS shape_id, pg_catalog.unnest(h.benchmark_ids) AS benchmark_id,
            pg_catalog.unnest(h.variant_ids) AS variant_id,
            pg_catalog.unnest(h.measure_ids) AS measure_id
        FROM active_series._read_shape AS h
        WHERE h.id OPERATOR(pg_catalog.=) ANY (SELECT w.shape_id FROM seen AS w WHERE w.disjoint)
    ) AS e
    LEFT JOIN active_series.variant AS v
        ON
            e.variant_id OPERATOR(pg_catalog.=) 0
            AND v.benchmark_id OPERATOR(pg_catalog.=) e.benchmark_id
            AND v.parameters OPERATOR(pg_catalog.=) '{}'::pg_catalog.jsonb
    GROUP BY e.shape_id
),
-- the distinct sets of the overlapping testbeds cut into parts: the series held by
-- exactly the same of those sets (each set unfolded once, however many testbeds share it)
parts AS MATERIALIZED (
    SELECT
        pg_catalog.row_number() OVER () AS part, m.shape_ids,
        pg_catalog.array_agg(m.benchmark_id) AS benchmark_ids,
        pg_catalog.array_agg(
            CASE WHEN m.variant_id OPERATOR(pg_catalog.=) 0 THEN v.id ELSE m.variant_id END
        ) AS variant_ids,
        pg_catalog.array_agg(m.measure_id) AS measure_ids
    FROM (
        SELECT
            e.benchmark_id, e.variant_id, e.measure_id,
            -- (the sets in scan order, unsorted: a part listed in two orders is two parts,
            -- with the same result)
            pg_catalog.array_agg(e.shape_id) AS shape_ids
        FROM (
            SELECT
                h.id AS shape_id, pg_catalog.unnest(h.benchmark_ids) AS benchmark_id,
                pg_catalog.unnest(h.variant_ids) AS variant_id,
                pg_catalog.unnest(h.measure_ids) AS measure_id
            FROM active_series._read_shape AS h
            WHERE
                h.id OPERATOR(pg_catalog.=) ANY (
                    SELECT w.shape_id FROM seen AS w WHERE NOT w.disjoint
                )
        ) AS e
        GROUP BY e.benchmark_id, e.variant_id, e.measure_id
    ) AS m
    LEFT JOIN active_series.variant AS v
        ON
            m.variant_id OPERATOR(pg_catalog.=) 0
            AND v.benchmark_id OPERATOR(pg_catalog.=) m.benchmark_id
            AND v.parameters OPERATOR(pg_catalog.=) '{}'::pg_catalog.jsonb
    GROUP BY m.shape_ids
)
-- (the arrays unfolded side by side in the select list: one pass, no tuplestore per row)
SELECT
    w.project_id, w.testbed_id, pg_catalog.unnest(h.benchmark_ids),
    pg_catalog.unnest(h.variant_ids), pg_catalog.unnest(h.measure_ids), w.first_seen,
    w.last_seen
FROM seen AS w
INNER JOIN shapes AS h ON h.shape_id OPERATOR(pg_catalog.=) w.shape_id
-- (the EXISTS has no variable: a one-time filter, evaluated before the first row is read; it
-- raises for a NULL or unknown organization, even where seen is known to be empty)
WHERE w.disjoint AND EXISTS (SELECT FROM active_series.current_period(p_organization_id))
UNION ALL
-- the overlapping testbeds: a part's series are in a testbed's rows whose set is one of
-- the part's sets, first and last seen at the earliest and latest of them
SELECT
    g.project_id, g.testbed_id, pg_catalog.unnest(a.benchmark_ids),
    pg_catalog.unnest(a.variant_ids), pg_catalog.unnest(a.measure_ids), g.first_seen,
    g.last_seen
FROM (
    SELECT
        w.project_id, w.testbed_id, a.part, pg_catalog.min(w.first_seen) AS first_seen,
        pg_catalog.max(w.last_seen) AS last_seen
    FROM parts AS a
    CROSS JOIN LATERAL pg_catalog.unnest(a.shape_ids) AS k (shape_id)
    INNER JOIN seen AS w ON w.shape_id OPERATOR(pg_catalog.=) k.shape_id
    WHERE NOT w.disjoint
    GROUP BY w.project_id, w.testbed_id, a.part
) AS g
INNER JOIN parts AS a ON a.part OPERATOR(pg_catalog.=) g.part
WHERE EXISTS (SELECT FROM active_series.current_period(p_organization_id));
$$;
COMMENT ON FUNCTION active_series.period_series(bigint, timestamptz) IS
'The series (testbed, benchmark, variant, measure) counted in a billing period (NULL: current) with their first and last activity in it: what the bill is made of.';
