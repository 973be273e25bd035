CREATE VIEW active_series.usage AS
SELECT
    o.id AS organization_id,
    o.name AS organization_name,
    coalesce(b.plan, 'free') AS plan,
    b.stripe_customer_id,
    cp.period_start,
    cp.period_end,
    coalesce(sum(u.series_count), 0)::bigint AS active_series,
    coalesce(sum(u.series_count) FILTER (WHERE u.visibility = 'private'), 0)::bigint
        AS private_series,
    coalesce(sum(u.series_count) FILTER (WHERE u.visibility = 'public'), 0)::bigint
        AS public_series
FROM active_series._organization_rows() AS o
LEFT JOIN active_series.billing_account AS b ON b.organization_id = o.id
CROSS JOIN LATERAL active_series.current_period(o.id) AS cp
LEFT JOIN active_series._billed_usage AS u
    ON o.id = u.organization_id AND cp.period_start = u.period_start
GROUP BY o.id, o.name, b.plan, b.stripe_customer_id, cp.period_start, cp.period_end;
COMMENT ON VIEW active_series.usage IS
'Per organization: plan, Stripe customer, current billing period and its exact active-series count, split private/public.';
