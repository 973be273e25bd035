CREATE FUNCTION active_series._relay_instance()
RETURNS text
LANGUAGE sql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The server instance serving writes now: its WAL timeline and when its postmaster started.
-- It changes when a standby is promoted (new timeline) and when the server restarts. Every
-- session on this instance gets the same value; takes no locks.
SELECT
    substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)
    || ' ' || to_char(pg_postmaster_start_time(), 'YYYY-MM-DD"T"HH24:MI:SS.USOF');
$$;
COMMENT ON FUNCTION active_series._relay_instance() IS
'Internal (relay): the server instance serving writes (WAL timeline and postmaster start); it changes at a promotion or a restart.';
