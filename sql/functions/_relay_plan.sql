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
    due_second bigint,
    first_second bigint,
    last_second bigint
)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What the relay has to look at for each organization (claimed by the caller): every
-- unfinalized period that has begun, and the current one, oldest first, with its exact
-- usage, the value Stripe holds for it per the ledger, and the timestamp its next post
-- would carry with the second it is due (_relay_timestamp). phase: open (running), ended
-- (within the grace), closing (grace over, not yet closed), closed (final value posted,
-- corrections still billed), final (the invoice grace is over: to be finalized, never
-- posted again).
-- The rules of period_usage, _relay_window and _relay_held are written out here: one
-- statement for a whole batch rather than three function calls per period (their pinned
-- search_path keeps them from being inlined); PL/pgSQL for its cached plan (a worker
-- calls it at every claim). Writes nothing, takes no locks (VOLATILE: it reads the clock).
BEGIN
    RETURN QUERY
    WITH periods AS (
        SELECT p.organization_id, p.period_start, p.period_end, r.closed_at
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE
            p.organization_id = ANY(p_organization_ids)
            AND r.finalized_at IS NULL
            AND p.period_start <= clock_timestamp()
        UNION
        SELECT o.id, c.period_start, c.period_end, NULL::timestamptz
        FROM (
            -- (only where no recorded period contains now is _period_at called, ~20 µs
            -- each; OFFSET 0 keeps this filter ahead of the calls)
            SELECT u.id
            FROM unnest(p_organization_ids) AS u (id)
            WHERE NOT EXISTS (
                SELECT FROM active_series._period AS q
                WHERE
                    q.organization_id = u.id
                    AND q.period_start <= clock_timestamp()
                    AND q.period_end > clock_timestamp()
            )
            OFFSET 0
        ) AS o
        CROSS JOIN LATERAL active_series._period_at(o.id, clock_timestamp()) AS c
        WHERE NOT EXISTS (
            SELECT FROM active_series._period AS q
            WHERE q.organization_id = o.id AND q.period_start = c.period_start
        )
    ),

    windows AS (
        SELECT
            p.*,
            ceil(extract(EPOCH FROM p.period_start))::bigint AS first_second,
            ceil(extract(EPOCH FROM p.period_end))::bigint - 1 AS last_second
        FROM periods AS p
    )

    SELECT
        w.organization_id,
        w.period_start,
        w.period_end,
        CASE
            WHEN clock_timestamp() < w.period_end THEN 'open'
            WHEN w.period_end + p_invoice_grace <= clock_timestamp() THEN 'final'
            WHEN w.closed_at IS NOT NULL THEN 'closed'
            WHEN w.period_end + p_grace <= clock_timestamp() THEN 'closing'
            ELSE 'ended'
        END,
        (
            SELECT coalesce(sum(u.series_count), 0)::bigint
            FROM active_series._billed_usage AS u
            WHERE u.organization_id = w.organization_id AND u.period_start = w.period_start
        ),
        h.value,
        h.status,
        t.event_timestamp,
        t.due_second,
        w.first_second,
        w.last_second
    FROM windows AS w
    LEFT JOIN active_series.billing_account AS b ON w.organization_id = b.organization_id
    LEFT JOIN LATERAL (
        SELECT
            l.value,
            l.status,
            l.event_timestamp
        FROM active_series._ledger AS l
        WHERE
            l.stripe_customer_id = b.stripe_customer_id
            AND l.status <> 'failed'
            AND l.event_timestamp BETWEEN w.first_second AND w.last_second
        ORDER BY l.event_timestamp DESC
        LIMIT 1
    ) AS h ON TRUE
    CROSS JOIN LATERAL active_series._relay_timestamp(
        h.event_timestamp, w.first_second, w.last_second,
        floor(extract(EPOCH FROM clock_timestamp()))::bigint
    ) AS t
    ORDER BY w.organization_id, w.period_start;
END;
$$;
COMMENT ON FUNCTION active_series._relay_plan(bigint[], interval, interval) IS
'Internal (relay): per organization, every unfinalized period begun so far with its phase, exact usage, the value Stripe holds and the next post''s timestamp.';
