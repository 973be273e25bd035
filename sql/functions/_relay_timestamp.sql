CREATE FUNCTION active_series._relay_timestamp(
    p_held_timestamp bigint,
    p_first_second bigint,
    p_last_second bigint,
    p_now bigint
)
RETURNS bigint
LANGUAGE sql
IMMUTABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The event timestamp of a period's next post, strictly after its held one
-- (p_held_timestamp; NULL: none) and inside the period. The period's last
-- min(1 hour, half the period, at least 1 s) seconds are kept for posts made after it
-- ends: its final value, then its corrections until the invoice is final, one second
-- after another. While the period runs: `now`, or NULL in that tail (the change waits
-- for the final post). After its end: the next second of the tail. The caller defers a
-- timestamp after p_now and gives up on one after p_last_second.
SELECT CASE
    WHEN p_now > p_last_second THEN greatest(c.after_held, p_last_second - c.reserve + 1)
    WHEN greatest(c.after_held, p_now) <= p_last_second - c.reserve
        THEN greatest(c.after_held, p_now)
END
FROM (
    SELECT
        greatest(coalesce(p_held_timestamp + 1, p_first_second), p_first_second) AS after_held,
        greatest(1, least(3600, (p_last_second - p_first_second + 1) / 2)) AS reserve
) AS c;
$$;
COMMENT ON FUNCTION active_series._relay_timestamp(bigint, bigint, bigint, bigint) IS
'Internal (relay): the event timestamp of a period''s next post (after its held one, inside the period; its tail is kept for posts after its end: NULL while it runs and the change must wait for the final post).';
