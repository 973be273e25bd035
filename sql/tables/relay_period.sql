CREATE TABLE active_series._relay_period (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    closed_at timestamptz,
    finalized_at timestamptz,
    billed_value bigint,
    drift_since timestamptz,
    PRIMARY KEY (organization_id, period_start),
    -- the relay's row goes with its period: removed when set_billing_period merges the
    -- period into another or drops it, kept (same start) when it is split or its end moves
    FOREIGN KEY (organization_id, period_start)
    REFERENCES active_series._period (organization_id, period_start)
    ON DELETE CASCADE ON UPDATE CASCADE,
    CHECK (finalized_at IS NOT NULL OR (billed_value IS NULL AND drift_since IS NULL))
);
COMMENT ON TABLE active_series._relay_period IS
'Relay bookkeeping per recorded billing period (_period): when it was closed and finalized, what Stripe billed for it and since when its usage differs. Written only by the relay''s rule functions (_relay_close_period, _relay_finalize_period, _relay_finalize_unbilled, _relay_note_drift); a period without a row is neither closed nor finalized.';
COMMENT ON COLUMN active_series._relay_period.closed_at IS
'When the relay posted the period''s final value (its end plus the worker''s --grace); changes are still posted after it, until finalized_at.';
COMMENT ON COLUMN active_series._relay_period.finalized_at IS
'When the relay stopped posting the period (its end plus the worker''s --invoice-grace: Stripe has finalized the invoice); later differences show in billing_drift.';
COMMENT ON COLUMN active_series._relay_period.billed_value IS
'The value Stripe held for the period when it was finalized (NULL: the organization was not billed then).';
COMMENT ON COLUMN active_series._relay_period.drift_since IS
'Since when period_usage differs from billed_value (set by the relay at finalization or when it sees a later change).';
