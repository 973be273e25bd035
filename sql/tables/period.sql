CREATE TABLE active_series._period (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    PRIMARY KEY (organization_id, period_start),
    CHECK (period_end > period_start)
);
COMMENT ON TABLE active_series._period IS
'Every billing period an organization has had (with activity, or set by set_billing_period); periods of one organization never overlap. What the relay did with a period is the relay''s (_relay_period).';
