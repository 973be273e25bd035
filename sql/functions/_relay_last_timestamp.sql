CREATE FUNCTION active_series._relay_last_timestamp(p_stripe_customer_id text)
RETURNS bigint
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The greatest event timestamp Stripe has or may have accepted for the customer (any
-- organization, any period): the next post must be later. Takes no locks.
SELECT max(l.event_timestamp)
FROM active_series._ledger AS l
WHERE l.stripe_customer_id = p_stripe_customer_id AND l.status <> 'failed';
$$;
COMMENT ON FUNCTION active_series._relay_last_timestamp(text) IS
'Internal: the latest meter event timestamp sent (or possibly sent) for a Stripe customer; timestamps only increase.';
