CREATE FUNCTION active_series._store_price(
    p_organization_id bigint,
    p_price jsonb,
    p_subscription_item_id text DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Keeps a copy of the organization's metered Stripe price (a Stripe price object as JSON,
-- its tiers expanded), replacing the previous one; NULL forgets it. Amounts are kept in
-- Stripe's exact _decimal forms (minor units), falling back to the integer fields; a
-- per-unit price's transform_quantity (divide_by, round) is kept with it (Stripe allows it
-- on per-unit prices only). Locks the organization's _price row.
DECLARE
    v_scheme text := coalesce(p_price ->> 'billing_scheme', 'per_unit');
    v_tiers jsonb := p_price -> 'tiers';
    v_transform jsonb := p_price -> 'transform_quantity';
    v_divide_by bigint;
    v_round text;
    v_bad text;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    DELETE FROM active_series._price AS p WHERE p.organization_id = p_organization_id;
    IF p_price IS NULL OR jsonb_typeof(p_price) = 'null' THEN
        RETURN;
    END IF;
    IF jsonb_typeof(p_price) <> 'object' OR p_price ->> 'id' IS NULL
        OR coalesce(p_price ->> 'currency', '') !~ '^[a-zA-Z]{3}$'
        OR v_scheme NOT IN ('per_unit', 'tiered') THEN
        RAISE EXCEPTION 'active_series: not a Stripe price object with an id, a currency and a billing scheme'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_scheme = 'tiered' AND (
        jsonb_typeof(v_tiers) IS DISTINCT FROM 'array' OR jsonb_array_length(v_tiers) = 0
    ) THEN
        RAISE EXCEPTION 'active_series: tiered price % has no tiers (read it with expand[]=...price.tiers)',
            p_price ->> 'id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(v_transform) = 'object' THEN
        v_round := v_transform ->> 'round';
        v_divide_by := CASE
            WHEN v_transform ->> 'divide_by' ~ '^[0-9]{1,18}$' THEN (v_transform ->> 'divide_by')::bigint
        END;
        IF v_scheme <> 'per_unit' THEN
            RAISE EXCEPTION 'active_series: price % has transform_quantity with billing scheme %: Stripe allows it on per_unit prices only',
                p_price ->> 'id', v_scheme
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF coalesce(v_divide_by, 0) < 1 OR v_round IS NULL OR v_round NOT IN ('up', 'down') THEN
            RAISE EXCEPTION 'active_series: price % has a transform_quantity other than {divide_by: a positive whole number, round: up or down}: %',
                p_price ->> 'id', v_transform
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    INSERT INTO active_series._price (
        organization_id, stripe_price_id, stripe_subscription_item_id, currency, billing_scheme,
        tiers_mode, unit_amount, unit_amount_decimal, read_at, transform_divide_by, transform_round
    )
    VALUES (
        p_organization_id,
        p_price ->> 'id',
        p_subscription_item_id,
        lower(p_price ->> 'currency'),
        v_scheme,
        CASE WHEN v_scheme = 'tiered' THEN p_price ->> 'tiers_mode' END,
        (p_price ->> 'unit_amount')::bigint,
        coalesce(p_price ->> 'unit_amount_decimal', p_price ->> 'unit_amount')::numeric,
        now(),
        v_divide_by,
        v_round
    );
    IF v_scheme <> 'tiered' THEN
        RETURN;
    END IF;
    INSERT INTO active_series._price_tier (
        organization_id, tier, up_to, flat_amount, flat_amount_decimal, unit_amount,
        unit_amount_decimal
    )
    SELECT
        p_organization_id,
        e.n,
        CASE WHEN e.t ->> 'up_to' IS NULL OR e.t ->> 'up_to' = 'inf' THEN NULL
            ELSE (e.t ->> 'up_to')::bigint END,
        (e.t ->> 'flat_amount')::bigint,
        coalesce(e.t ->> 'flat_amount_decimal', e.t ->> 'flat_amount')::numeric,
        (e.t ->> 'unit_amount')::bigint,
        coalesce(e.t ->> 'unit_amount_decimal', e.t ->> 'unit_amount')::numeric
    FROM jsonb_array_elements(v_tiers) WITH ORDINALITY AS e (t, n);
    -- Stripe's rules: up_to increases, only the last tier is unbounded
    SELECT format('tier %s', t.tier) INTO v_bad
    FROM (
        SELECT
            r.tier, r.up_to,
            lag(r.up_to) OVER (ORDER BY r.tier) AS previous,
            r.tier = max(r.tier) OVER () AS last
        FROM active_series._price_tier AS r
        WHERE r.organization_id = p_organization_id
    ) AS t
    WHERE (t.up_to IS NULL) <> t.last OR t.up_to <= t.previous
    ORDER BY t.tier
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'active_series: price %: % breaks the tier order (up_to must increase, only the last tier is unbounded)',
            p_price ->> 'id', v_bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._store_price(bigint, jsonb, text) IS
'Internal (the worker): store the organization''s metered Stripe price and its tiers as read from its subscription item; NULL forgets it.';
