CREATE FUNCTION active_series._relay_window(
    p_period_start timestamptz,
    p_period_end timestamptz,
    OUT first_second bigint,
    OUT last_second bigint
)
LANGUAGE sql
IMMUTABLE
STRICT
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The whole Unix seconds inside [p_period_start, p_period_end): the event timestamps
-- that Stripe counts in that period. Pure arithmetic; takes no locks.
SELECT
    ceil(extract(EPOCH FROM p_period_start))::bigint,
    ceil(extract(EPOCH FROM p_period_end))::bigint - 1;
$$;
COMMENT ON FUNCTION active_series._relay_window(timestamptz, timestamptz) IS
'Internal: first and last whole Unix second inside a period, the range of meter event timestamps that belong to it.';
