CREATE FUNCTION active_series._variant_key(p_variant_id bigint)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- A report_benchmark's variant as the history keys it: 0 for the benchmark's empty variant
-- (no variant_id, or one whose parameters are {}), else the variant's id. Without a
-- variant_id, no lookup. (PL/pgSQL for its cached plan: it runs at every ingest commit.)
BEGIN
    IF p_variant_id IS NULL THEN
        RETURN 0;
    END IF;
    RETURN CASE
        WHEN (
            SELECT v.parameters = '{}'::jsonb FROM active_series.variant AS v WHERE v.id = p_variant_id
        ) THEN 0
        ELSE p_variant_id
    END;
END;
$$;
COMMENT ON FUNCTION active_series._variant_key(bigint) IS
'Internal: a report_benchmark''s variant as the history keys it (0: the benchmark''s empty variant).';
