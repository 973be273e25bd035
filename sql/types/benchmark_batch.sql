-- The metrics of one batch for one (organization, testbed, benchmark), summarized.
CREATE TYPE active_series._benchmark_batch AS (
    organization_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    project_id bigint,
    -- smallest and greatest report.created of the batch's metrics
    first_seen timestamptz,
    last_seen timestamptz,
    -- smallest and greatest billing period of those
    min_period timestamptz,
    max_period timestamptz,
    -- the distinct measures (sorted)
    measure_ids bigint [],
    report_benchmark_ids bigint [],
    -- whether its _benchmark_seen row existed when the batch was read
    known boolean
);
COMMENT ON TYPE active_series._benchmark_batch IS
'The metrics of one batch for one (testbed, benchmark): their created and period bounds, measures and report_benchmarks, and whether the benchmark was seen before.';
