CREATE FUNCTION active_series._reject_key_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE UPDATE OF <key columns> on an attached table, only fired when one of them
-- changes (see the trigger's WHEN; attach installs it): moving a row to another owner
-- would silently re-attribute recorded activity, so it is refused. TG_ARGV: the columns,
-- and the table's key column.
DECLARE
    v_changed text;
    v_id text := to_jsonb(OLD) ->> TG_ARGV[1];
BEGIN
    -- (it always raises: the trigger's WHEN fires it only when a key column changes)
    SELECT string_agg(c.col, ', ' ORDER BY c.ord) INTO v_changed
    FROM unnest(string_to_array(TG_ARGV[0], ', ')) WITH ORDINALITY AS c (col, ord)
    WHERE (to_jsonb(OLD) -> c.col) IS DISTINCT FROM (to_jsonb(NEW) -> c.col);
    RAISE EXCEPTION 'active_series: % of % cannot be changed%',
        coalesce(v_changed, TG_ARGV[0]), TG_TABLE_NAME,
        coalesce(' (row id ' || v_id || ')', '')
        USING ERRCODE = 'feature_not_supported',
        DETAIL = format('These columns decide which series and organization activity belongs to: %s.',
            TG_ARGV[0]),
        HINT = 'Delete the row and insert a new one instead.';
END;
$$;
COMMENT ON FUNCTION active_series._reject_key_update() IS
'Trigger: refuse updates of the columns that decide which series and organization activity belongs to.';
