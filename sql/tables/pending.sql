CREATE UNLOGGED TABLE active_series._pending (
    txid bigint NOT NULL DEFAULT txid_current(),
    -- the (report_benchmark, measure) pairs of the transaction's ingest statements, as two
    -- parallel arrays (each statement's distinct pairs appended to the row)
    report_benchmark_ids bigint[] NOT NULL,
    measure_ids bigint[] NOT NULL
)
-- A row lives for one transaction, but its line pointer stays until vacuum: the heap grows
-- by a page per ~290 transactions between two vacuums. Vacuum leaves the pages in place
-- (reused), so that sessions plan txid lookups on the index rather than scanning a heap
-- that looked empty when they planned.
WITH (vacuum_truncate = false);
-- (one row per transaction: the first statement inserts it, the later ones append to it)
CREATE UNIQUE INDEX pending_txid_key ON active_series._pending (txid);
COMMENT ON TABLE active_series._pending IS
'The (report_benchmark, measure) pairs a transaction''s ingest statements inserted metrics for (one row per transaction, each statement''s pairs appended from its transition table), recorded and deleted at its commit by a deferred trigger: never visible to other transactions.';
