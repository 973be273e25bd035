CREATE FUNCTION active_series._covered(p_group active_series._shape_group)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
-- (at every ingest commit: cached generic plans on index paths, as _record_activity)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Whether the testbed's history of the period already holds the group: each of its series
-- active there no later than p_group.first_seen and no earlier than p_group.last_seen (a
-- late commit, or backfill over recorded activity). Activity newer than everything recorded
-- for the testbed in the period is answered from one index range scan, without unfolding.
BEGIN
    RETURN coalesce((
        SELECT max(s.last_seen) >= p_group.last_seen
        FROM active_series._shape_seen AS s
        WHERE s.testbed_id = p_group.testbed_id AND s.period_start = p_group.period_start
    ), false)
    AND (
        SELECT count(*)
        FROM (
            SELECT e.b, e.v, e.m
            FROM active_series._shape_seen AS s
            CROSS JOIN LATERAL (
                SELECT h.benchmark_ids, h.variant_ids, h.measure_ids
                FROM active_series._shape AS h
                WHERE h.id = s.shape_id
                OFFSET 0
            ) AS h
            CROSS JOIN LATERAL unnest(h.benchmark_ids, h.variant_ids, h.measure_ids) AS e (b, v, m)
            WHERE s.testbed_id = p_group.testbed_id AND s.period_start = p_group.period_start
            GROUP BY e.b, e.v, e.m
            HAVING min(s.first_seen) <= p_group.first_seen AND max(s.last_seen) >= p_group.last_seen
        ) AS c
        INNER JOIN unnest(p_group.benchmark_ids, p_group.variant_ids, p_group.measure_ids)
            AS x (b, v, m)
            ON x.b = c.b AND x.v = c.v AND x.m = c.m
    ) = cardinality(p_group.measure_ids);
END;
$$;
COMMENT ON FUNCTION active_series._covered(active_series._shape_group) IS
'Internal: whether a testbed''s recorded history of a period already holds a group''s activity (nothing to write).';
