CREATE TABLE active_series._price_tier (
    organization_id bigint NOT NULL
    REFERENCES active_series._price (organization_id) ON DELETE CASCADE,
    tier integer NOT NULL CHECK (tier >= 1),
    up_to bigint CHECK (up_to >= 1),
    flat_amount bigint,
    flat_amount_decimal numeric,
    unit_amount bigint,
    unit_amount_decimal numeric,
    PRIMARY KEY (organization_id, tier)
);
COMMENT ON TABLE active_series._price_tier IS
'The tiers of a tiered _price, in order: up_to is the tier''s last unit (NULL: no bound, the last tier); the _decimal amounts are Stripe''s exact ones, in minor units.';
