CREATE UNLOGGED TABLE active_series._pending (
    txid bigint NOT NULL DEFAULT txid_current(),
    report_benchmark_ids bigint[] NOT NULL,
    -- the transaction's first row: the one whose deferred trigger records them all
    head boolean NOT NULL
);
CREATE INDEX pending_txid_idx ON active_series._pending (txid);
COMMENT ON TABLE active_series._pending IS
'The report_benchmarks each ingest statement inserted metrics into (a row per statement), recorded and deleted at its transaction''s commit by a deferred trigger: never visible to other transactions.';
