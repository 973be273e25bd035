CREATE TABLE active_series._period (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    closed_at timestamptz,
    finalized_at timestamptz,
    billed_value bigint,
    drift_since timestamptz,
    PRIMARY KEY (organization_id, period_start),
    CHECK (period_end > period_start),
    CHECK (finalized_at IS NOT NULL OR (billed_value IS NULL AND drift_since IS NULL))
);
COMMENT ON TABLE active_series._period IS
'Every billing period an organization has had (with activity, or set by set_billing_period); periods of one organization never overlap.';
COMMENT ON COLUMN active_series._period.closed_at IS
'When the relay posted the period''s final value (its end plus the worker''s --grace); changes are still posted after it, until finalized_at.';
COMMENT ON COLUMN active_series._period.finalized_at IS
'When the relay stopped posting the period (its end plus the worker''s --invoice-grace: Stripe has finalized the invoice); later differences show in billing_drift.';
COMMENT ON COLUMN active_series._period.billed_value IS
'The value Stripe held for the period when it was finalized (NULL: the organization was not billed then).';
COMMENT ON COLUMN active_series._period.drift_since IS
'Since when period_usage differs from billed_value (set by the relay at finalization or when it sees a later change).';
