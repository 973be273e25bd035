CREATE TABLE active_series._series_seen (
    organization_id bigint NOT NULL
    REFERENCES active_series.organization (id) ON DELETE CASCADE,
    testbed_id bigint NOT NULL
    REFERENCES active_series.testbed (id) ON DELETE CASCADE,
    benchmark_id bigint NOT NULL
    REFERENCES active_series.benchmark (id) ON DELETE CASCADE,
    measure_id bigint NOT NULL
    REFERENCES active_series.measure (id) ON DELETE CASCADE,
    project_id bigint NOT NULL
    REFERENCES active_series.project (id) ON DELETE CASCADE,
    last_seen timestamptz NOT NULL,
    period_start timestamptz NOT NULL,
    PRIMARY KEY (organization_id, testbed_id, benchmark_id, measure_id)
);
CREATE INDEX series_seen_period_idx ON active_series._series_seen (organization_id, period_start);
CREATE INDEX series_seen_testbed_id_idx ON active_series._series_seen (testbed_id);
CREATE INDEX series_seen_benchmark_id_idx ON active_series._series_seen (benchmark_id);
CREATE INDEX series_seen_measure_id_idx ON active_series._series_seen (measure_id);
CREATE INDEX series_seen_project_id_idx ON active_series._series_seen (project_id);
COMMENT ON TABLE active_series._series_seen IS
'last_seen of a series that is not in its benchmark''s newest measure set (a measure that stopped reporting, or an older report). Written only when a measure leaves or misses the set.';
