CREATE TABLE active_series._period_usage (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    project_id bigint NOT NULL,
    -- (never below 0: verify() recomputes it from the history; no CHECK, see _shape_seen)
    series_count bigint NOT NULL,
    PRIMARY KEY (organization_id, period_start, project_id),
    FOREIGN KEY (organization_id, period_start)
    REFERENCES active_series._period (organization_id, period_start) ON DELETE CASCADE
);
CREATE INDEX period_usage_project_id_idx ON active_series._period_usage (project_id);
COMMENT ON TABLE active_series._period_usage IS
'Number of series active per (organization, period, project): the sizes of its testbeds'' sets for the period (_testbed_period). period_usage reads O(projects) rows, never the series.';
