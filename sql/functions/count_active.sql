CREATE FUNCTION active_series.count_active(
    p_organization_id bigint,
    p_from timestamptz,
    p_to timestamptz,
    p_visibility text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Series of the organization whose last_seen is in [p_from, p_to), in projects that are
-- not soft-deleted, optionally of one visibility. An index range scan on
-- (organization_id, period_start) of _benchmark_seen (a row per benchmark, counting its
-- measure set) and of _series_seen: a series' last_seen lies in its period, so only
-- periods overlapping the window are read. Takes no locks.
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
            USING ERRCODE = 'invalid_parameter_value';
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
        SELECT coalesce(sum(cardinality(b.measure_ids)), 0)
        FROM active_series._benchmark_seen AS b
        INNER JOIN active_series.project AS p ON p.id = b.project_id
        WHERE b.organization_id = p_organization_id
            AND b.period_start >= coalesce(v_lower, '-infinity')
            AND b.period_start < p_to
            AND b.last_seen >= p_from
            AND b.last_seen < p_to
            AND p.deleted_at IS NULL
            AND (p_visibility IS NULL OR p.visibility = p_visibility)
    ) + (
        SELECT count(*)
        FROM active_series._series_seen AS s
        INNER JOIN active_series.project AS p ON p.id = s.project_id
        WHERE s.organization_id = p_organization_id
            AND s.period_start >= coalesce(v_lower, '-infinity')
            AND s.period_start < p_to
            AND s.last_seen >= p_from
            AND s.last_seen < p_to
            AND p.deleted_at IS NULL
            AND (p_visibility IS NULL OR p.visibility = p_visibility)
    );
END;
$$;
COMMENT ON FUNCTION active_series.count_active(bigint, timestamptz, timestamptz, text) IS
'Number of series of an organization whose last_seen is in [p_from, p_to); p_visibility ''public''/''private'' or NULL for all; soft-deleted projects excluded.';
