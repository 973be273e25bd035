CREATE FUNCTION active_series.count_active(
    p_organization_id bigint,
    p_from timestamptz,
    p_to timestamptz,
    p_visibility text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Series of the organization whose last_seen is in [p_from, p_to), in projects that are
-- not soft-deleted, optionally of one visibility. A series' last_seen lies in its latest
-- period, so only the history of periods from the one containing p_from on is read
-- (an index range scan on (organization_id, period_start) of _testbed_period), and of
-- it only the sets of series seen since p_from. Takes no locks.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the history
-- tables themselves; it returns a count of the organization named only.
DECLARE
    v_lower timestamptz;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_from IS NULL OR p_to IS NULL THEN
        RAISE EXCEPTION 'active_series: count_active needs both p_from and p_to'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_from > p_to THEN
        RAISE EXCEPTION 'active_series: window start % is after its end %', p_from, p_to
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Swap the two times: count_active(organization, from, to).';
    END IF;
    IF p_visibility IS NOT NULL AND p_visibility NOT IN ('public', 'private') THEN
        RAISE EXCEPTION 'active_series: visibility must be ''public'', ''private'' or NULL (got %)',
            quote_literal(p_visibility)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT max(p.period_start) INTO v_lower
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start <= p_from;

    RETURN (
        SELECT count(*)
        FROM (
            SELECT max(s.last_seen) AS last_seen
            FROM active_series._testbed_period AS t
            INNER JOIN active_series.project AS p ON p.id = t.project_id
            INNER JOIN active_series._shape_seen AS s
                ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
            INNER JOIN active_series._shape AS h ON h.id = s.shape_id
            CROSS JOIN LATERAL unnest(h.benchmark_ids, h.variant_ids, h.measure_ids)
                AS e (benchmark_id, variant_id, measure_id)
            WHERE t.organization_id = p_organization_id
                AND t.period_start >= coalesce(v_lower, '-infinity')
                AND s.last_seen >= p_from
                AND p.deleted_at IS NULL
                AND (p_visibility IS NULL OR p.visibility = p_visibility)
            GROUP BY t.testbed_id, e.benchmark_id, e.variant_id, e.measure_id
        ) AS x
        WHERE x.last_seen < p_to
    );
END;
$$;
COMMENT ON FUNCTION active_series.count_active(bigint, timestamptz, timestamptz, text) IS
'Number of series of an organization whose last_seen is in [p_from, p_to); p_visibility ''public''/''private'' or NULL for all; soft-deleted projects excluded.';
