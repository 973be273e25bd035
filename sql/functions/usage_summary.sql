CREATE FUNCTION active_series.usage_summary(p_organization_id bigint)
RETURNS TABLE (
    organization_id bigint,
    organization_name text,
    plan text,
    period_start timestamptz,
    period_end timestamptz,
    active_series bigint,
    private_series bigint,
    public_series bigint,
    amount bigint,
    currency text,
    tiers jsonb,
    series_cap bigint,
    next_alert bigint,
    stripe_value bigint,
    stripe_in_sync boolean
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
ROWS 1
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- One row for a customer's usage page: the current period, its exact count (private and
-- public), the price preview, the cap, the next alert threshold above the count, and
-- whether Stripe holds the current count (per the relay's ledger; NULL when the
-- organization is not billed). Takes no locks.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the billing
-- tables themselves; it returns the organization named's usage only.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    RETURN QUERY
    SELECT
        o.id,
        o.name,
        coalesce(b.plan, 'free'),
        pp.period_start,
        pp.period_end,
        pp.active_series,
        coalesce((
            SELECT sum(u.series_count)
            FROM active_series._billed_usage AS u
            WHERE u.organization_id = o.id AND u.period_start = pp.period_start
                AND u.visibility = 'private'
        ), 0)::bigint,
        coalesce((
            SELECT sum(u.series_count)
            FROM active_series._billed_usage AS u
            WHERE u.organization_id = o.id AND u.period_start = pp.period_start
                AND u.visibility = 'public'
        ), 0)::bigint,
        pp.amount,
        pp.currency,
        pp.tiers,
        b.series_cap,
        (
            SELECT min(t.threshold)
            FROM active_series._alert_thresholds(o.id) AS t
            WHERE t.threshold > pp.active_series
        ),
        h.value,
        CASE
            WHEN b.plan <> 'free' AND b.stripe_customer_id IS NOT NULL
                THEN coalesce(h.value, 0) = pp.active_series AND coalesce(h.status, 'sent') = 'sent'
        END
    FROM active_series.organization AS o
    CROSS JOIN LATERAL active_series.price_preview(o.id) AS pp
    LEFT JOIN active_series.billing_account AS b ON b.organization_id = o.id
    LEFT JOIN LATERAL active_series._relay_held(
        b.stripe_customer_id, pp.period_start, pp.period_end
    ) AS h ON b.stripe_customer_id IS NOT NULL
    WHERE o.id = p_organization_id;
END;
$$;
COMMENT ON FUNCTION active_series.usage_summary(bigint) IS
'One row for a customer''s usage page: current period, exact count (private/public), price preview, cap, next alert threshold, and whether Stripe holds the count.';
