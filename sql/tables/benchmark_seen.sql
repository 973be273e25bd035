CREATE TABLE active_series._benchmark_seen (
    organization_id bigint NOT NULL
    REFERENCES active_series.organization (id) ON DELETE CASCADE,
    testbed_id bigint NOT NULL
    REFERENCES active_series.testbed (id) ON DELETE CASCADE,
    benchmark_id bigint NOT NULL
    REFERENCES active_series.benchmark (id) ON DELETE CASCADE,
    project_id bigint NOT NULL
    REFERENCES active_series.project (id) ON DELETE CASCADE,
    -- greatest report.created of any series of this (testbed, benchmark)
    last_seen timestamptz NOT NULL,
    -- the billing period containing last_seen (indexed: changes once per period)
    period_start timestamptz NOT NULL,
    -- the measures whose last_seen is last_seen: those of the newest report (sorted)
    measure_ids bigint[] NOT NULL,
    PRIMARY KEY (organization_id, testbed_id, benchmark_id)
) WITH (fillfactor = 50);
CREATE INDEX benchmark_seen_period_idx
ON active_series._benchmark_seen (organization_id, period_start);
CREATE INDEX benchmark_seen_testbed_id_idx ON active_series._benchmark_seen (testbed_id);
CREATE INDEX benchmark_seen_benchmark_id_idx ON active_series._benchmark_seen (benchmark_id);
CREATE INDEX benchmark_seen_project_id_idx ON active_series._benchmark_seen (project_id);
COMMENT ON TABLE active_series._benchmark_seen IS
'last_seen of the series of one (testbed, benchmark) that its newest report carried, stored once: a report writes one row per benchmark (a HOT update while its measures stay the same), not one per series. See the series_last_seen view.';
