CREATE FUNCTION active_series._measure_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Statement-level AFTER DELETE on measure: the series of a hard-deleted measure leave the
-- measure sets of _benchmark_seen (their history and _series_seen rows cascade away).
-- SECURITY DEFINER: an ingest client (active_series_ingest) may hard-delete measures but
-- not write _benchmark_seen; the rows changed come from the transition table.
BEGIN
    UPDATE active_series._benchmark_seen AS b
    SET measure_ids = array(
        SELECT m.id FROM unnest(b.measure_ids) AS m (id)
        WHERE m.id <> ALL(d.ids)
        ORDER BY m.id
    )
    FROM (
        SELECT o.project_id, array_agg(o.id) AS ids
        FROM old_measure AS o
        GROUP BY o.project_id
    ) AS d
    WHERE b.project_id = d.project_id
        AND b.measure_ids && d.ids;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._measure_deleted() IS
'Trigger: remove hard-deleted measures from the measure sets of _benchmark_seen.';

CREATE TRIGGER measure_deleted
AFTER DELETE ON active_series.measure
REFERENCING OLD TABLE AS old_measure
FOR EACH STATEMENT
EXECUTE FUNCTION active_series._measure_deleted();
