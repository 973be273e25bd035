CREATE TABLE active_series._series_period (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    testbed_id bigint NOT NULL
    REFERENCES active_series.testbed (id) ON DELETE CASCADE,
    benchmark_id bigint NOT NULL
    REFERENCES active_series.benchmark (id) ON DELETE CASCADE,
    measure_id bigint NOT NULL
    REFERENCES active_series.measure (id) ON DELETE CASCADE,
    project_id bigint NOT NULL
    REFERENCES active_series.project (id) ON DELETE CASCADE,
    first_seen timestamptz NOT NULL,
    -- NULL while this is the series' latest period: then series_last_seen.last_seen holds it
    last_seen timestamptz,
    PRIMARY KEY (organization_id, period_start, testbed_id, benchmark_id, measure_id),
    FOREIGN KEY (organization_id, period_start)
    REFERENCES active_series._period (organization_id, period_start) ON DELETE CASCADE
);
CREATE INDEX series_period_testbed_id_idx ON active_series._series_period (testbed_id);
CREATE INDEX series_period_benchmark_id_idx ON active_series._series_period (benchmark_id);
CREATE INDEX series_period_measure_id_idx ON active_series._series_period (measure_id);
CREATE INDEX series_period_project_id_idx ON active_series._series_period (project_id);
COMMENT ON TABLE active_series._series_period IS
'History: one row per series per billing period it was active in; written once per period, kept forever (deleting a report never removes it).';
