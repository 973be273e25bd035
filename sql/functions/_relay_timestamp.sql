CREATE FUNCTION active_series._relay_timestamp(
    p_held_timestamp bigint,
    p_first_second bigint,
    p_last_second bigint,
    p_now bigint,
    OUT event_timestamp bigint,
    OUT due_second bigint
)
LANGUAGE sql
IMMUTABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The event timestamp of a period's next post, strictly after its held one
-- (p_held_timestamp; NULL: none) and inside the period, and the second from which it may
-- be posted (due_second; the caller defers a post not yet due and gives up on a timestamp
-- after p_last_second). The period's last min(1 hour, half the period, at least 1 s)
-- seconds are its tail. While the period runs and before its tail: `now`. Inside the
-- tail, time runs at half speed: the post made at tail start + 2k carries tail start + k,
-- so the changes of the tail's last hour are posted as they come (at most one every two
-- seconds) and its second half is left for the posts made after the period ends, one
-- second after another (its final value, then its corrections until the invoice is
-- final). NULL when a tail too short to halve (tiny test periods) leaves no second: the
-- change waits for the final post.
SELECT
    CASE
        WHEN p_now > p_last_second THEN greatest(c.after_held, c.half)
        WHEN greatest(c.after_held, p_now) < c.tail THEN greatest(c.after_held, p_now)
        WHEN c.slow < c.half THEN c.slow
    END,
    CASE
        WHEN p_now > p_last_second THEN greatest(c.after_held, c.half)
        WHEN greatest(c.after_held, p_now) < c.tail THEN greatest(c.after_held, p_now)
        WHEN c.slow < c.half THEN c.tail + 2 * (c.slow - c.tail)
    END
FROM (
    SELECT
        b.after_held,
        b.tail,
        b.tail + b.reserve / 2 AS half,
        greatest(b.after_held, b.tail + greatest(0, p_now - b.tail) / 2) AS slow
    FROM (
        SELECT
            a.after_held,
            a.reserve,
            p_last_second - a.reserve + 1 AS tail
        FROM (
            SELECT
                greatest(coalesce(p_held_timestamp + 1, p_first_second), p_first_second)
                    AS after_held,
                greatest(1, least(3600, (p_last_second - p_first_second + 1) / 2)) AS reserve
        ) AS a
    ) AS b
) AS c;
$$;
COMMENT ON FUNCTION active_series._relay_timestamp(bigint, bigint, bigint, bigint) IS
'Internal (relay): a period''s next post: its event timestamp (after its held one, inside the period; the tail runs at half speed, its second half kept for posts after the end) and the second it is due (NULL, NULL: waits for the final post).';
