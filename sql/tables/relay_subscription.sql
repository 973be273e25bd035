CREATE TABLE active_series._relay_subscription (
    organization_id bigint PRIMARY KEY,
    stripe_customer_id text NOT NULL,
    ended_at bigint,
    cancel_at bigint,
    billed_since bigint,
    stripe_price_id text,
    read_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE active_series._relay_subscription IS
'Relay bookkeeping per organization: when its Stripe customer''s subscriptions let Stripe bill usage, as the worker last read them (Unix seconds). ended_at: no subscription is live, the newest canceled one ended then (nothing is posted at or after it); cancel_at: the live subscription''s scheduled cancellation (the final value is posted before it); billed_since: the metered item bills usage from then on (added to the subscription, or its price changed, after the period began); stripe_price_id: the metered item''s price at that read. Kept in the database so that every worker, a restarted one too, respects them before its own first read of the subscription. A row of another customer than the organization''s billing account is ignored.';
