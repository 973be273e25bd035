CREATE FUNCTION active_series._record_first_sightings(
    p_sightings active_series._shape_group[]
)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- (at ingest commits: a cached generic plan on index paths, as _record_activity)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- The first report of testbeds in periods (a new testbed, or its first report after the
-- period changed), of shapes already stored: each sighting's shape is then its testbed's
-- shape for the period, so one statement writes all of it, in the key order _record_groups
-- keeps: the testbeds' period shapes (_testbed_period), their _shape_seen rows, the counts
-- grown by the shapes' sizes (_period_usage), and an outbox row per (organization,
-- period) (what _changed writes). Returns whether it wrote them; when not, it wrote
-- nothing and the caller records the sightings by the general path (_record_groups).
-- It applies when every sighting's shape is stored (shape_id), no two sightings share a
-- (testbed, period) and none of those has history yet. The caller holds the testbeds'
-- history locks (_lock_testbeds), so that stays so until commit. For one sighting the
-- check is the insert itself (a conflict on the testbed's period shape: nothing written).
BEGIN
    IF EXISTS (SELECT FROM unnest(p_sightings) AS g WHERE g.shape_id IS NULL) THEN
        RETURN false;
    END IF;
    IF cardinality(p_sightings) > 1 AND (
        EXISTS (
            SELECT
            FROM unnest(p_sightings) AS g
            WHERE (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
        )
        OR (
            SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(p_sightings) AS g
        ) <> cardinality(p_sightings)
    ) THEN
        RETURN false;
    END IF;
    WITH g AS MATERIALIZED (
        SELECT
            g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
            g.last_seen, g.shape_id, s.series
        FROM unnest(p_sightings) AS g
        CROSS JOIN LATERAL (
            SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
        ) AS s
    ),
    period_shapes AS (
        INSERT INTO active_series._testbed_period (
            testbed_id, period_start, organization_id, project_id, shape_id
        )
        SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
        FROM g
        ORDER BY g.testbed_id, g.period_start
        ON CONFLICT (testbed_id, period_start) DO NOTHING
        RETURNING testbed_id, period_start
    ),
    written AS MATERIALIZED (
        SELECT g.*
        FROM g
        INNER JOIN period_shapes AS p
            ON p.testbed_id = g.testbed_id AND p.period_start = g.period_start
    ),
    seen AS (
        INSERT INTO active_series._shape_seen (
            testbed_id, period_start, shape_id, first_seen, last_seen
        )
        SELECT w.testbed_id, w.period_start, w.shape_id, w.first_seen, w.last_seen
        FROM written AS w
        ORDER BY w.testbed_id, w.period_start, w.shape_id
    ),
    counts AS (
        INSERT INTO active_series._period_usage AS u (
            organization_id, period_start, project_id, series_count
        )
        SELECT w.organization_id, w.period_start, w.project_id, sum(w.series)
        FROM written AS w
        GROUP BY w.organization_id, w.period_start, w.project_id
        ORDER BY w.organization_id, w.period_start, w.project_id
        ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
        SET series_count = u.series_count + excluded.series_count
    )
    INSERT INTO active_series._outbox (organization_id, period_start, reason)
    SELECT DISTINCT w.organization_id, w.period_start, 'ingest'
    FROM written AS w
    ORDER BY w.organization_id, w.period_start;
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION active_series._record_first_sightings(active_series._shape_group[]) IS
'Internal: record the first sightings of testbeds in periods, of stored shapes, in one statement (false: not applicable, nothing written).';
