CREATE FUNCTION active_series._relay_timestamp(
    p_held_timestamp bigint,
    p_first_second bigint,
    p_last_second bigint,
    p_now bigint,
    OUT event_timestamp bigint,
    OUT due_second bigint
)
LANGUAGE plpgsql
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
-- final). A tail under a minute (periods under two minutes: tests, demos) is kept whole
-- for those: a change inside it waits for the final post (NULL, NULL). PL/pgSQL:
-- _relay_plan calls it for every period of a claim, and a row of OUT parameters from an
-- SQL function costs a set-returning call (about 20 µs against 3).
DECLARE
    after_held bigint := greatest(coalesce(p_held_timestamp + 1, p_first_second), p_first_second);
    reserve bigint := greatest(1, least(3600, (p_last_second - p_first_second + 1) / 2));
    tail bigint := p_last_second - reserve + 1;
    -- the first second kept for the posts after the period's end
    half bigint := tail + CASE WHEN reserve >= 60 THEN reserve / 2 ELSE 0 END;
    slow bigint := greatest(after_held, tail + greatest(0, p_now - tail) / 2);
BEGIN
    IF p_now > p_last_second THEN
        event_timestamp := greatest(after_held, half);
        due_second := event_timestamp;
    ELSIF greatest(after_held, p_now) < tail THEN
        event_timestamp := greatest(after_held, p_now);
        due_second := event_timestamp;
    ELSIF slow < half THEN
        event_timestamp := slow;
        due_second := tail + 2 * (slow - tail);
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._relay_timestamp(bigint, bigint, bigint, bigint) IS
'Internal (relay): a period''s next post: its event timestamp (after its held one, inside the period; the tail runs at half speed, its second half, or all of a tail under a minute, kept for posts after the end) and the second it is due (NULL, NULL: waits for the final post).';
