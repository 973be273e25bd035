CREATE VIEW active_series._billed_usage AS
-- The one rule for which counts bill: a project's count row for a period, unless the project
-- is soft-deleted (its rows are kept, and a restore bills them again). Every count that is
-- billed, shown, posted or checked against the cap sums these rows (a plain view: the
-- planner folds it into each query, as if written out there).
SELECT
    u.organization_id,
    u.period_start,
    u.project_id,
    p.visibility,
    u.series_count
FROM active_series._period_usage AS u
INNER JOIN active_series._project_rows() AS p ON u.project_id = p.id
WHERE p.deleted_at IS NULL;
COMMENT ON VIEW active_series._billed_usage IS
'Internal: the per-(organization, period, project) counts that bill (soft-deleted projects left out); every billed, shown or checked count sums these.';
