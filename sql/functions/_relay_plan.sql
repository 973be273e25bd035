CREATE FUNCTION active_series._relay_plan(
    p_organization_ids bigint[],
    p_grace interval,
    p_invoice_grace interval
)
RETURNS TABLE (
    organization_id bigint,
    period_start timestamptz,
    period_end timestamptz,
    phase text,
    usage bigint,
    held_value bigint,
    held_status text,
    next_timestamp bigint,
    first_second bigint,
    last_second bigint
)
LANGUAGE sql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What the relay has to look at for each organization (claimed by the caller): every
-- unfinalized period that has begun, and the current one, oldest first, with its exact
-- usage, the value Stripe holds for it per the ledger (_relay_held; the billing
-- account's customer) and the timestamp its next post would carry (_relay_timestamp).
-- phase: open (running), ended (within the grace), closing (grace over, not yet
-- closed), closed (final value posted, corrections still billed), final (the invoice
-- grace is over: to be finalized, never posted again). Writes nothing, takes no locks (VOLATILE: it reads the clock).
WITH periods AS (
    SELECT p.organization_id, p.period_start, p.period_end, p.closed_at
    FROM active_series._period AS p
    WHERE
        p.organization_id = ANY(p_organization_ids)
        AND p.finalized_at IS NULL
        AND p.period_start <= clock_timestamp()
    UNION
    SELECT o.id, c.period_start, c.period_end, NULL::timestamptz
    FROM unnest(p_organization_ids) AS o (id)
    CROSS JOIN LATERAL active_series._period_at(o.id, clock_timestamp()) AS c
    WHERE NOT EXISTS (
        SELECT FROM active_series._period AS q
        WHERE q.organization_id = o.id AND q.period_start = c.period_start
    )
)
SELECT
    p.organization_id,
    p.period_start,
    p.period_end,
    CASE
        WHEN clock_timestamp() < p.period_end THEN 'open'
        WHEN p.period_end + p_invoice_grace <= clock_timestamp() THEN 'final'
        WHEN p.closed_at IS NOT NULL THEN 'closed'
        WHEN p.period_end + p_grace <= clock_timestamp() THEN 'closing'
        ELSE 'ended'
    END,
    active_series.period_usage(p.organization_id, p.period_start),
    h.value,
    h.status,
    active_series._relay_timestamp(
        h.event_timestamp, w.first_second, w.last_second,
        floor(extract(EPOCH FROM clock_timestamp()))::bigint
    ),
    w.first_second,
    w.last_second
FROM periods AS p
CROSS JOIN active_series._relay_window(p.period_start, p.period_end) AS w
LEFT JOIN active_series.billing_account AS b ON p.organization_id = b.organization_id
LEFT JOIN LATERAL active_series._relay_held(
    b.stripe_customer_id, p.period_start, p.period_end
) AS h ON TRUE
ORDER BY p.organization_id, p.period_start;
$$;
COMMENT ON FUNCTION active_series._relay_plan(bigint[], interval, interval) IS
'Internal (relay): per organization, every unfinalized period begun so far with its phase, exact usage, the value Stripe holds and the next post''s timestamp.';
