CREATE TABLE active_series._outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL,
    period_start timestamptz,
    reason text NOT NULL DEFAULT 'ingest',
    created timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_organization_id_idx ON active_series._outbox (organization_id, id);
COMMENT ON TABLE active_series._outbox IS
'Append-only record that an organization''s count may have changed; the relay claims rows with FOR UPDATE SKIP LOCKED and deletes them once the count is posted. No foreign key: a queue must accept changes of an organization being deleted.';
