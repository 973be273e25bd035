CREATE FUNCTION active_series.count_active(
    p_organization_id bigint,
    p_from timestamptz,
    p_to timestamptz,
    p_visibility text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Series of the organization whose last_seen is in [p_from, p_to), in projects that are
-- not soft-deleted, optionally of one visibility. A series' last_seen lies in its latest
-- period, so only the history of periods from the one containing p_from on is read (an
-- index range scan on (organization_id, period_start) of _testbed_period). Series belong to
-- one testbed, and those of a testbed seen since p_to are a subset of those seen since
-- p_from: the count is, per testbed, |seen since p_from| - |seen since p_to|. The series seen
-- since a bound are the union of the sets of the _shape_seen rows whose last_seen is at or
-- after it; within one period its size is known without unfolding a set when those rows are
-- none, hold the period's whole set (_testbed_period.shape_id), are all of the period's rows,
-- or are rows of a period whose sets are disjoint (their sizes add up to the whole set's): the
-- sum of their sizes. For the testbeds where neither holds (rows of several periods, or
-- overlapping sets cut by a bound), the distinct sets they reported since p_from are cut
-- into parts (the series held by exactly the same of those sets, each set unfolded once
-- however many testbeds share it): a testbed has seen a part since p_from when it reported
-- one of the part's sets since then, last at the latest such report. Takes no locks.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the history
-- tables themselves; it returns a count of the organization named only.
DECLARE
    v_lower timestamptz;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_from IS NULL OR p_to IS NULL THEN
        RAISE EXCEPTION 'active_series: count_active needs both p_from and p_to'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_from > p_to THEN
        RAISE EXCEPTION 'active_series: window start % is after its end %', p_from, p_to
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Swap the two times: count_active(organization, from, to).';
    END IF;
    IF p_visibility IS NOT NULL AND p_visibility NOT IN ('public', 'private') THEN
        RAISE EXCEPTION 'active_series: visibility must be ''public'', ''private'' or NULL (got %)',
            quote_literal(p_visibility)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT max(p.period_start) INTO v_lower
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start <= p_from;

    RETURN (
        WITH seen AS MATERIALIZED (
            -- the testbeds' rows in the periods from v_lower on, with the sizes of their sets
            SELECT
                t.testbed_id, t.period_start, t.shape_id AS period_shape_id,
                u.series AS period_series, s.shape_id, s.last_seen, h.series
            FROM active_series._testbed_period AS t
            INNER JOIN active_series.project AS p ON p.id = t.project_id
            INNER JOIN active_series._shape AS u ON u.id = t.shape_id
            INNER JOIN active_series._shape_seen AS s
                ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
            INNER JOIN active_series._shape AS h ON h.id = s.shape_id
            WHERE t.organization_id = p_organization_id
                AND t.period_start >= coalesce(v_lower, '-infinity')
                AND p.deleted_at IS NULL
                AND (p_visibility IS NULL OR p.visibility = p_visibility)
        ),
        periods AS (
            SELECT
                g.testbed_id, g.rows_from > 0 AS active,
                -- the number of series seen since each bound (NULL: not known without
                -- unfolding the sets)
                CASE
                    WHEN g.rows_from = 0 THEN 0
                    WHEN g.whole_from OR g.rows_from = g.all_rows THEN g.period_series
                    WHEN g.sizes = g.period_series THEN g.sizes_from
                END AS since_from,
                CASE
                    WHEN g.rows_to = 0 THEN 0
                    WHEN g.whole_to OR g.rows_to = g.all_rows THEN g.period_series
                    WHEN g.sizes = g.period_series THEN g.sizes_to
                END AS since_to
            FROM (
                SELECT
                    x.testbed_id, min(x.period_series) AS period_series,
                    count(*) AS all_rows, sum(x.series) AS sizes,
                    count(*) FILTER (WHERE x.last_seen >= p_from) AS rows_from,
                    count(*) FILTER (WHERE x.last_seen >= p_to) AS rows_to,
                    coalesce(sum(x.series) FILTER (WHERE x.last_seen >= p_from), 0)
                        AS sizes_from,
                    coalesce(sum(x.series) FILTER (WHERE x.last_seen >= p_to), 0) AS sizes_to,
                    coalesce(bool_or(x.shape_id = x.period_shape_id AND x.last_seen >= p_from),
                        FALSE) AS whole_from,
                    coalesce(bool_or(x.shape_id = x.period_shape_id AND x.last_seen >= p_to),
                        FALSE) AS whole_to
                FROM seen AS x
                GROUP BY x.testbed_id, x.period_start
            ) AS g
        ),
        testbeds AS MATERIALIZED (
            SELECT
                q.testbed_id,
                count(*) FILTER (WHERE q.active) <= 1
                AND bool_and(q.since_from IS NOT NULL AND q.since_to IS NOT NULL) AS known,
                sum(q.since_from - q.since_to) AS active_series
            FROM periods AS q
            GROUP BY q.testbed_id
        ),
        -- the other testbeds' sets seen since p_from (a set in several periods: its latest row)
        slow AS MATERIALIZED (
            SELECT x.testbed_id, x.shape_id, max(x.last_seen) AS last_seen
            FROM testbeds AS b
            INNER JOIN seen AS x ON x.testbed_id = b.testbed_id
            WHERE NOT b.known AND x.last_seen >= p_from
            GROUP BY x.testbed_id, x.shape_id
        ),
        -- their distinct sets cut into parts: the series held by exactly the same sets
        -- (unfolded once per set, however many testbeds report it)
        parts AS MATERIALIZED (
            SELECT row_number() OVER () AS part, m.shape_ids, count(*) AS series
            FROM (
                -- (the sets in scan order, unsorted: a part listed in two orders is two parts,
                -- with the same result)
                SELECT array_agg(e.shape_id) AS shape_ids
                FROM (
                    SELECT
                        h.id AS shape_id, unnest(h.benchmark_ids) AS benchmark_id,
                        unnest(h.variant_ids) AS variant_id, unnest(h.measure_ids) AS measure_id
                    FROM active_series._shape AS h
                    WHERE h.id IN (SELECT z.shape_id FROM slow AS z)
                ) AS e
                GROUP BY e.benchmark_id, e.variant_id, e.measure_id
            ) AS m
            GROUP BY m.shape_ids
        )
        SELECT
            coalesce((SELECT sum(b.active_series) FROM testbeds AS b WHERE b.known), 0)
            -- a part's series are seen since p_from on a testbed with one of the part's
            -- sets seen since p_from, last at the latest of those
            + coalesce((
                SELECT sum(y.series)
                FROM (
                    SELECT min(a.series) AS series, max(z.last_seen) AS last_seen
                    FROM parts AS a
                    CROSS JOIN LATERAL unnest(a.shape_ids) AS k (shape_id)
                    INNER JOIN slow AS z ON z.shape_id = k.shape_id
                    GROUP BY z.testbed_id, a.part
                ) AS y
                WHERE y.last_seen < p_to
            ), 0)
    );
END;
$$;
COMMENT ON FUNCTION active_series.count_active(bigint, timestamptz, timestamptz, text) IS
'Number of series of an organization whose last_seen is in [p_from, p_to); p_visibility ''public''/''private'' or NULL for all; soft-deleted projects excluded.';
