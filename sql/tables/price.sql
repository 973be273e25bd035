CREATE TABLE active_series._price (
    organization_id bigint PRIMARY KEY,
    stripe_price_id text NOT NULL,
    stripe_subscription_item_id text,
    currency text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    billing_scheme text NOT NULL CHECK (billing_scheme IN ('per_unit', 'tiered')),
    tiers_mode text CHECK (tiers_mode IN ('graduated', 'volume')),
    unit_amount bigint,
    unit_amount_decimal numeric,
    read_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((billing_scheme = 'tiered') = (tiers_mode IS NOT NULL)),
    CHECK (billing_scheme = 'tiered' OR unit_amount_decimal IS NOT NULL)
);
COMMENT ON TABLE active_series._price IS
'The metered Stripe price of each billed organization, as the worker last read it from the subscription item for the meter (with _price_tier). price_preview computes amounts from it.';
