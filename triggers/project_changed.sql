CREATE FUNCTION active_series._project_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Statement-level AFTER UPDATE on project: soft delete or restore changes what is billed
-- (counts exclude soft-deleted projects at read time), so tell the relay.
-- SECURITY DEFINER: an ingest client (active_series_ingest) soft-deletes and restores
-- projects but may not write _outbox; the rows written come from the transition tables.
BEGIN
    PERFORM active_series._changed(c.organization_id, NULL, 'project')
    FROM (
        SELECT DISTINCT n.organization_id
        FROM new_project AS n
        INNER JOIN old_project AS o ON o.id = n.id
        WHERE (o.deleted_at IS NULL) <> (n.deleted_at IS NULL)
    ) AS c;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._project_changed() IS
'Trigger: a project soft-deleted or restored changes its organization''s billed count; enqueue it for the relay.';

CREATE TRIGGER project_changed
AFTER UPDATE ON active_series.project
REFERENCING OLD TABLE AS old_project NEW TABLE AS new_project
FOR EACH STATEMENT
EXECUTE FUNCTION active_series._project_changed();
