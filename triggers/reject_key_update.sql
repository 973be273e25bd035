CREATE FUNCTION active_series._reject_key_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE UPDATE OF <key columns> on an attached table, only fired when one of them
-- changes (see the trigger's WHEN; attach installs it): moving a row to another owner
-- would silently re-attribute recorded activity, so it is refused. TG_ARGV: the columns,
-- and the table's key column.
BEGIN
    RAISE EXCEPTION 'active_series: % of % cannot be changed (row id %)',
        TG_ARGV[0], TG_TABLE_NAME, to_jsonb(OLD) ->> TG_ARGV[1]
        USING ERRCODE = 'feature_not_supported',
        HINT = 'Delete the row and insert a new one instead.';
END;
$$;
COMMENT ON FUNCTION active_series._reject_key_update() IS
'Trigger: refuse updates of the columns that decide which series and organization activity belongs to.';
