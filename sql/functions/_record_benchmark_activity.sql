CREATE FUNCTION active_series._record_benchmark_activity(
    p_seen active_series._benchmark_seen,
    p_activity active_series._series_activity[]
)
RETURNS active_series._period_delta[]
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The general case of _record_activity for one (testbed, benchmark), whose
-- _benchmark_seen row p_seen the caller has locked: new series, series that moved into a
-- new period, measures that left the newest report, activity older than recorded.
-- Returns how many series became new in which period (the history rows it created).
-- Locks: history and _series_seen rows of this benchmark only.
DECLARE
    v_org bigint := p_seen.organization_id;
    v_testbed bigint := p_seen.testbed_id;
    v_benchmark bigint := p_seen.benchmark_id;
    v_project bigint := p_activity[1].project_id;
    v_batch_last timestamptz;
    v_batch_period timestamptz;
    v_latest bigint [];
    v_measures bigint [];
    v_state active_series._series_state [];
    v_set bigint [] := p_seen.measure_ids;
    v_last timestamptz := p_seen.last_seen;
    v_period timestamptz := p_seen.period_start;
    v_new active_series._period_delta [];
BEGIN
    SELECT max(a.last_seen), array_agg(DISTINCT a.measure_id ORDER BY a.measure_id)
    INTO v_batch_last, v_measures
    FROM unnest(p_activity) AS a;
    SELECT min(a.period_start), array_agg(DISTINCT a.measure_id ORDER BY a.measure_id)
    INTO v_batch_period, v_latest
    FROM unnest(p_activity) AS a
    WHERE a.last_seen = v_batch_last;

    -- each series' last_seen before (in the set: the benchmark's; else its own row) and after
    SELECT array_agg(
        row(
            m.measure_id, m.prev_last, m.prev_period,
            greatest(m.prev_last, m.last_seen),
            CASE
                WHEN m.prev_last IS NULL OR m.last_seen > m.prev_last THEN m.period_start
                ELSE m.prev_period
            END
        )::active_series._series_state
    )
    INTO v_state
    FROM (
        SELECT
            l.measure_id, l.last_seen, l.period_start,
            CASE WHEN l.measure_id = ANY(p_seen.measure_ids) THEN p_seen.last_seen
                ELSE s.last_seen END AS prev_last,
            CASE WHEN l.measure_id = ANY(p_seen.measure_ids) THEN p_seen.period_start
                ELSE s.period_start END AS prev_period
        FROM (
            SELECT DISTINCT ON (a.measure_id) a.measure_id, a.last_seen, a.period_start
            FROM unnest(p_activity) AS a
            ORDER BY a.measure_id, a.last_seen DESC
        ) AS l
        LEFT JOIN active_series._series_seen AS s
            ON s.organization_id = v_org
            AND s.testbed_id = v_testbed
            AND s.benchmark_id = v_benchmark
            AND s.measure_id = l.measure_id
    ) AS m;

    -- a series entering a later period closes its previous (open) history row
    UPDATE active_series._series_period AS h
    SET last_seen = greatest(h.last_seen, s.prev_last)
    FROM unnest(v_state) AS s
    WHERE s.prev_last IS NOT NULL
        AND s.new_period > s.prev_period
        AND h.organization_id = v_org
        AND h.period_start = s.prev_period
        AND h.testbed_id = v_testbed
        AND h.benchmark_id = v_benchmark
        AND h.measure_id = s.measure_id
        AND (h.last_seen IS NULL OR h.last_seen < s.prev_last);

    -- history: a row per (series, period); the series' latest period stays open (NULL)
    WITH upserted AS (
        INSERT INTO active_series._series_period AS h (
            organization_id, period_start, testbed_id, benchmark_id, measure_id,
            project_id, first_seen, last_seen
        )
        SELECT
            v_org, a.period_start, v_testbed, v_benchmark, a.measure_id, a.project_id,
            a.first_seen,
            CASE WHEN a.period_start = s.new_period THEN NULL ELSE a.last_seen END
        FROM unnest(p_activity) AS a
        INNER JOIN unnest(v_state) AS s ON s.measure_id = a.measure_id
        ORDER BY a.period_start, a.measure_id
        ON CONFLICT (organization_id, period_start, testbed_id, benchmark_id, measure_id)
        DO UPDATE SET
            first_seen = least(h.first_seen, excluded.first_seen),
            last_seen = CASE
                WHEN h.last_seen IS NULL THEN NULL
                ELSE greatest(h.last_seen, excluded.last_seen)
            END
        WHERE excluded.first_seen < h.first_seen
            OR (h.last_seen IS NOT NULL AND excluded.last_seen > h.last_seen)
        RETURNING h.*, h.xmax = 0 AS fresh
    )
    SELECT array_agg(
        row(c.organization_id, c.period_start, c.project_id, c.n)::active_series._period_delta
    )
    INTO v_new
    FROM (
        SELECT u.organization_id, u.period_start, u.project_id, count(*) AS n
        FROM upserted AS u
        WHERE u.fresh
        GROUP BY u.organization_id, u.period_start, u.project_id
    ) AS c;

    -- the benchmark's newest measure set and last_seen
    IF v_batch_last > p_seen.last_seen THEN
        v_set := v_latest;
        v_last := v_batch_last;
        v_period := v_batch_period;
    ELSIF v_batch_last = p_seen.last_seen THEN
        SELECT array_agg(DISTINCT x.id ORDER BY x.id) INTO v_set
        FROM unnest(p_seen.measure_ids || v_latest) AS x (id);
    END IF;

    -- series outside the set keep their own last_seen; series back in it drop theirs
    INSERT INTO active_series._series_seen AS s (
        organization_id, testbed_id, benchmark_id, measure_id, project_id, last_seen,
        period_start
    )
    SELECT
        v_org, v_testbed, v_benchmark, x.id, v_project,
        coalesce(t.new_last, p_seen.last_seen), coalesce(t.new_period, p_seen.period_start)
    FROM (
        SELECT DISTINCT y.id
        FROM unnest(p_seen.measure_ids || v_measures) AS y (id)
        WHERE NOT y.id = ANY(v_set)
    ) AS x
    LEFT JOIN unnest(v_state) AS t ON t.measure_id = x.id
    ORDER BY x.id
    ON CONFLICT (organization_id, testbed_id, benchmark_id, measure_id) DO UPDATE
    SET last_seen = excluded.last_seen,
        period_start = excluded.period_start
    WHERE excluded.last_seen > s.last_seen;

    DELETE FROM active_series._series_seen AS s
    WHERE s.organization_id = v_org
        AND s.testbed_id = v_testbed
        AND s.benchmark_id = v_benchmark
        AND s.measure_id = ANY(v_set)
        AND NOT s.measure_id = ANY(p_seen.measure_ids);

    UPDATE active_series._benchmark_seen AS b
    SET last_seen = v_last,
        period_start = v_period,
        measure_ids = v_set
    WHERE b.organization_id = v_org
        AND b.testbed_id = v_testbed
        AND b.benchmark_id = v_benchmark
        AND (b.last_seen, b.period_start, b.measure_ids)
        IS DISTINCT FROM (v_last, v_period, v_set);

    RETURN coalesce(v_new, ARRAY[]::active_series._period_delta []);
END;
$$;
COMMENT ON FUNCTION active_series._record_benchmark_activity(
    active_series._benchmark_seen, active_series._series_activity[]
) IS
'Internal: the general case of recording one benchmark''s activity (new series, new period, changed measures, older activity).';
