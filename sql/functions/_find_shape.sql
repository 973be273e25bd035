CREATE FUNCTION active_series._find_shape(
    p_project_id bigint,
    p_benchmark_ids bigint[],
    p_variant_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
-- (at every ingest commit: a cached generic plan on the digest index, as _record_activity)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- The stored shape of a project holding exactly these series (sorted parallel arrays), or
-- NULL: one probe of (project_id, digest), the arrays compared. With one set stored twice
-- (two transactions stored it at once), either serves.
BEGIN
    RETURN (
        SELECT s.id
        FROM active_series._shape AS s
        WHERE s.project_id = p_project_id
            AND s.digest = hash_array_extended(p_benchmark_ids || p_variant_ids || p_measure_ids, 0)
            AND s.benchmark_ids = p_benchmark_ids
            AND s.variant_ids = p_variant_ids
            AND s.measure_ids = p_measure_ids
        LIMIT 1
    );
END;
$$;
COMMENT ON FUNCTION active_series._find_shape(bigint, bigint[], bigint[], bigint[]) IS
'Internal: the stored shape holding exactly a set of series of a project, or NULL.';
