CREATE FUNCTION active_series.price_preview(
    p_organization_id bigint,
    p_period_start timestamptz DEFAULT NULL
)
RETURNS TABLE (
    period_start timestamptz,
    period_end timestamptz,
    active_series bigint,
    amount bigint,
    currency text,
    tiers_mode text,
    tiers jsonb,
    stripe_price_id text,
    price_read_at timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What the period starting at p_period_start (NULL: the current one) costs at the
-- organization's stored Stripe price: its exact active-series count, the amount in the
-- currency's minor unit (Stripe's computation: each tier's units at its decimal unit
-- amount plus its flat amount, the line rounded half up once), and per tier the units
-- and the unrounded amount. Amount, currency and tiers are NULL without a stored price.
-- Takes no locks.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the billing
-- tables themselves; it returns the organization named's count and price only.
DECLARE
    v_start timestamptz := p_period_start;
    v_end timestamptz;
    v_count bigint;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF v_start IS NULL THEN
        SELECT a.period_start, a.period_end INTO v_start, v_end
        FROM active_series._period_at(p_organization_id, now()) AS a;
    ELSE
        SELECT p.period_end INTO v_end
        FROM active_series._period AS p
        WHERE p.organization_id = p_organization_id AND p.period_start = v_start;
        IF v_end IS NULL AND isfinite(v_start) THEN
            SELECT a.period_end INTO v_end
            FROM active_series._period_at(p_organization_id, v_start) AS a
            WHERE a.period_start = v_start;
        END IF;
    END IF;
    v_count := active_series.period_usage(p_organization_id, v_start);
    RETURN QUERY
    SELECT
        v_start,
        v_end,
        v_count,
        (
            SELECT round(sum(b.amount))::bigint
            FROM active_series._price_breakdown(p_organization_id, v_count) AS b
        ),
        pr.currency,
        pr.tiers_mode,
        (
            SELECT jsonb_agg(
                jsonb_build_object(
                    'tier', b.tier,
                    'first_unit', b.first_unit,
                    'up_to', b.up_to,
                    'units', b.units,
                    'unit_amount_decimal', b.unit_amount_decimal,
                    'flat_amount_decimal', b.flat_amount_decimal,
                    'amount', b.amount
                )
                ORDER BY b.tier
            )
            FROM active_series._price_breakdown(p_organization_id, v_count) AS b
        ),
        pr.stripe_price_id,
        pr.read_at
    FROM (SELECT 1) AS one
    LEFT JOIN active_series._price AS pr ON pr.organization_id = p_organization_id;
END;
$$;
COMMENT ON FUNCTION active_series.price_preview(bigint, timestamptz) IS
'The period''s (NULL: current) exact count and what it costs at the organization''s stored Stripe price: amount in minor units, currency, and a per-tier breakdown.';
