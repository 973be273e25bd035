-- Activity of one series in one billing period, as gathered from a batch of metrics.
CREATE TYPE active_series._series_activity AS (
    organization_id bigint,
    project_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    measure_id bigint,
    period_start timestamptz,
    first_seen timestamptz,
    last_seen timestamptz
);
COMMENT ON TYPE active_series._series_activity IS
'A series'' first and last activity within one billing period, for one batch of metrics.';
