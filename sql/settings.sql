-- The application's tables (active_series.<role>: its own, or views attach makes of them)
-- do not exist while this script runs: the functions that read them are checked when they
-- run, not when they are created (plpgsql_check checks them all in make lint).
SET LOCAL check_function_bodies = off;
