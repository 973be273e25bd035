-- One series' activity within one billing period (the history, unfolded).
CREATE TYPE active_series._series_span AS (
    organization_id bigint,
    project_id bigint,
    testbed_id bigint,
    period_start timestamptz,
    benchmark_id bigint,
    -- 0: the benchmark's empty variant
    variant_id bigint,
    measure_id bigint,
    first_seen timestamptz,
    last_seen timestamptz
);
COMMENT ON TYPE active_series._series_span IS
'A series'' first and last activity within one billing period: the history of one series, unfolded.';
