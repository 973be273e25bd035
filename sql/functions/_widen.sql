CREATE FUNCTION active_series._widen(p_groups active_series._shape_group[])
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- (at every ingest commit: a cached generic plan on index paths, as _record_activity)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- The groups whose set (shape_id) the testbed already reported in the period: that row's
-- first_seen and last_seen widened to take the group in (a HOT update; none when already
-- inside). Returns how many rows it updated. Each row is found by its own key lookup and
-- updated by its ctid: it stays put, since the caller holds the testbeds' history locks
-- (_lock_testbeds) and every write to a testbed's history happens under them.
DECLARE
    v_widened integer;
BEGIN
    WITH widened AS (
        UPDATE active_series._shape_seen AS s
        SET first_seen = least(s.first_seen, w.first_seen),
            last_seen = greatest(s.last_seen, w.last_seen)
        FROM (
            SELECT
                g.first_seen, g.last_seen,
                (
                    SELECT x.ctid
                    FROM active_series._shape_seen AS x
                    WHERE x.testbed_id = g.testbed_id
                        AND x.period_start = g.period_start
                        AND x.shape_id = g.shape_id
                        AND (g.first_seen < x.first_seen OR g.last_seen > x.last_seen)
                    LIMIT 1
                ) AS row_ctid
            FROM unnest(p_groups) AS g
        ) AS w
        WHERE s.ctid = w.row_ctid
        RETURNING 1
    )
    SELECT count(*) INTO v_widened FROM widened;
    RETURN v_widened;
END;
$$;
COMMENT ON FUNCTION active_series._widen(active_series._shape_group[]) IS
'Internal: widen the first and last activity of the sets testbeds already reported in a period to take in new activity.';
