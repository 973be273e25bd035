CREATE FUNCTION active_series._report_set_created()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE INSERT on report: created is the transaction time. An explicit other value is
-- refused unless the session set active_series.allow_explicit_created = on and the
-- current role is a superuser or a member of active_series_admin (migrations, backfills,
-- demo loaders): clients cannot move activity out of the period it happened in.
BEGIN
    IF NEW.created IS NULL THEN
        NEW.created := now();
    ELSIF NEW.created IS DISTINCT FROM now() THEN
        IF NOT active_series._explicit_created_allowed() THEN
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
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION active_series._report_set_created() IS
'Trigger: force report.created to the transaction time unless an explicit value is allowed (see _explicit_created_allowed).';

CREATE TRIGGER report_set_created
BEFORE INSERT ON active_series.report
FOR EACH ROW
EXECUTE FUNCTION active_series._report_set_created();
