-- Where one series' last_seen was before a batch and where it is after.
CREATE TYPE active_series._series_state AS (
    measure_id bigint,
    prev_last timestamptz,
    prev_period timestamptz,
    new_last timestamptz,
    new_period timestamptz
);
COMMENT ON TYPE active_series._series_state IS
'A series'' last_seen and its period before and after a batch of activity of its benchmark.';
