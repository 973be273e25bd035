CREATE VIEW active_series.relay_status AS
SELECT
    b.organization_id,
    b.stripe_customer_id,
    b.plan,
    cp.period_start,
    cp.period_end,
    u.period_usage,
    h.value AS stripe_value,
    h.status AS stripe_value_status,
    -- in sync: the ledger's last post is sent and equals the usage, and the meter's event
    -- summary, read after that post, held the same (nothing posted: nothing to confirm)
    coalesce(h.value, 0) = u.period_usage AND coalesce(h.status, 'sent') = 'sent'
    AND (
        h.value IS NULL
        OR coalesce(
            rc.event_timestamp = h.event_timestamp AND rc.stripe_value = rc.ledger_value, FALSE
        )
    )
        AS in_sync,
    coalesce(x.depth, 0) AS outbox_depth,
    now() - x.oldest AS oldest_unposted_change_age,
    s.parked_at IS NOT NULL AS parked,
    s.parked_reason,
    s.next_attempt_at,
    s.attempts,
    s.last_event_timestamp,
    -- the ledger agrees, Stripe's event summary has not confirmed it (yet)
    coalesce(
        h.value = u.period_usage AND h.status = 'sent'
        AND rc.event_timestamp IS DISTINCT FROM h.event_timestamp,
        FALSE
    ) AS confirming,
    rc.stripe_value AS stripe_summary,
    rc.read_at AS stripe_summary_at
FROM active_series.billing_account AS b
-- current_period and period_usage written out as one probe each: the view is polled over
-- every billed organization, and their calls cost ~20 µs each per row. The recorded period
-- containing now(), else current_period (an organization with no activity yet in it).
CROSS JOIN
    LATERAL (
        (
            SELECT
                r.period_start,
                r.period_end
            FROM active_series._period AS r
            WHERE
                r.organization_id = b.organization_id
                AND r.period_start <= now()
                AND r.period_end > now()
            ORDER BY r.period_start DESC
            LIMIT 1
        )
        UNION ALL
        SELECT
            c.period_start,
            c.period_end
        FROM active_series.current_period(b.organization_id) AS c
        LIMIT 1
    ) AS cp
CROSS JOIN
    LATERAL (
        SELECT coalesce(sum(bu.series_count), 0)::bigint AS period_usage
        FROM active_series._billed_usage AS bu
        WHERE bu.organization_id = b.organization_id AND bu.period_start = cp.period_start
    ) AS u
-- _relay_held's rule, written out: the view is read by roles that may not call the relay's
-- internal functions (a view reads its tables with its owner's rights, but calls
-- functions with its reader's)
LEFT JOIN LATERAL (
    SELECT
        l.value,
        l.status,
        l.event_timestamp
    FROM active_series._ledger AS l
    WHERE
        l.stripe_customer_id = b.stripe_customer_id
        AND l.status <> 'failed'
        AND l.event_timestamp
        BETWEEN ceil(extract(EPOCH FROM cp.period_start))::bigint
        AND ceil(extract(EPOCH FROM cp.period_end))::bigint - 1
    ORDER BY l.event_timestamp DESC
    LIMIT 1
) AS h ON TRUE
LEFT JOIN LATERAL (
    SELECT
        count(*) AS depth,
        min(o.created) AS oldest
    FROM active_series._outbox AS o
    WHERE o.organization_id = b.organization_id
) AS x ON TRUE
LEFT JOIN active_series._relay_state AS s ON b.organization_id = s.organization_id
LEFT JOIN active_series._relay_confirmation AS rc
    ON b.organization_id = rc.organization_id AND cp.period_start = rc.period_start
WHERE b.plan <> 'free' AND b.stripe_customer_id IS NOT NULL;
COMMENT ON VIEW active_series.relay_status IS
'Per billed organization: current period, its exact usage, the value Stripe holds per the ledger, whether they agree and Stripe''s event summary confirmed it (in_sync; confirming: not yet read), outbox depth, age of the oldest unposted change, whether the relay is parked, and what the meter''s event summary held when last read.';
