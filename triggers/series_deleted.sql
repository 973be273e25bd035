CREATE FUNCTION active_series._forget_series(
    p_project_ids bigint[],
    p_benchmark_ids bigint[],
    p_variant_ids bigint[],
    p_empty_of bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Hard-deleted benchmarks, variants (the empty variants of p_empty_of's benchmarks among
-- them) and measures of some projects: their series leave the history. Every testbed history
-- (testbed, period) whose set holds one of them is unfolded, deleted (which lowers the counts,
-- _testbed_period_deleted) and recorded again without them. Histories of a testbed or
-- project deleted in the same statement are left to their own cascade. A deleted empty
-- variant takes its benchmark's report_benchmarks without variant_id with it, as a variant's
-- own report_benchmarks cascade.
-- Locks: the history locks of the testbeds it rewrites (_lock_testbeds), then what
-- _record_groups takes.
DECLARE
    v_shapes bigint [];
    v_spans active_series._series_span [];
BEGIN
    IF p_project_ids IS NULL THEN
        RETURN;
    END IF;
    -- a benchmark's empty variant is also its report_benchmarks without variant_id
    DELETE FROM active_series.report_benchmark AS rb
    WHERE rb.benchmark_id = ANY(p_empty_of) AND rb.variant_id IS NULL;

    SELECT array_agg(s.id) INTO v_shapes
    FROM active_series._shape AS s
    WHERE s.project_id = ANY(p_project_ids)
        AND (
            s.benchmark_ids && p_benchmark_ids
            OR s.measure_ids && p_measure_ids
            OR s.variant_ids && p_variant_ids
            -- (a pair (benchmark, 0) of the set, not just a 0 and a benchmark anywhere in
            -- it: a set without the deleted series may be recorded again as it is, and must
            -- not be deleted below)
            OR (
                s.variant_ids && '{0}'::bigint [] AND s.benchmark_ids && p_empty_of
                AND EXISTS (
                    SELECT
                    FROM unnest(s.benchmark_ids, s.variant_ids) AS e (b, v)
                    WHERE e.v = 0 AND e.b = ANY(p_empty_of)
                )
            )
        );
    IF v_shapes IS NULL THEN
        RETURN;
    END IF;

    PERFORM active_series._lock_testbeds(ARRAY(
        SELECT t.testbed_id FROM active_series._testbed_period AS t WHERE t.shape_id = ANY(v_shapes)
    ));
    SELECT coalesce(array_agg(
        row(
            h.organization_id, h.project_id, h.testbed_id, h.period_start, h.benchmark_id,
            h.variant_id, h.measure_id, h.first_seen, h.last_seen
        )::active_series._series_span
    ), '{}')
    INTO v_spans
    FROM active_series._testbed_period AS t
    INNER JOIN active_series._series_history AS h
        ON h.testbed_id = t.testbed_id AND h.period_start = t.period_start
    WHERE t.shape_id = ANY(v_shapes)
        AND NOT h.benchmark_id = ANY(p_benchmark_ids)
        AND NOT h.measure_id = ANY(p_measure_ids)
        AND NOT h.variant_id = ANY(p_variant_ids)
        AND NOT (h.variant_id = 0 AND h.benchmark_id = ANY(p_empty_of))
        AND EXISTS (SELECT FROM active_series.testbed AS b WHERE b.id = t.testbed_id)
        AND EXISTS (SELECT FROM active_series.project AS p WHERE p.id = t.project_id);

    DELETE FROM active_series._testbed_period AS t
    WHERE t.shape_id = ANY(v_shapes);
    -- (the counts fell with the deletes above and rise back below, to no more than they
    -- were: no cap to enforce, no alert to write, _check_rises is told so)
    INSERT INTO active_series._rerecording DEFAULT VALUES;
    PERFORM active_series._record_groups(active_series._regroup(v_spans), 'delete');
    DELETE FROM active_series._rerecording AS r WHERE r.txid = txid_current();
    -- the sets that held them are no longer referred to (a _shape_seen set is always inside
    -- its testbed history's set, and every history whose set held one was rewritten)
    DELETE FROM active_series._shape AS s
    WHERE s.id = ANY(v_shapes)
        AND NOT EXISTS (SELECT FROM active_series._testbed_period AS x WHERE x.shape_id = s.id);
END;
$$;
COMMENT ON FUNCTION active_series._forget_series(bigint[], bigint[], bigint[], bigint[], bigint[]) IS
'Internal: remove the series of hard-deleted benchmarks, variants and measures from the history (and the counts).';
