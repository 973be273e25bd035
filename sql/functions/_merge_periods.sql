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
DECLARE
    v_spans active_series._series_span [];
BEGIN
    v_spans := active_series._series_spans(p_organization_id, p_start, p_end);
    DELETE FROM active_series._testbed_period AS t
    WHERE t.organization_id = p_organization_id
        AND t.period_start >= p_start
        AND t.period_start < p_end;
    DELETE FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id
        AND p.period_start > p_start
        AND p.period_start < p_end;
    INSERT INTO active_series._period AS p (organization_id, period_start, period_end)
    VALUES (p_organization_id, p_start, p_end)
    ON CONFLICT (organization_id, period_start) DO UPDATE SET period_end = excluded.period_end;

    PERFORM active_series._record_groups(active_series._regroup(ARRAY(
        SELECT row(
            s.organization_id, min(s.project_id), s.testbed_id, p_start, s.benchmark_id,
            s.variant_id, s.measure_id, min(s.first_seen), max(s.last_seen)
        )::active_series._series_span
        FROM unnest(v_spans) AS s
        GROUP BY s.organization_id, s.testbed_id, s.benchmark_id, s.variant_id, s.measure_id
    )), 'period');

    PERFORM active_series._recount_period(p_organization_id, p_start);
END;
$$;
COMMENT ON FUNCTION active_series._merge_periods(bigint, timestamptz, timestamptz) IS
'Internal: make a time range one recorded period, merging the history of the periods inside it.';
