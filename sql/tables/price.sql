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
    transform_divide_by bigint CHECK (transform_divide_by >= 1),
    transform_round text CHECK (transform_round IN ('up', 'down')),
    CHECK ((billing_scheme = 'tiered') = (tiers_mode IS NOT NULL)),
    CHECK (billing_scheme = 'tiered' OR unit_amount_decimal IS NOT NULL),
    CONSTRAINT _price_transform_quantity_check CHECK (
        (transform_divide_by IS NULL) = (transform_round IS NULL)
        AND (transform_divide_by IS NULL OR billing_scheme = 'per_unit')
    )
);
COMMENT ON TABLE active_series._price IS
'The metered Stripe price of each billed organization, as the worker last read it from the subscription item for the meter (with _price_tier). price_preview computes amounts from it. transform_divide_by and transform_round are the price''s transform_quantity (per-unit prices only): the quantity is divided by it and rounded before it is priced.';
