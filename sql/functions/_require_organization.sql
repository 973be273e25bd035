CREATE FUNCTION active_series._require_organization(p_organization_id bigint)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Raises a clear error (SQLSTATE P0002) unless the organization exists. Takes no locks.
BEGIN
    IF p_organization_id IS NULL THEN
        RAISE EXCEPTION 'active_series: organization id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass the id of an existing organization.';
    END IF;
    PERFORM FROM active_series.organization AS o WHERE o.id = p_organization_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'active_series: organization % does not exist', p_organization_id
            USING ERRCODE = 'no_data_found',
            HINT = 'Pass the id of an existing organization: SELECT organization_id, '
            'organization_name FROM active_series.usage lists them.';
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._require_organization(bigint) IS
'Internal: raise SQLSTATE P0002 "organization N does not exist" unless it does.';
