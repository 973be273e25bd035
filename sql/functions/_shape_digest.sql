CREATE FUNCTION active_series._shape_digest(
    p_benchmark_ids bigint[],
    p_variant_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS uuid
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The lookup key of a shape (its arrays decide equality: a digest only narrows the search).
SELECT md5(p_benchmark_ids::text || p_variant_ids::text || p_measure_ids::text)::uuid;
$$;
COMMENT ON FUNCTION active_series._shape_digest(bigint[], bigint[], bigint[]) IS
'Internal: the digest under which a set of series is looked up in _shape.';
