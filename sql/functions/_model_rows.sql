-- The attached tables' rows that the extension's own views read. The tables are named (the
-- relations active_series.<role>) only when these run, so the views can exist before
-- anything is attached (sql/settings.sql). Plain SQL, without SET
-- options, so that the planner inlines them into each query (a view over them is planned
-- as if it named the table). Keys come out as bigint; for an integer key, attach indexes
-- the key as bigint.

CREATE FUNCTION active_series._organization_rows()
RETURNS TABLE (id bigint, name text)
LANGUAGE sql
STABLE
AS $$
SELECT o.id::bigint, o.name::text FROM active_series.organization AS o;
$$;
COMMENT ON FUNCTION active_series._organization_rows() IS
'Internal: the attached organizations (id, name), for the extension''s views.';

CREATE FUNCTION active_series._project_rows()
RETURNS TABLE (id bigint, organization_id bigint, visibility text, deleted_at timestamptz)
LANGUAGE sql
STABLE
AS $$
SELECT p.id::bigint, p.organization_id::bigint, p.visibility::text, p.deleted_at
FROM active_series.project AS p;
$$;
COMMENT ON FUNCTION active_series._project_rows() IS
'Internal: the attached projects (id, organization, visibility, soft deletion), for the extension''s views.';

CREATE FUNCTION active_series._variant_rows()
RETURNS TABLE (id bigint, benchmark_id bigint, parameters jsonb)
LANGUAGE sql
STABLE
AS $$
SELECT v.id::bigint, v.benchmark_id::bigint, v.parameters FROM active_series.variant AS v;
$$;
COMMENT ON FUNCTION active_series._variant_rows() IS
'Internal: the attached variants (id, benchmark, parameters), for the extension''s views.';
