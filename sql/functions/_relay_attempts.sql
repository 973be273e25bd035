CREATE FUNCTION active_series._relay_note_attempts(
    p_idempotency_keys text[],
    p_identifiers text[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: before a request is made, the posts it carries are recorded under its
-- idempotency key (committed before the request), since Stripe's error reports name a
-- refused event by its request's key. Given as (key, identifier) pairs; a pair recorded
-- already is left as it is.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes _post_attempt through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._post_attempt (idempotency_key, identifier)
    SELECT x.idempotency_key, x.identifier
    FROM unnest(p_idempotency_keys, p_identifiers) AS x (idempotency_key, identifier)
    ON CONFLICT ON CONSTRAINT _post_attempt_pkey DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._relay_note_attempts(text[], text[]) IS
'Internal (relay): record the posts each request about to be made carries, by its idempotency key.';

CREATE FUNCTION active_series._relay_prune_attempts()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a request's posts are kept 31 days: no error report names a request older than
-- that (Stripe keeps events 30 days).
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes _post_attempt through these rules only, never the table itself.
BEGIN
    DELETE FROM active_series._post_attempt AS a
    WHERE a.created < clock_timestamp() - interval '31 days';
END;
$$;
COMMENT ON FUNCTION active_series._relay_prune_attempts() IS
'Internal (relay): forget the requests made more than 31 days ago.';
