CREATE FUNCTION active_series._price_breakdown(
    p_organization_id bigint,
    p_quantity bigint
)
RETURNS TABLE (
    tier integer,
    first_unit bigint,
    up_to bigint,
    units bigint,
    unit_amount_decimal numeric,
    flat_amount_decimal numeric,
    amount numeric
)
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What each tier of the organization's stored price charges for p_quantity units, unrounded
-- (minor units), as Stripe prices a metered item: graduated tiers charge each tier's units
-- at its unit amount plus the flat amount of every tier holding at least one unit; volume
-- tiers charge all units at the tier the total falls in, plus its flat amount. A tier's
-- range starts at 0, so a quantity of 0 falls in the first tier and is charged its flat
-- amount in both modes (Stripe "always bills the first flat rate tier when quantity=0").
-- per_unit prices are one tier, whose units are the quantity after the price's
-- transform_quantity (divided, rounded up or down) when it has one. No rows without a
-- stored price.
WITH price AS (
    SELECT p.billing_scheme, p.tiers_mode, p.unit_amount_decimal, p.transform_divide_by, p.transform_round
    FROM active_series._price AS p
    WHERE p.organization_id = p_organization_id
),

quantity AS (
    SELECT greatest(p_quantity, 0) AS q
),

tiers AS (
    SELECT
        t.tier, t.up_to, t.unit_amount_decimal, t.flat_amount_decimal,
        coalesce(lag(t.up_to) OVER (ORDER BY t.tier), 0) AS lower_bound
    FROM active_series._price_tier AS t
    WHERE t.organization_id = p_organization_id
),

volume_tier AS (
    SELECT min(t.tier) AS tier
    FROM tiers AS t
    CROSS JOIN quantity AS n
    WHERE t.up_to IS NULL OR n.q <= t.up_to
),

charged AS (
    SELECT
        t.tier,
        t.lower_bound + 1 AS first_unit,
        t.up_to,
        CASE
            WHEN pr.tiers_mode = 'volume'
                THEN CASE WHEN t.tier = v.tier THEN n.q ELSE 0 END
            ELSE greatest(least(n.q, coalesce(t.up_to, n.q)) - t.lower_bound, 0)
        END AS units,
        CASE
            WHEN pr.tiers_mode = 'volume' THEN t.tier = v.tier
            ELSE t.tier = 1 OR n.q > t.lower_bound
        END AS flat_charged,
        t.unit_amount_decimal,
        t.flat_amount_decimal
    FROM tiers AS t
    CROSS JOIN price AS pr
    CROSS JOIN quantity AS n
    CROSS JOIN volume_tier AS v
    WHERE pr.billing_scheme = 'tiered'
    UNION ALL
    SELECT
        1,
        1,
        NULL::bigint,
        CASE pr.transform_round
            WHEN 'up' THEN (n.q + pr.transform_divide_by - 1) / pr.transform_divide_by
            WHEN 'down' THEN n.q / pr.transform_divide_by
            ELSE n.q
        END,
        false,
        pr.unit_amount_decimal,
        NULL::numeric
    FROM price AS pr
    CROSS JOIN quantity AS n
    WHERE pr.billing_scheme = 'per_unit'
)

SELECT
    c.tier,
    c.first_unit,
    c.up_to,
    c.units,
    c.unit_amount_decimal,
    c.flat_amount_decimal,
    c.units * coalesce(c.unit_amount_decimal, 0)
    + CASE WHEN c.flat_charged THEN coalesce(c.flat_amount_decimal, 0) ELSE 0 END AS amount
FROM charged AS c
ORDER BY c.tier;
$$;
COMMENT ON FUNCTION active_series._price_breakdown(bigint, bigint) IS
'Internal: per tier of the organization''s stored price, the units and the unrounded amount (minor units) Stripe charges for a quantity (per_unit: the units after transform_quantity; a first tier''s flat amount also at 0).';
