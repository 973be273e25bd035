CREATE FUNCTION active_series._reject_key_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE UPDATE OF <key columns>, only fired when one of them changes (see WHEN): moving
-- a row to another owner would silently re-attribute recorded activity, so it is refused.
BEGIN
    RAISE EXCEPTION 'active_series: % of % cannot be changed (row id %)',
        TG_ARGV[0], TG_TABLE_NAME, OLD.id
        USING ERRCODE = 'feature_not_supported',
        HINT = 'Delete the row and insert a new one instead.';
END;
$$;
COMMENT ON FUNCTION active_series._reject_key_update() IS
'Trigger: refuse updates of the columns that decide which series and organization activity belongs to.';

CREATE TRIGGER metric_reject_key_update
BEFORE UPDATE OF report_benchmark_id, measure_id ON active_series.metric
FOR EACH ROW
WHEN (
    old.report_benchmark_id IS DISTINCT FROM new.report_benchmark_id
    OR old.measure_id IS DISTINCT FROM new.measure_id
)
EXECUTE FUNCTION active_series._reject_key_update('report_benchmark_id or measure_id');

CREATE TRIGGER report_benchmark_reject_key_update
BEFORE UPDATE OF report_id, benchmark_id, variant_id ON active_series.report_benchmark
FOR EACH ROW
WHEN (
    old.report_id IS DISTINCT FROM new.report_id
    OR old.benchmark_id IS DISTINCT FROM new.benchmark_id
    OR old.variant_id IS DISTINCT FROM new.variant_id
)
EXECUTE FUNCTION active_series._reject_key_update('report_id, benchmark_id or variant_id');

CREATE TRIGGER report_reject_key_update
BEFORE UPDATE OF project_id, testbed_id, created ON active_series.report
FOR EACH ROW
WHEN (
    old.project_id IS DISTINCT FROM new.project_id
    OR old.testbed_id IS DISTINCT FROM new.testbed_id
    OR old.created IS DISTINCT FROM new.created
)
EXECUTE FUNCTION active_series._reject_key_update('project_id, testbed_id or created');

CREATE TRIGGER testbed_reject_key_update
BEFORE UPDATE OF project_id ON active_series.testbed
FOR EACH ROW WHEN (old.project_id IS DISTINCT FROM new.project_id)
EXECUTE FUNCTION active_series._reject_key_update('project_id');

CREATE TRIGGER benchmark_reject_key_update
BEFORE UPDATE OF project_id ON active_series.benchmark
FOR EACH ROW WHEN (old.project_id IS DISTINCT FROM new.project_id)
EXECUTE FUNCTION active_series._reject_key_update('project_id');

CREATE TRIGGER variant_reject_key_update
BEFORE UPDATE OF benchmark_id, parameters ON active_series.variant
FOR EACH ROW
WHEN (
    old.benchmark_id IS DISTINCT FROM new.benchmark_id
    OR old.parameters IS DISTINCT FROM new.parameters
)
EXECUTE FUNCTION active_series._reject_key_update('benchmark_id or parameters');

CREATE TRIGGER measure_reject_key_update
BEFORE UPDATE OF project_id ON active_series.measure
FOR EACH ROW WHEN (old.project_id IS DISTINCT FROM new.project_id)
EXECUTE FUNCTION active_series._reject_key_update('project_id');

CREATE TRIGGER project_reject_key_update
BEFORE UPDATE OF organization_id ON active_series.project
FOR EACH ROW WHEN (old.organization_id IS DISTINCT FROM new.organization_id)
EXECUTE FUNCTION active_series._reject_key_update('organization_id');
