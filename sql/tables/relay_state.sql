CREATE TABLE active_series._relay_state (
    organization_id bigint PRIMARY KEY,
    parked_at timestamptz,
    parked_reason text,
    next_attempt_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    last_event_timestamp bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((parked_at IS NULL) = (parked_reason IS NULL))
);
COMMENT ON TABLE active_series._relay_state IS
'Relay bookkeeping per organization: the row a worker locks (FOR UPDATE SKIP LOCKED) while it relays the organization, so at most one Stripe call per customer is in flight; parking, per-organization backoff, and the timestamp of the last event Stripe accepted.';
