CREATE VIEW active_series.relay_failures AS
SELECT
    s.organization_id,
    'parked' AS kind,
    NULL::bigint AS ledger_id,
    NULL::timestamptz AS period_start,
    NULL::bigint AS value,
    s.parked_reason AS reason,
    s.parked_at AS at
FROM active_series._relay_state AS s
WHERE s.parked_at IS NOT NULL
UNION ALL
SELECT
    l.organization_id,
    'failed_post' AS kind,
    l.id AS ledger_id,
    l.period_start,
    l.value,
    l.last_error AS reason,
    l.updated AS at
FROM active_series._ledger AS l
WHERE
    l.status = 'failed'
    AND NOT EXISTS (
        SELECT FROM active_series._ledger AS later
        WHERE
            later.organization_id = l.organization_id
            AND later.period_start = l.period_start
            AND later.status = 'sent'
            AND later.event_timestamp > l.event_timestamp
    );
COMMENT ON VIEW active_series.relay_failures IS
'What the Stripe relay could not do: parked organizations with the reason, and refused posts not yet superseded by a later accepted one for the same period.';
