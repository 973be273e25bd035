CREATE FUNCTION active_series._relay_claim(p_organization_ids bigint[])
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
-- Claims the organizations it can for the calling transaction: locks their
-- _relay_state rows FOR UPDATE SKIP LOCKED, in organization order (an organization
-- without a row is held by another worker, parked or backing off). The locks last until
-- the caller commits or its connection dies, so at most one worker relays an
-- organization (one Stripe call per customer in flight). Returns each claimed
-- organization's billing account and the newest outbox row the relay accounts for.
BEGIN
    RETURN QUERY
    WITH claimed AS (
        SELECT s.organization_id
        FROM active_series._relay_state AS s
        WHERE
            s.organization_id = ANY(p_organization_ids)
            AND s.parked_at IS NULL
            AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now())
        ORDER BY s.organization_id
        FOR UPDATE SKIP LOCKED
    )
    SELECT
        c.organization_id,
        b.stripe_customer_id,
        coalesce(b.plan, 'free'),
        coalesce(b.plan, 'free') <> 'free' AND b.stripe_customer_id IS NOT NULL,
        x.max_id,
        x.oldest
    FROM claimed AS c
    LEFT JOIN active_series.billing_account AS b ON c.organization_id = b.organization_id
    LEFT JOIN LATERAL (
        SELECT
            max(o.id) AS max_id,
            min(o.created) AS oldest
        FROM active_series._outbox AS o
        WHERE o.organization_id = c.organization_id
    ) AS x ON TRUE
    ORDER BY c.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_claim(bigint[]) IS
'Internal (relay): lock the relay state of the organizations not held elsewhere for this transaction (SKIP LOCKED); returns their billing accounts and newest outbox ids.';
