-- What the series_last_seen upsert did to one series.
CREATE TYPE active_series._series_move AS (
    organization_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    measure_id bigint,
    period_start timestamptz,
    inserted boolean,
    period_changed boolean,
    previous_period_start timestamptz,
    previous_last_seen timestamptz
);
COMMENT ON TYPE active_series._series_move IS
'A series whose last_seen rose in a batch: new, moved into a new period, or still in the same one.';
