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
