CREATE UNLOGGED TABLE active_series._pending (
    txid bigint NOT NULL DEFAULT txid_current(),
    -- the statement's distinct (report_benchmark, measure) pairs, as two parallel arrays
    report_benchmark_ids bigint[] NOT NULL,
    measure_ids bigint[] NOT NULL,
    -- the transaction's first row: the one whose deferred trigger records them all
    head boolean NOT NULL
)
-- A row lives for one transaction, but its line pointer stays until vacuum: the heap grows
-- by a page per ~290 transactions between two vacuums. Vacuum leaves the pages in place
-- (reused), so that sessions plan txid lookups on the index rather than scanning a heap
-- that looked empty when they planned.
WITH (vacuum_truncate = false);
CREATE INDEX pending_txid_idx ON active_series._pending (txid);
COMMENT ON TABLE active_series._pending IS
'The (report_benchmark, measure) pairs each ingest statement inserted metrics for (a row per statement, summarized from its transition table), recorded and deleted at its transaction''s commit by a deferred trigger: never visible to other transactions.';
