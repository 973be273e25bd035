CREATE FUNCTION active_series._explicit_created_allowed()
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- True when this session may set report.created explicitly: it asked for it with
-- active_series.allow_explicit_created = on, and its role is trusted to.
SELECT coalesce(current_setting('active_series.allow_explicit_created', true), 'off')
    IN ('on', 'true', '1', 'yes')
    AND (
        (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user)
        OR (
            to_regrole('active_series_admin') IS NOT NULL
            AND pg_has_role(current_user, 'active_series_admin', 'MEMBER')
        )
    );
$$;
COMMENT ON FUNCTION active_series._explicit_created_allowed() IS
'Internal: whether this session may set report.created explicitly (the setting is on and the role is superuser or active_series_admin).';
