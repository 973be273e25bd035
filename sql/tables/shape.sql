CREATE TABLE active_series._shape (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL,
    -- the series, sorted by (benchmark, variant, measure); variant 0 is the benchmark's
    -- empty variant (a report_benchmark without variant_id)
    benchmark_ids bigint[] NOT NULL,
    variant_ids bigint[] NOT NULL,
    measure_ids bigint[] NOT NULL,
    series integer NOT NULL CHECK (series > 0),
    -- the lookup key: a hash of the arrays end to end (one length: unambiguous); the arrays
    -- themselves decide equality. Lookups compute the same expression.
    digest bigint NOT NULL GENERATED ALWAYS AS (
        hash_array_extended(benchmark_ids || variant_ids || measure_ids, 0)
    ) STORED
);
CREATE INDEX shape_project_id_digest_idx ON active_series._shape (project_id, digest);
COMMENT ON TABLE active_series._shape IS
'A set of (benchmark, variant, measure) of one project, stored once and referenced: the series a testbed reported at one time (_shape_seen) or in a whole period (_testbed_period). Never changed; a hard delete of a benchmark, variant or measure re-records the history that referenced it.';
