CREATE FUNCTION active_series.set_stripe_customer(
    p_organization_id bigint,
    p_stripe_customer_id text,
    p_plan text DEFAULT 'pro'
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Links the organization to a Stripe customer on a plan (the relay posts only
-- organizations with a billed plan and a customer) and creates its relay state row.
-- Locks the billing_account row.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_stripe_customer_id IS NOT NULL AND p_stripe_customer_id !~ '^cus_[A-Za-z0-9]+$' THEN
        RAISE EXCEPTION 'active_series: % is not a Stripe customer id (cus_...)',
            quote_literal(p_stripe_customer_id)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_plan IS NULL OR p_plan !~ '^[a-z][a-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION 'active_series: plan must be a short lower-case name (got %)',
            coalesce(quote_literal(p_plan), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO active_series.billing_account AS b (organization_id, stripe_customer_id, plan)
    VALUES (p_organization_id, p_stripe_customer_id, p_plan)
    ON CONFLICT (organization_id) DO UPDATE
    SET stripe_customer_id = excluded.stripe_customer_id,
        plan = excluded.plan,
        updated_at = now();
    -- ON CONFLICT DO NOTHING does not wait for a worker that holds the row
    INSERT INTO active_series._relay_state (organization_id)
    VALUES (p_organization_id)
    ON CONFLICT ON CONSTRAINT _relay_state_pkey DO NOTHING;
    PERFORM active_series._changed(p_organization_id, NULL, 'customer');
END;
$$;
COMMENT ON FUNCTION active_series.set_stripe_customer(bigint, text, text) IS
'Link an organization to a Stripe customer (cus_...) on a plan (default ''pro'').';
