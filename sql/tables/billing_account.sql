CREATE TABLE active_series.billing_account (
    organization_id bigint PRIMARY KEY,
    stripe_customer_id text UNIQUE,
    plan text NOT NULL DEFAULT 'free',
    period_anchor timestamptz,
    period_interval interval CHECK (period_interval > interval '0'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    series_cap bigint CHECK (series_cap >= 0),
    CHECK ((period_anchor IS NULL) = (period_interval IS NULL))
);
COMMENT ON TABLE active_series.billing_account IS
'Billing settings of an organization: Stripe customer, plan, and the period anchor and interval (none: calendar months in UTC). Write it through set_stripe_customer and set_billing_period.';
COMMENT ON COLUMN active_series.billing_account.series_cap IS
'Hard cap (NULL: none): an ingest commit that would make a period''s count exceed it fails with SQLSTATE AS001 and writes nothing. Set it with set_series_cap.';
