-- active_series 0.2.0 -> 0.3.0 (ALTER EXTENSION active_series UPDATE, or
-- `active-series install` on a plain install). Brings a 0.2.0 schema, with its data, to
-- exactly what a fresh 0.3.0 install creates: the upgrade tests compare the two catalogs.

-- post identifier (structure)
CREATE FUNCTION active_series._relay_identifier(
    p_stripe_customer_id text, p_event_timestamp bigint, p_value bigint
)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The identifier (and idempotency key) of a meter event post. Deterministic: a customer
-- never gets two events with one timestamp, so (customer, timestamp, value) names a post,
-- also across ledger rebuilds. The worker and relay_now both call this. Takes no locks.
SELECT 'as-' || p_stripe_customer_id || '-' || p_event_timestamp || '-' || p_value;
$$;
COMMENT ON FUNCTION active_series._relay_identifier(text, bigint, bigint) IS
'Internal: the identifier and idempotency key of a meter event post, from customer, timestamp and value.';
REVOKE EXECUTE ON FUNCTION active_series._relay_identifier(text, bigint, bigint) FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series._relay_identifier(text, bigint, bigint)
TO active_series_worker, active_series_admin;

UPDATE active_series._meta SET version = '0.3.0';
