CREATE FUNCTION active_series._lock_testbeds(p_testbed_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Every write to a testbed's history happens under its advisory lock (until the transaction
-- ends); taken in lock-key order, so that two writers of several testbeds cannot deadlock.
-- (PL/pgSQL for its cached plan: it runs at every ingest commit.)
BEGIN
    PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), k.key)
    FROM (
        SELECT DISTINCT hashint8(t.id) AS key FROM unnest(p_testbed_ids) AS t (id) ORDER BY 1
    ) AS k;
END;
$$;
COMMENT ON FUNCTION active_series._lock_testbeds(bigint[]) IS
'Internal: take the history locks of some testbeds, in lock-key order, until the transaction ends.';
