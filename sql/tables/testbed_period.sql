CREATE TABLE active_series._testbed_period (
    testbed_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    -- (the testbed's: a project or organization deleted takes its testbeds' rows with it)
    organization_id bigint NOT NULL,
    project_id bigint NOT NULL,
    -- every series of the testbed active in the period: the union of its _shape_seen rows
    -- (no foreign key to _shape or _period: a key check locks the referenced row, and every
    -- testbed of an organization would lock the same few at the start of each period; sets
    -- are removed only when nothing refers to them, periods only after their histories)
    shape_id bigint NOT NULL,
    PRIMARY KEY (testbed_id, period_start)
);
CREATE INDEX testbed_period_organization_id_period_start_idx
ON active_series._testbed_period (organization_id, period_start);
CREATE INDEX testbed_period_shape_id_idx ON active_series._testbed_period (shape_id);
COMMENT ON TABLE active_series._testbed_period IS
'History, per testbed and billing period it was active in: the set of its series active in that period (a shape). _period_usage counts these sets; written when a testbed reports a series new to the period, kept forever.';
