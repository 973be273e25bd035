CREATE FUNCTION active_series._relay_claim(p_organization_id bigint)
RETURNS TABLE (
    organization_id bigint,
    stripe_customer_id text,
    plan text,
    billed boolean,
    max_outbox_id bigint,
    oldest_change timestamptz
)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Claims the organization for the calling transaction: locks its _relay_state row
-- FOR UPDATE SKIP LOCKED (no row: another worker holds it, or it is parked or backing
-- off). The lock lasts until the caller commits or its connection dies, so at most one
-- worker relays an organization (one Stripe call per customer in flight). Also returns
-- the billing account and the newest outbox row the relay will account for.
BEGIN
    RETURN QUERY
    WITH claimed AS (
        SELECT s.organization_id
        FROM active_series._relay_state AS s
        WHERE
            s.organization_id = p_organization_id
            AND s.parked_at IS NULL
            AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now())
        FOR UPDATE SKIP LOCKED
    )
    SELECT
        c.organization_id,
        b.stripe_customer_id,
        coalesce(b.plan, 'free'),
        coalesce(b.plan, 'free') <> 'free' AND b.stripe_customer_id IS NOT NULL,
        (SELECT max(x.id) FROM active_series._outbox AS x
            WHERE x.organization_id = c.organization_id),
        (SELECT min(x.created) FROM active_series._outbox AS x
            WHERE x.organization_id = c.organization_id)
    FROM claimed AS c
    LEFT JOIN active_series.billing_account AS b ON c.organization_id = b.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_claim(bigint) IS
'Internal (relay): lock an organization''s relay state for this transaction (SKIP LOCKED); returns its billing account and newest outbox id, or nothing when not claimable.';
