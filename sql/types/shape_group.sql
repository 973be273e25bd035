-- Series a testbed reported within one billing period, between two times.
CREATE TYPE active_series._shape_group AS (
    organization_id bigint,
    project_id bigint,
    testbed_id bigint,
    period_start timestamptz,
    first_seen timestamptz,
    last_seen timestamptz,
    -- sorted by (benchmark, variant, measure), distinct; variant 0: the empty variant
    benchmark_ids bigint [],
    variant_ids bigint [],
    measure_ids bigint [],
    -- the _shape holding them, once resolved (_resolve_shapes)
    shape_id bigint
);
COMMENT ON TYPE active_series._shape_group IS
'A set of series of one testbed active in one billing period between first_seen and last_seen: what _record_groups writes into the history.';

-- The one constructor of the composite above, called with named arguments; what a call
-- leaves out is NULL. A SQL function without SET options: the planner inlines it into the
-- expression that calls it (no call at run time), under the caller's pinned search_path
-- (every name here is schema-qualified anyway).
CREATE FUNCTION active_series._shape_group(
    p_organization_id bigint,
    p_project_id bigint,
    p_testbed_id bigint,
    p_period_start timestamptz,
    p_first_seen timestamptz DEFAULT NULL,
    p_last_seen timestamptz DEFAULT NULL,
    p_benchmark_ids bigint[] DEFAULT NULL,
    p_variant_ids bigint[] DEFAULT NULL,
    p_measure_ids bigint[] DEFAULT NULL,
    p_shape_id bigint DEFAULT NULL
)
RETURNS active_series._shape_group
LANGUAGE sql
IMMUTABLE
AS $$
SELECT ROW(
    p_organization_id, p_project_id, p_testbed_id, p_period_start, p_first_seen, p_last_seen,
    p_benchmark_ids, p_variant_ids, p_measure_ids, p_shape_id
)::active_series._shape_group;
$$;
COMMENT ON FUNCTION active_series._shape_group(
    bigint, bigint, bigint, timestamptz, timestamptz, timestamptz, bigint[], bigint[], bigint[],
    bigint
) IS
'Internal: a recorder''s activity (_shape_group), built by field name.';
