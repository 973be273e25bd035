CREATE FUNCTION active_series._relay_held(
    p_stripe_customer_id text,
    p_period_start timestamptz,
    p_period_end timestamptz
)
RETURNS TABLE (
    ledger_id bigint,
    value bigint,
    event_timestamp bigint,
    identifier text,
    status text
)
LANGUAGE sql
STABLE
ROWS 1
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The post that decides the customer's `last` value for the period, as Stripe sees it:
-- the ledger row with the greatest event timestamp inside the period that Stripe has
-- (sent) or may have (pending) accepted. No row: Stripe holds nothing (0). Takes no locks.
SELECT l.id, l.value, l.event_timestamp, l.identifier, l.status
FROM active_series._ledger AS l
CROSS JOIN active_series._relay_window(p_period_start, p_period_end) AS w
WHERE
    l.stripe_customer_id = p_stripe_customer_id
    AND l.status <> 'failed'
    AND l.event_timestamp BETWEEN w.first_second AND w.last_second
ORDER BY l.event_timestamp DESC
LIMIT 1;
$$;
COMMENT ON FUNCTION active_series._relay_held(text, timestamptz, timestamptz) IS
'Internal: the ledger row whose value Stripe holds (or may hold, if pending) as the customer''s last value for a period.';
