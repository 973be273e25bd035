CREATE FUNCTION active_series._relay_next_wakeup(p_grace interval, p_invoice_grace interval)
RETURNS timestamptz
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- When the relay next has work that no notification will announce: the earliest retry
-- of an organization backing off, the earliest end plus grace of an unclosed period, the
-- earliest end plus invoice grace of an unfinalized one, or the earliest read of a Stripe
-- event summary (_relay_confirmation). Only future times: what is
-- due now is found by _relay_work. NULL: nothing scheduled. Takes no locks.
SELECT least(
    (
        SELECT min(s.next_attempt_at)
        FROM active_series._relay_state AS s
        WHERE s.parked_at IS NULL AND s.next_attempt_at > now()
    ),
    (
        SELECT min(p.period_end) + p_grace
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE r.closed_at IS NULL AND p.period_end + p_grace > now()
    ),
    (
        SELECT min(p.period_end) + p_invoice_grace
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE r.finalized_at IS NULL AND p.period_end + p_invoice_grace > now()
    ),
    (
        SELECT min(c.due_at)
        FROM active_series._relay_confirmation AS c
        WHERE c.due_at > now()
    )
);
$$;
COMMENT ON FUNCTION active_series._relay_next_wakeup(interval, interval) IS
'Internal (relay): the next time the relay has scheduled work (a retry, a period to close or to finalize, a Stripe summary to read), NULL if none.';
