-- How many series became new in one (organization, period, project).
CREATE TYPE active_series._period_delta AS (
    organization_id bigint,
    period_start timestamptz,
    project_id bigint,
    series bigint
);
COMMENT ON TYPE active_series._period_delta IS
'A number of series new in one billing period of one project: what _period_usage must add.';
