CREATE FUNCTION active_series._merge_periods(
    p_organization_id bigint,
    p_start timestamptz,
    p_end timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Makes [p_start, p_end) one recorded period, merging the recorded periods that start
-- inside it (none may cross its bounds: the caller split them first). Merging is exact:
-- a series' first activity is the earliest, its last the latest. Caller holds the
-- organization's period lock exclusively.
BEGIN
    INSERT INTO active_series._period AS p (organization_id, period_start, period_end)
    VALUES (p_organization_id, p_start, p_end)
    ON CONFLICT (organization_id, period_start) DO UPDATE SET period_end = excluded.period_end;

    INSERT INTO active_series._series_period AS h (
        organization_id, period_start, testbed_id, benchmark_id, measure_id,
        project_id, first_seen, last_seen
    )
    SELECT
        o.organization_id, p_start, o.testbed_id, o.benchmark_id, o.measure_id,
        o.project_id, min(o.first_seen),
        CASE WHEN bool_or(o.last_seen IS NULL) THEN NULL ELSE max(o.last_seen) END
    FROM active_series._series_period AS o
    WHERE o.organization_id = p_organization_id
        AND o.period_start > p_start
        AND o.period_start < p_end
    GROUP BY o.organization_id, o.testbed_id, o.benchmark_id, o.measure_id, o.project_id
    ON CONFLICT (organization_id, period_start, testbed_id, benchmark_id, measure_id)
    DO UPDATE SET
        first_seen = least(h.first_seen, excluded.first_seen),
        last_seen = CASE
            WHEN h.last_seen IS NULL OR excluded.last_seen IS NULL THEN NULL
            ELSE greatest(h.last_seen, excluded.last_seen)
        END;

    UPDATE active_series._benchmark_seen AS b
    SET period_start = p_start
    WHERE b.organization_id = p_organization_id
        AND b.period_start > p_start
        AND b.period_start < p_end;
    UPDATE active_series._series_seen AS s
    SET period_start = p_start
    WHERE s.organization_id = p_organization_id
        AND s.period_start > p_start
        AND s.period_start < p_end;

    -- their history rows go with them (cascade); the merged period is recounted below
    DELETE FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id
        AND p.period_start > p_start
        AND p.period_start < p_end;

    PERFORM active_series._recount_period(p_organization_id, p_start);
END;
$$;
COMMENT ON FUNCTION active_series._merge_periods(bigint, timestamptz, timestamptz) IS
'Internal: make a time range one recorded period, merging the history of the periods inside it.';
