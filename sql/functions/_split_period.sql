CREATE FUNCTION active_series._split_period(p_organization_id bigint, p_at timestamptz)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Splits the recorded period that strictly contains p_at into [start, p_at) and
-- [p_at, end), exactly: a series active only before (after) p_at stays (moves); a series
-- active on both sides gets a row on each side, whose inner bound comes from its metrics
-- (the known outer bound when the report holding it was deleted). Caller holds the
-- organization's period lock exclusively.
DECLARE
    v_start timestamptz;
    v_end timestamptz;
BEGIN
    SELECT p.period_start, p.period_end INTO v_start, v_end
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id
        AND p.period_start < p_at
        AND p.period_end > p_at;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    UPDATE active_series._period AS p SET period_end = p_at
    WHERE p.organization_id = p_organization_id AND p.period_start = v_start;
    INSERT INTO active_series._period (organization_id, period_start, period_end)
    VALUES (p_organization_id, p_at, v_end);

    -- series active on both sides: a copy after p_at, bounded by its metrics
    INSERT INTO active_series._series_period (
        organization_id, period_start, testbed_id, benchmark_id, measure_id,
        project_id, first_seen, last_seen
    )
    SELECT
        h.organization_id, p_at, h.testbed_id, h.benchmark_id, h.measure_id, h.project_id,
        coalesce(
            active_series._series_activity_bound(
                h.project_id, h.testbed_id, h.benchmark_id, h.measure_id, p_at, v_end, false
            ),
            coalesce(h.last_seen, s.last_seen)
        ),
        h.last_seen
    FROM active_series._series_period AS h
    INNER JOIN active_series.series_last_seen AS s
        ON s.organization_id = h.organization_id
        AND s.testbed_id = h.testbed_id
        AND s.benchmark_id = h.benchmark_id
        AND s.measure_id = h.measure_id
    WHERE h.organization_id = p_organization_id
        AND h.period_start = v_start
        AND h.first_seen < p_at
        AND coalesce(h.last_seen, s.last_seen) >= p_at;

    -- ... and the part before p_at closes at its last activity before p_at
    UPDATE active_series._series_period AS h
    SET last_seen = coalesce(
        active_series._series_activity_bound(
            h.project_id, h.testbed_id, h.benchmark_id, h.measure_id, v_start, p_at, true
        ),
        h.first_seen
    )
    FROM active_series._series_period AS a
    WHERE a.organization_id = p_organization_id
        AND a.period_start = p_at
        AND h.organization_id = p_organization_id
        AND h.period_start = v_start
        AND h.testbed_id = a.testbed_id
        AND h.benchmark_id = a.benchmark_id
        AND h.measure_id = a.measure_id;

    -- series active only after p_at move
    UPDATE active_series._series_period AS h
    SET period_start = p_at
    WHERE h.organization_id = p_organization_id
        AND h.period_start = v_start
        AND h.first_seen >= p_at;

    UPDATE active_series._benchmark_seen AS b
    SET period_start = p_at
    WHERE b.organization_id = p_organization_id
        AND b.period_start = v_start
        AND b.last_seen >= p_at;
    UPDATE active_series._series_seen AS s
    SET period_start = p_at
    WHERE s.organization_id = p_organization_id
        AND s.period_start = v_start
        AND s.last_seen >= p_at;

    PERFORM active_series._recount_period(p_organization_id, v_start);
    PERFORM active_series._recount_period(p_organization_id, p_at);
END;
$$;
COMMENT ON FUNCTION active_series._split_period(bigint, timestamptz) IS
'Internal: split the recorded period containing a time in two, re-bucketing its history exactly.';
