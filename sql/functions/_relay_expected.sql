CREATE FUNCTION active_series._relay_expected(
    p_stripe_customer_id text,
    p_period_start timestamptz,
    p_period_end timestamptz
)
RETURNS TABLE (
    event_timestamp bigint,
    value bigint,
    status text,
    sent float8,
    window_start bigint,
    window_end bigint,
    expected bigint,
    shared boolean
)
LANGUAGE sql
STABLE
ROWS 1
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What a read of the meter's event summary must find to confirm a period's last post: that
-- post (_relay_held: its timestamp, value, status, and when its status was last written,
-- in Unix seconds), the summary window that holds exactly the period's events up to it
-- (minute-aligned: from the minute of the period's first second to the minute after the
-- post), the value the ledger expects Stripe to hold over that window (its last post in
-- the window, failed ones left out), and whether a later post shares the window (after
-- the post, in its minute: a later period's, so the summary cannot tell the period's
-- value then). One row: without a post, all NULL but window_start. Takes no locks.
SELECT
    h.event_timestamp,
    h.value,
    h.status,
    extract(EPOCH FROM l.updated)::float8,
    w.window_start,
    w.window_end,
    e.value,
    EXISTS (
        SELECT FROM active_series._ledger AS s
        WHERE
            s.stripe_customer_id = p_stripe_customer_id
            AND s.status <> 'failed'
            AND s.event_timestamp > h.event_timestamp AND s.event_timestamp < w.window_end
    )
FROM active_series._relay_window(p_period_start, p_period_end) AS r
LEFT JOIN active_series._relay_held(p_stripe_customer_id, p_period_start, p_period_end) AS h
    ON TRUE
LEFT JOIN active_series._ledger AS l ON h.ledger_id = l.id
CROSS JOIN LATERAL (
    SELECT
        r.first_second - r.first_second % 60 AS window_start,
        h.event_timestamp - h.event_timestamp % 60 + 60 AS window_end
) AS w
LEFT JOIN LATERAL (
    SELECT x.value
    FROM active_series._ledger AS x
    WHERE
        x.stripe_customer_id = p_stripe_customer_id
        AND x.status <> 'failed'
        AND x.event_timestamp >= w.window_start AND x.event_timestamp < w.window_end
    ORDER BY x.event_timestamp DESC
    LIMIT 1
) AS e ON TRUE;
$$;
COMMENT ON FUNCTION active_series._relay_expected(text, timestamptz, timestamptz) IS
'Internal (relay): a period''s last post, the event-summary window that confirms it, and the value the ledger expects Stripe to hold over it.';
