CREATE FUNCTION active_series._recorded_period(
    p_organization_id bigint,
    p_at timestamptz,
    OUT period_start timestamptz,
    OUT period_end timestamptz
)
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The recorded period containing p_at, or NULLs. One index probe; takes no locks.
-- (PL/pgSQL for its cached plan. _period_for, at every ingest commit, writes the same
-- probe out rather than pay for the call.)
BEGIN
    SELECT l.period_start, l.period_end
    INTO period_start, period_end
    FROM (
        SELECT p.period_start, p.period_end
        FROM active_series._period AS p
        WHERE p.organization_id = p_organization_id AND p.period_start <= p_at
        ORDER BY p.period_start DESC
        LIMIT 1
    ) AS l
    WHERE l.period_end > p_at;
END;
$$;
COMMENT ON FUNCTION active_series._recorded_period(bigint, timestamptz) IS
'Internal: the recorded billing period containing a time (NULLs when none does).';
