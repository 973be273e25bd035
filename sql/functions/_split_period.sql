CREATE FUNCTION active_series._split_period(p_organization_id bigint, p_at timestamptz)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Splits the recorded period that strictly contains p_at into [start, p_at) and
-- [p_at, end), exactly: a series active only before (after) p_at stays (moves); a series
-- active on both sides is active on each side, its inner bound from its metrics (the
-- known outer bound when the report holding it was deleted). The period's history is
-- unfolded, deleted and recorded again on both sides. Caller holds the organization's
-- period lock exclusively.
DECLARE
    v_start timestamptz;
    v_end timestamptz;
    v_spans active_series._series_span [];
BEGIN
    SELECT p.period_start, p.period_end INTO v_start, v_end
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id
        AND p.period_start < p_at
        AND p.period_end > p_at;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    v_spans := active_series._series_spans(p_organization_id, v_start, v_end);
    DELETE FROM active_series._testbed_period AS t
    WHERE t.organization_id = p_organization_id AND t.period_start = v_start;
    UPDATE active_series._period AS p SET period_end = p_at
    WHERE p.organization_id = p_organization_id AND p.period_start = v_start;
    INSERT INTO active_series._period (organization_id, period_start, period_end)
    VALUES (p_organization_id, p_at, v_end);

    PERFORM active_series._record_groups(active_series._regroup(ARRAY(
        -- before p_at: up to its last activity before p_at
        SELECT row(
            s.organization_id, s.project_id, s.testbed_id, v_start, s.benchmark_id,
            s.variant_id, s.measure_id, s.first_seen,
            CASE WHEN s.last_seen < p_at THEN s.last_seen
                ELSE coalesce(
                    active_series._series_activity_bound(s, v_start, p_at, true), s.first_seen
                ) END
        )::active_series._series_span
        FROM unnest(v_spans) AS s
        WHERE s.first_seen < p_at
        UNION ALL
        -- from p_at: from its first activity after p_at
        SELECT row(
            s.organization_id, s.project_id, s.testbed_id, p_at, s.benchmark_id,
            s.variant_id, s.measure_id,
            CASE WHEN s.first_seen >= p_at THEN s.first_seen
                ELSE coalesce(
                    active_series._series_activity_bound(s, p_at, v_end, false), s.last_seen
                ) END,
            s.last_seen
        )::active_series._series_span
        FROM unnest(v_spans) AS s
        WHERE s.last_seen >= p_at
    )), 'period');

    PERFORM active_series._recount_period(p_organization_id, v_start);
    PERFORM active_series._recount_period(p_organization_id, p_at);
END;
$$;
COMMENT ON FUNCTION active_series._split_period(bigint, timestamptz) IS
'Internal: split the recorded period containing a time in two, re-bucketing its history exactly.';
