CREATE FUNCTION active_series._relay_identifier(
    p_stripe_customer_id text, p_event_timestamp bigint, p_value bigint
)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The identifier of a meter event post (Stripe's duplicate check; each attempt's
-- idempotency key is this plus a fresh suffix). Deterministic: a customer
-- never gets two events with one timestamp, so (customer, timestamp, value) names a post,
-- also across ledger rebuilds. The worker calls this. Takes no locks.
SELECT 'as-' || p_stripe_customer_id || '-' || p_event_timestamp || '-' || p_value;
$$;
COMMENT ON FUNCTION active_series._relay_identifier(text, bigint, bigint) IS
'Internal: the identifier of a meter event post, from customer, timestamp and value.';
