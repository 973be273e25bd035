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
-- tiers charge all units at the tier the total falls in, plus its flat amount; per_unit
-- prices are one tier. Zero units cost nothing. No rows without a stored price.
WITH price AS (
    SELECT p.billing_scheme, p.tiers_mode, p.unit_amount_decimal
    FROM active_series._price AS p
    WHERE p.organization_id = p_organization_id
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
    WHERE t.up_to IS NULL OR p_quantity <= t.up_to
),

charged AS (
    SELECT
        t.tier,
        t.lower_bound + 1 AS first_unit,
        t.up_to,
        CASE
            WHEN p_quantity <= 0 THEN 0
            WHEN pr.tiers_mode = 'volume'
                THEN CASE WHEN t.tier = v.tier THEN p_quantity ELSE 0 END
            ELSE greatest(least(p_quantity, coalesce(t.up_to, p_quantity)) - t.lower_bound, 0)
        END AS units,
        t.unit_amount_decimal,
        t.flat_amount_decimal
    FROM tiers AS t
    CROSS JOIN price AS pr
    CROSS JOIN volume_tier AS v
    WHERE pr.billing_scheme = 'tiered'
    UNION ALL
    SELECT
        1, 1, NULL::bigint, greatest(p_quantity, 0), pr.unit_amount_decimal, NULL::numeric
    FROM price AS pr
    WHERE pr.billing_scheme = 'per_unit'
)

SELECT
    c.tier,
    c.first_unit,
    c.up_to,
    c.units,
    c.unit_amount_decimal,
    c.flat_amount_decimal,
    CASE
        WHEN c.units > 0
            THEN c.units * coalesce(c.unit_amount_decimal, 0) + coalesce(c.flat_amount_decimal, 0)
        ELSE 0
    END AS amount
FROM charged AS c
ORDER BY c.tier;
$$;
COMMENT ON FUNCTION active_series._price_breakdown(bigint, bigint) IS
'Internal: per tier of the organization''s stored price, the units and the unrounded amount (minor units) Stripe charges for a quantity.';
