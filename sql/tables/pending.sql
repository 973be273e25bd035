CREATE UNLOGGED TABLE active_series._pending (
    txid bigint PRIMARY KEY DEFAULT txid_current(),
    report_benchmark_ids bigint[] NOT NULL
);
COMMENT ON TABLE active_series._pending IS
'The report_benchmarks a transaction inserted metrics into, recorded at commit by a deferred trigger (one row per transaction, deleted by that trigger: never visible to others).';
