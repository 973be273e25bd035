CREATE VIEW active_series.relay_periods AS
SELECT
    b.organization_id,
    b.stripe_customer_id,
    p.period_start,
    p.period_end,
    rp.closed_at,
    u.period_usage,
    h.value AS stripe_value,
    h.status AS stripe_value_status,
    coalesce(h.value, 0) = u.period_usage AND coalesce(h.status, 'sent') = 'sent'
    AND (
        h.value IS NULL
        OR coalesce(
            rc.event_timestamp = h.event_timestamp AND rc.stripe_value = rc.ledger_value, FALSE
        )
    )
        AS in_sync,
    coalesce(
        h.value = u.period_usage AND h.status = 'sent'
        AND rc.event_timestamp IS DISTINCT FROM h.event_timestamp,
        FALSE
    ) AS confirming,
    rc.stripe_value AS stripe_summary,
    rc.read_at AS stripe_summary_at
FROM active_series.billing_account AS b
INNER JOIN active_series._period AS p ON b.organization_id = p.organization_id
CROSS JOIN
    LATERAL (
        SELECT coalesce(sum(bu.series_count), 0)::bigint AS period_usage
        FROM active_series._billed_usage AS bu
        WHERE bu.organization_id = b.organization_id AND bu.period_start = p.period_start
    ) AS u
LEFT JOIN LATERAL active_series._relay_held(
    b.stripe_customer_id, p.period_start, p.period_end
) AS h ON TRUE
LEFT JOIN active_series._relay_confirmation AS rc
    ON p.organization_id = rc.organization_id AND p.period_start = rc.period_start
LEFT JOIN active_series._relay_period AS rp
    ON p.organization_id = rp.organization_id AND p.period_start = rp.period_start
WHERE b.stripe_customer_id IS NOT NULL;
COMMENT ON VIEW active_series.relay_periods IS
'Per organization with a Stripe customer and recorded billing period: the exact usage, the value Stripe holds for that period per the ledger, whether they agree and Stripe''s event summary confirmed it (in_sync; confirming: not yet read), what the summary held when last read, and when the period was closed.';
