CREATE FUNCTION active_series._relay_work(p_grace interval, p_invoice_grace interval)
RETURNS TABLE (organization_id bigint)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The organizations the relay has work for now: outbox rows, a pending ledger row
-- (a post whose outcome is unknown), an unclosed period whose end plus p_grace has
-- passed, an unfinalized one whose end plus p_invoice_grace has, or a period whose
-- Stripe event summary is due to be read (_relay_confirmation); not parked, and
-- not backing off. Drops outbox rows of organizations that no longer exist and creates
-- missing _relay_state rows (ON CONFLICT DO NOTHING: never waits for a worker holding
-- one). Locks nothing beyond the rows it writes.
DECLARE
    v_candidates bigint[];
BEGIN
    DELETE FROM active_series._outbox AS x
    WHERE NOT EXISTS (
        SELECT FROM active_series.organization AS o WHERE o.id = x.organization_id
    );

    v_candidates := ARRAY(
        SELECT x.organization_id FROM active_series._outbox AS x
        UNION
        SELECT l.organization_id FROM active_series._ledger AS l WHERE l.status = 'pending'
        UNION
        SELECT p.organization_id FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE
            r.finalized_at IS NULL
            AND (
                r.closed_at IS NULL AND p.period_end + p_grace <= now()
                OR p.period_end + p_invoice_grace <= now()
            )
        UNION
        SELECT c.organization_id FROM active_series._relay_confirmation AS c
        WHERE c.due_at <= now()
    );

    INSERT INTO active_series._relay_state (organization_id)
    SELECT c.id FROM unnest(v_candidates) AS c (id)
    ON CONFLICT ON CONSTRAINT _relay_state_pkey DO NOTHING;

    RETURN QUERY
    SELECT c.organization_id
    FROM unnest(v_candidates) AS c (organization_id)
    INNER JOIN active_series._relay_state AS s ON c.organization_id = s.organization_id
    WHERE s.parked_at IS NULL AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now())
    ORDER BY s.next_attempt_at NULLS FIRST, c.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_work(interval, interval) IS
'Internal (relay): organizations with work due now (outbox rows, pending posts, periods to close after the grace or to finalize after the invoice grace, Stripe summaries to read), not parked or backing off.';
