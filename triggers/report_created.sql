CREATE FUNCTION active_series._report_set_created()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE INSERT on report: created is the transaction time. An explicit other value is
-- refused unless the session set active_series.allow_explicit_created = on and the role
-- inserting the row is a superuser or a member of active_series_admin (migrations,
-- backfills, demo loaders): clients cannot move activity out of the period it happened in.
-- SECURITY INVOKER on purpose: current_user is then the role that runs the INSERT (after
-- SET ROLE, the role set, not the session's login role), which is the one to judge. As
-- SECURITY DEFINER it would be the extension owner, and session_user would let a
-- superuser session that SET ROLE to an ingest role pass. It writes no billing table.
DECLARE
    v_allowed boolean;
BEGIN
    IF NEW.created IS NULL THEN
        NEW.created := now();
    ELSIF NEW.created IS DISTINCT FROM now() THEN
        v_allowed := coalesce(current_setting('active_series.allow_explicit_created', true), 'off')
            IN ('on', 'true', '1', 'yes')
            AND (
                coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r
                    WHERE r.rolname = current_user), false)
                OR (
                    to_regrole('active_series_admin') IS NOT NULL
                    AND pg_has_role(current_user, 'active_series_admin', 'MEMBER')
                )
            );
        IF NOT v_allowed THEN
            RAISE EXCEPTION 'active_series: report.created is set by the server to the transaction time (got %)',
                NEW.created
                USING ERRCODE = 'insufficient_privilege',
                HINT = 'Leave created out of the INSERT. Loading history needs '
                    'SET active_series.allow_explicit_created = on as a superuser or '
                    'a member of active_series_admin.';
        END IF;
        IF NOT isfinite(NEW.created) THEN
            RAISE EXCEPTION 'active_series: report.created must be a finite time (got %)',
                NEW.created
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- billing periods around it must stay readable by every client (Python's datetime
        -- ends at year 9999 and starts at year 1): a typo like year 20240 is an error
        IF NEW.created < '1900-01-01 00:00:00+00' OR NEW.created >= '9000-01-01 00:00:00+00' THEN
            RAISE EXCEPTION 'active_series: report.created must be from 1900-01-01 to before '
                '9000-01-01 UTC (got %)', NEW.created
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION active_series._report_set_created() IS
'Trigger: force report.created to the transaction time unless the session allows an explicit value and its current role is superuser or active_series_admin.';

CREATE TRIGGER report_set_created
BEFORE INSERT ON active_series.report
FOR EACH ROW
EXECUTE FUNCTION active_series._report_set_created();
