CREATE TABLE active_series.series_last_seen (
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
    -- the billing period that contains last_seen (indexed: moves once per period)
    period_start timestamptz NOT NULL,
    -- scratch for the ingest trigger: whether the last update moved the series into a new
    -- period, and the period and last_seen it left (so that its history row can be closed)
    period_changed boolean NOT NULL DEFAULT false,
    previous_period_start timestamptz,
    previous_last_seen timestamptz,
    PRIMARY KEY (organization_id, testbed_id, benchmark_id, measure_id)
) WITH (fillfactor = 70);
CREATE INDEX series_last_seen_period_idx
ON active_series.series_last_seen (organization_id, period_start);
CREATE INDEX series_last_seen_testbed_id_idx ON active_series.series_last_seen (testbed_id);
CREATE INDEX series_last_seen_benchmark_id_idx ON active_series.series_last_seen (benchmark_id);
CREATE INDEX series_last_seen_measure_id_idx ON active_series.series_last_seen (measure_id);
CREATE INDEX series_last_seen_project_id_idx ON active_series.series_last_seen (project_id);
COMMENT ON TABLE active_series.series_last_seen IS
'One row per series: the greatest report.created ever recorded for it (only rises). last_seen is not indexed so that its per-report update stays a HOT update.';
