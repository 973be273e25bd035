CREATE TABLE active_series._relay_confirmation (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    stripe_customer_id text NOT NULL,
    -- when the meter's event summary is to be read next (NULL: nothing to read)
    due_at timestamptz,
    -- the last read: the period's last post when read (its timestamp, per the ledger), the
    -- value the ledger expects in the window read, what the summary held, the window
    -- (minute-aligned Unix seconds) and when
    event_timestamp bigint,
    ledger_value bigint,
    stripe_value bigint,
    window_start bigint,
    window_end bigint,
    read_at timestamptz,
    -- posts made again since the last read that agreed, and why the last read failed
    reposts integer NOT NULL DEFAULT 0,
    last_error text,
    PRIMARY KEY (organization_id, period_start),
    CHECK ((read_at IS NULL) = (stripe_value IS NULL))
);
CREATE INDEX relay_confirmation_due_idx ON active_series._relay_confirmation (due_at)
WHERE due_at IS NOT NULL;
COMMENT ON TABLE active_series._relay_confirmation IS
'What Stripe held for a billing period, read from the meter''s event summary (not inferred from the ledger): the relay reads it once its posts have settled (--confirm-after) and again before the invoice grace ends; relay_status and relay_periods say in_sync only when the read agrees with the ledger''s last post.';
COMMENT ON COLUMN active_series._relay_confirmation.event_timestamp IS
'The timestamp of the period''s last post (per the ledger) when the summary was read: the read confirms that post only (a later post needs a read of its own).';
COMMENT ON COLUMN active_series._relay_confirmation.ledger_value IS
'What the summary should hold per the ledger: the value of the ledger''s last event in the window read.';
COMMENT ON COLUMN active_series._relay_confirmation.stripe_value IS
'The aggregated_value of the meter''s event summary for the customer over [window_start, window_end) at read_at: with last aggregation, the value Stripe bills.';
