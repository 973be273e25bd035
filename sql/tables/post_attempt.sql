CREATE TABLE active_series._post_attempt (
    idempotency_key text NOT NULL,
    identifier text NOT NULL,
    created timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (idempotency_key, identifier)
);
CREATE INDEX post_attempt_created_idx ON active_series._post_attempt (created);
COMMENT ON TABLE active_series._post_attempt IS
'The idempotency key of each request the relay made to post meter events, with the ledger identifiers it carried (one for a v1 post, up to 100 for a v2 stream request), written before the request: Stripe validates meter events after answering and its error reports name a refused event by its request''s key. The relay deletes rows after 31 days (the Events API keeps events 30).';
