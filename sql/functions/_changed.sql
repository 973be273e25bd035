CREATE FUNCTION active_series._changed(
    p_organization_id bigint,
    p_period_start timestamptz,
    p_reason text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Durable "this organization's count may have changed" for the relay. No NOTIFY: a
-- transaction that notified takes a lock shared by the whole server at commit, which would
-- queue every ingest commit that changes a count behind the one before it; the worker
-- watches the outbox's ids instead (python/active_series/relay/daemon.py).
-- (PL/pgSQL for its cached plan: ingest commits that change a count call it.)
BEGIN
    INSERT INTO active_series._outbox (organization_id, period_start, reason)
    VALUES (p_organization_id, p_period_start, p_reason);
END;
$$;
COMMENT ON FUNCTION active_series._changed(bigint, timestamptz, text) IS
'Internal: append an outbox row for the relay.';
