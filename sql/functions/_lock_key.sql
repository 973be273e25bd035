CREATE FUNCTION active_series._lock_key(p_name text)
RETURNS integer
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The classes of the extension's advisory locks, registered here and nowhere else: the
-- first key of pg_advisory_*lock(class, key). Immutable, and always called with a constant
-- name: the planner folds the call into the cached plan, so the locks cost nothing more.
--   period           per organization (hashint8 of its id): shared while a transaction uses
--                    its period boundaries (_period_for), exclusive while set_billing_period
--                    moves them
--   period_creation  per organization: recording a new period (_period_for)
--   testbed_history  per testbed (hashint8 of its id): every write to its history
--                    (_lock_testbeds)
--   backfill         key 0, session level: one backfill at a time
-- (The installer's lock, one bigint key, is in another key space: active_series.install.)
DECLARE
    v_class integer;
BEGIN
    v_class := CASE p_name
        WHEN 'period' THEN 1634956099
        WHEN 'period_creation' THEN 1634956100
        WHEN 'testbed_history' THEN 1634956101
        WHEN 'backfill' THEN 1634956102
    END;
    IF v_class IS NULL THEN
        -- (a lock taken with a NULL class would silently be no lock)
        RAISE EXCEPTION 'active_series: no advisory lock named %', p_name
            USING ERRCODE = 'internal_error';
    END IF;
    RETURN v_class;
END;
$$;
COMMENT ON FUNCTION active_series._lock_key(text) IS
'Internal: the advisory-lock class of a named lock (period, period_creation, testbed_history, backfill).';
