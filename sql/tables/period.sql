CREATE TABLE active_series._period (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    -- whether the organization watches its count (_watched: a series cap, an enabled alert
    -- threshold or a bounded price tier), kept by triggers/watch.sql: the ingest commit that
    -- raises the count reads it with the period and checks the cap and the alerts only then
    watched boolean NOT NULL DEFAULT false,
    PRIMARY KEY (organization_id, period_start),
    CHECK (period_end > period_start)
);
COMMENT ON TABLE active_series._period IS
'Every billing period an organization has had (with activity, or set by set_billing_period); periods of one organization never overlap. What the relay did with a period is the relay''s (_relay_period).';
