CREATE TABLE active_series._testbed_period (
    testbed_id bigint NOT NULL
    REFERENCES active_series.testbed (id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    organization_id bigint NOT NULL,
    project_id bigint NOT NULL
    REFERENCES active_series.project (id) ON DELETE CASCADE,
    -- every series of the testbed active in the period: the union of its _shape_seen rows
    shape_id bigint NOT NULL REFERENCES active_series._shape (id) ON DELETE CASCADE,
    PRIMARY KEY (testbed_id, period_start),
    FOREIGN KEY (organization_id, period_start)
    REFERENCES active_series._period (organization_id, period_start) ON DELETE CASCADE
);
CREATE INDEX testbed_period_organization_id_period_start_idx
ON active_series._testbed_period (organization_id, period_start);
CREATE INDEX testbed_period_project_id_idx ON active_series._testbed_period (project_id);
CREATE INDEX testbed_period_shape_id_idx ON active_series._testbed_period (shape_id);
COMMENT ON TABLE active_series._testbed_period IS
'History, per testbed and billing period it was active in: the set of its series active in that period (a shape). _period_usage counts these sets; written when a testbed reports a series new to the period, kept forever.';
