CREATE TABLE active_series._ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL,
    stripe_customer_id text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    value bigint NOT NULL CHECK (value >= 0),
    event_timestamp bigint NOT NULL,
    identifier text NOT NULL UNIQUE CHECK (length(identifier) <= 100),
    status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'sent', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    created timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated timestamptz NOT NULL DEFAULT clock_timestamp(),
    in_flight_until timestamptz,
    in_flight_on text
);
CREATE INDEX ledger_customer_timestamp_idx
ON active_series._ledger (stripe_customer_id, event_timestamp);
CREATE INDEX ledger_organization_idx ON active_series._ledger (organization_id, period_start);
CREATE INDEX ledger_open_idx ON active_series._ledger (organization_id)
WHERE status <> 'sent';
COMMENT ON TABLE active_series._ledger IS
'Every meter event the relay posts: written pending and committed before the Stripe call, then marked sent (or failed on a permanent refusal), so a worker killed mid-call resends exactly the same identifier, value and timestamp.';
COMMENT ON COLUMN active_series._ledger.in_flight_until IS
'Set while the post''s call may be in flight: the worker that wrote it promises the call ends by then, and clears it with the outcome.';
COMMENT ON COLUMN active_series._ledger.in_flight_on IS
'The server instance (_relay_instance) the worker making the call held its claim on. A claim on another instance (after a promotion or a restart, when the worker may be alive and still calling) leaves the organization alone until in_flight_until; on the same instance, the lost row lock means the worker is gone.';
