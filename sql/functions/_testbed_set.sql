CREATE FUNCTION active_series._testbed_set(
    p_testbed_id bigint,
    p_period_start timestamptz,
    OUT shape_id bigint,
    OUT series integer
)
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The testbed's set of series for the period (_testbed_period) and its size, or NULLs. Two
-- primary-key lookups whatever the statistics said when the plan was cached (PL/pgSQL for
-- that plan: it runs when an ingest commit brings a set new to a testbed's period).
BEGIN
    SELECT p.shape_id INTO shape_id
    FROM active_series._testbed_period AS p
    WHERE p.testbed_id = p_testbed_id AND p.period_start = p_period_start;
    SELECT s.series INTO series
    FROM active_series._shape AS s
    WHERE s.id = shape_id;
END;
$$;
COMMENT ON FUNCTION active_series._testbed_set(bigint, timestamptz) IS
'Internal: a testbed''s set of series for a period, and its size (NULLs when it has none).';
