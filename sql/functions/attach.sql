CREATE FUNCTION active_series._attach_spec()
RETURNS TABLE (role text, col text, kind text, required boolean, refers_to text, ord int)
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The data model as the extension reads it: each role, each value it reads of that role,
-- that value's kind (key: the row's integer or bigint key, unique; ref: a key of another
-- role, through a foreign key; time: timestamptz; jsonb; text; visibility: text
-- 'public'/'private', or boolean true for public) and whether the table must have it.
-- ord orders roles so that a role comes after those it refers to.
SELECT s.role, s.col, s.kind, s.required, s.refers_to, s.ord
FROM (VALUES
    ('organization', 'id', 'key', true, NULL, 1),
    ('organization', 'name', 'text', false, NULL, 1),
    ('project', 'id', 'key', true, NULL, 2),
    ('project', 'organization_id', 'ref', true, 'organization', 2),
    ('project', 'visibility', 'visibility', false, NULL, 2),
    ('project', 'deleted_at', 'time', false, NULL, 2),
    ('testbed', 'id', 'key', true, NULL, 3),
    ('testbed', 'project_id', 'ref', true, 'project', 3),
    ('benchmark', 'id', 'key', true, NULL, 4),
    ('benchmark', 'project_id', 'ref', true, 'project', 4),
    ('variant', 'id', 'key', true, NULL, 5),
    ('variant', 'benchmark_id', 'ref', true, 'benchmark', 5),
    ('variant', 'parameters', 'jsonb', true, NULL, 5),
    ('measure', 'id', 'key', true, NULL, 6),
    ('measure', 'project_id', 'ref', true, 'project', 6),
    ('report', 'id', 'key', true, NULL, 7),
    ('report', 'project_id', 'ref', true, 'project', 7),
    ('report', 'testbed_id', 'ref', true, 'testbed', 7),
    ('report', 'created', 'time', true, NULL, 7),
    ('report_benchmark', 'id', 'key', true, NULL, 8),
    ('report_benchmark', 'report_id', 'ref', true, 'report', 8),
    ('report_benchmark', 'benchmark_id', 'ref', true, 'benchmark', 8),
    ('report_benchmark', 'variant_id', 'ref', false, 'variant', 8),
    ('metric', 'report_benchmark_id', 'ref', true, 'report_benchmark', 9),
    ('metric', 'measure_id', 'ref', true, 'measure', 9)
) AS s (role, col, kind, required, refers_to, ord);
$$;
COMMENT ON FUNCTION active_series._attach_spec() IS
'Internal: the roles of the data model and the values the extension reads of each (attach).';

CREATE FUNCTION active_series._attach_check(p_tables jsonb, p_columns jsonb)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Validates an attachment and returns it resolved: {role: {"schema", "table", "columns":
-- {role column: table column}}}. p_tables: {role: table oid}; p_columns: {role: {role
-- column: table column or null}}, where a role column left out is looked up by its own
-- name. Refuses, naming what is wrong: an unknown role or column, a relation that is not a
-- table, a table in two roles, a missing column, a column of the wrong type (uuid keys are
-- not supported), a key without a unique index, a reference without its foreign key.
DECLARE
    v_spec record;
    v_role text;
    v_rel regclass;
    v_name text;
    v_type regtype;
    v_out jsonb := '{}'::jsonb;
    v_cols jsonb;
    v_bad text;
BEGIN
    FOR v_role IN SELECT role FROM _attach_spec() WHERE NOT p_tables ? role AND role <> 'variant'
    LOOP
        RAISE EXCEPTION 'active_series: attach needs the table of role %', v_role
            USING ERRCODE = 'null_value_not_allowed';
    END LOOP;
    SELECT string_agg(k, ', ') INTO v_bad
    FROM jsonb_object_keys(p_columns) AS k
    WHERE NOT p_tables ? k;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'active_series: columns names role(s) % without a table', v_bad
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'The roles are organization, project, testbed, benchmark, variant, measure, '
                'report, report_benchmark and metric.';
    END IF;
    SELECT string_agg(format('%s.%s', r.role, c.col), ', ') INTO v_bad
    FROM jsonb_each(p_columns) AS r (role, cols)
    CROSS JOIN LATERAL jsonb_object_keys(
        CASE WHEN jsonb_typeof(r.cols) = 'object' THEN r.cols ELSE '{"?": null}' END
    ) AS c (col)
    WHERE NOT EXISTS (SELECT FROM _attach_spec() AS s WHERE s.role = r.role AND s.col = c.col);
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'active_series: attach reads no column %', v_bad
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'columns maps a role''s columns, e.g. {"report": {"created": "created_at"}}: '
                'see active_series._attach_spec().';
    END IF;
    SELECT string_agg(format('%s (roles %s)', t.rel::regclass, t.roles), '; ') INTO v_bad
    FROM (
        SELECT e.value::oid AS rel, string_agg(e.key, ' and ' ORDER BY e.key) AS roles
        FROM jsonb_each_text(p_tables) AS e
        GROUP BY e.value::oid
        HAVING count(*) > 1
    ) AS t;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'active_series: a table plays one role: %', v_bad
            USING ERRCODE = 'duplicate_object';
    END IF;

    FOR v_role, v_rel IN
        SELECT e.key, e.value::oid::regclass
        FROM jsonb_each_text(p_tables) AS e
        ORDER BY (SELECT min(s.ord) FROM _attach_spec() AS s WHERE s.role = e.key)
    LOOP
        IF NOT EXISTS (
            SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = v_rel AND c.relkind IN ('r', 'p')
        ) THEN
            RAISE EXCEPTION 'active_series: % (role %) is not a table', v_rel, v_role
                USING ERRCODE = 'wrong_object_type';
        END IF;
        v_cols := '{}'::jsonb;
        FOR v_spec IN SELECT * FROM _attach_spec() AS s WHERE s.role = v_role LOOP
            IF p_columns -> v_role ? v_spec.col THEN
                v_name := p_columns -> v_role ->> v_spec.col;
                IF v_name IS NULL AND v_spec.required THEN
                    RAISE EXCEPTION 'active_series: the %''s % cannot be left out', v_role, v_spec.col
                        USING ERRCODE = 'null_value_not_allowed';
                END IF;
                -- (null: the table has no such column)
                CONTINUE WHEN v_name IS NULL;
            ELSE
                v_name := v_spec.col;
            END IF;
            v_type := NULL;
            SELECT a.atttypid::regtype INTO v_type
            FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = v_rel AND a.attname = v_name AND a.attnum > 0
                AND NOT a.attisdropped;
            IF v_type IS NULL THEN
                IF v_spec.required OR p_columns -> v_role ? v_spec.col THEN
                    RAISE EXCEPTION 'active_series: table % (role %) has no column % (its %)',
                        v_rel, v_role, quote_ident(v_name), v_spec.col
                        USING ERRCODE = 'undefined_column',
                        HINT = format('Name the column that holds it: columns => '
                            '''{"%s": {"%s": "..."}}''.', v_role, v_spec.col);
                END IF;
                CONTINUE;
            END IF;
            IF v_spec.kind IN ('key', 'ref') AND v_type = 'uuid'::regtype THEN
                RAISE EXCEPTION 'active_series: column %.% (the %''s %) is a uuid: keys must be integer or bigint',
                    v_rel, quote_ident(v_name), v_role, v_spec.col
                    USING ERRCODE = 'feature_not_supported';
            END IF;
            IF NOT v_type = ANY(CASE v_spec.kind
                WHEN 'key' THEN '{integer,bigint}'::regtype []
                WHEN 'ref' THEN '{integer,bigint}'::regtype []
                WHEN 'time' THEN '{timestamptz}'::regtype []
                WHEN 'jsonb' THEN '{jsonb}'::regtype []
                WHEN 'text' THEN '{text,varchar}'::regtype []
                WHEN 'visibility' THEN '{text,varchar,boolean}'::regtype []
            END) THEN
                RAISE EXCEPTION 'active_series: column %.% (the %''s %) is %, not %',
                    v_rel, quote_ident(v_name), v_role, v_spec.col, v_type, CASE v_spec.kind
                        WHEN 'key' THEN 'integer or bigint'
                        WHEN 'ref' THEN 'integer or bigint'
                        WHEN 'time' THEN 'timestamp with time zone'
                        WHEN 'visibility' THEN 'text or boolean (true: public)'
                        WHEN 'text' THEN 'text'
                        ELSE v_spec.kind
                    END
                    USING ERRCODE = 'datatype_mismatch';
            END IF;
            v_cols := v_cols || jsonb_build_object(v_spec.col, v_name);
        END LOOP;
        v_out := v_out || jsonb_build_object(v_role, jsonb_build_object(
            'oid', v_rel::oid,
            'schema', (SELECT n.nspname FROM pg_catalog.pg_class AS c
                INNER JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                WHERE c.oid = v_rel),
            'table', (SELECT c.relname FROM pg_catalog.pg_class AS c WHERE c.oid = v_rel),
            'columns', v_cols
        ));
        -- the key: unique by an index of that column alone (a primary key, or unique)
        IF v_cols ? 'id' AND NOT EXISTS (
            SELECT FROM pg_catalog.pg_index AS i
            WHERE i.indrelid = v_rel AND i.indisunique AND i.indpred IS NULL
                AND i.indexprs IS NULL AND i.indnkeyatts = 1
                AND i.indkey[0] = (
                    SELECT a.attnum FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid = v_rel AND a.attname = v_cols ->> 'id'
                )
        ) THEN
            RAISE EXCEPTION 'active_series: the key %.% (role %) has no unique index',
                v_rel, quote_ident(v_cols ->> 'id'), v_role
                USING ERRCODE = 'invalid_table_definition',
                HINT = 'Make it the primary key, or add a unique index on it alone.';
        END IF;
    END LOOP;

    IF (p_tables ? 'variant') <> (v_out -> 'report_benchmark' -> 'columns' ? 'variant_id') THEN
        RAISE EXCEPTION 'active_series: a variant table and report_benchmark.variant_id go together (%)',
            CASE WHEN p_tables ? 'variant' THEN 'the report_benchmark table has no variant_id'
                ELSE 'no variant table is given' END
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the empty variant is created on demand: (benchmark, parameters) must be unique
    IF p_tables ? 'variant' AND NOT EXISTS (
        SELECT FROM pg_catalog.pg_index AS i
        WHERE i.indrelid = (v_out -> 'variant' ->> 'oid')::oid AND i.indisunique
            AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 2
            AND ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2 []) AS k (n)
                INNER JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.n
                ORDER BY a.attname) = ARRAY(SELECT x FROM unnest(ARRAY[
                    v_out -> 'variant' -> 'columns' ->> 'benchmark_id',
                    v_out -> 'variant' -> 'columns' ->> 'parameters']) AS x ORDER BY x)
    ) THEN
        RAISE EXCEPTION 'active_series: the variant table % has no unique index on (%, %)',
            (v_out -> 'variant' ->> 'oid')::oid::regclass,
            v_out -> 'variant' -> 'columns' ->> 'benchmark_id',
            v_out -> 'variant' -> 'columns' ->> 'parameters'
            USING ERRCODE = 'invalid_table_definition';
    END IF;

    -- every reference through a foreign key to the referenced role's key
    FOR v_spec IN
        SELECT s.*
        FROM _attach_spec() AS s
        WHERE s.kind = 'ref' AND v_out -> s.role -> 'columns' ? s.col
        ORDER BY s.ord, s.col
    LOOP
        IF NOT EXISTS (
            SELECT
            FROM pg_catalog.pg_constraint AS k
            CROSS JOIN LATERAL unnest(k.conkey, k.confkey) AS p (col, refcol)
            INNER JOIN pg_catalog.pg_attribute AS a
                ON a.attrelid = k.conrelid AND a.attnum = p.col
            INNER JOIN pg_catalog.pg_attribute AS f
                ON f.attrelid = k.confrelid AND f.attnum = p.refcol
            WHERE k.contype = 'f'
                AND k.conrelid = (v_out -> v_spec.role ->> 'oid')::oid
                AND k.confrelid = (v_out -> v_spec.refers_to ->> 'oid')::oid
                AND a.attname = v_out -> v_spec.role -> 'columns' ->> v_spec.col
                AND f.attname = v_out -> v_spec.refers_to -> 'columns' ->> 'id'
        ) THEN
            RAISE EXCEPTION 'active_series: %.% (the %''s %) has no foreign key to %.%',
                (v_out -> v_spec.role ->> 'oid')::oid::regclass,
                quote_ident(v_out -> v_spec.role -> 'columns' ->> v_spec.col),
                v_spec.role, v_spec.col,
                (v_out -> v_spec.refers_to ->> 'oid')::oid::regclass,
                quote_ident(v_out -> v_spec.refers_to -> 'columns' ->> 'id')
                USING ERRCODE = 'invalid_foreign_key',
                HINT = 'The recorder relies on it: add the foreign key, then attach.';
        END IF;
    END LOOP;

    -- a relation named as the role in schema active_series is either the table itself or a
    -- view that attach made (it is replaced)
    SELECT string_agg(format('active_series.%I', c.relname), ', ') INTO v_bad
    FROM jsonb_each(v_out) AS r (role, a)
    INNER JOIN pg_catalog.pg_class AS c
        ON c.relname = r.role AND c.relnamespace = 'active_series'::regnamespace
    WHERE c.oid <> (r.a ->> 'oid')::oid AND c.relkind <> 'v';
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'active_series: % already exist(s) and would be hidden by the attachment', v_bad
            USING ERRCODE = 'duplicate_table',
            HINT = 'Attach those tables, or rename them.';
    END IF;
    RETURN v_out;
END;
$$;
COMMENT ON FUNCTION active_series._attach_check(jsonb, jsonb) IS
'Internal: validate an attachment and resolve its columns (attach).';

CREATE FUNCTION active_series._attach_render(p_template text, p_cols jsonb)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- p_template with each {name} replaced by the quoted identifier p_cols names for it, and
-- {table} by the quoted table name; an unknown name is an error (a template's mistake).
DECLARE
    v_out text := p_template;
    v_name text;
BEGIN
    FOR v_name IN
        SELECT DISTINCT m[1] FROM regexp_matches(p_template, '\{(\w+)\}', 'g') AS m
    LOOP
        IF NOT p_cols ? v_name THEN
            RAISE EXCEPTION 'active_series: template names {%}, which the attachment lacks', v_name
                USING ERRCODE = 'internal_error';
        END IF;
        v_out := replace(v_out, '{' || v_name || '}', p_cols ->> v_name);
    END LOOP;
    RETURN v_out;
END;
$$;
COMMENT ON FUNCTION active_series._attach_render(text, jsonb) IS
'Internal: fill a trigger template with an attachment''s identifiers.';

CREATE FUNCTION active_series._benchmark_elsewhere(
    p_ids bigint[],
    p_report_ids bigint[],
    p_benchmark_ids bigint[]
)
RETURNS TABLE (
    id bigint,
    benchmark_id bigint,
    benchmark_project_id bigint,
    report_id bigint,
    report_project_id bigint
)
LANGUAGE sql
STABLE
AS $$
-- Of the report_benchmarks (id, report, benchmark) a statement inserted, the first whose
-- benchmark belongs to another project than its report (none: no row). It runs on every
-- insert of report_benchmarks (the trigger template report_benchmark_inserted): a SQL
-- function without SET options, so that the planner inlines it into the trigger's query
-- (no call, no result set of its own); each row's report and benchmark are one key lookup
-- each (LATERAL ... OFFSET 0), never a scan of the benchmark table joined by hash. Inlined,
-- it runs under the trigger's pinned search_path; every name here is schema-qualified
-- anyway, operators included. Takes no locks.
SELECT n.id, n.benchmark_id, b.project_id, n.report_id, r.project_id
FROM ROWS FROM (
    pg_catalog.unnest(p_ids), pg_catalog.unnest(p_report_ids), pg_catalog.unnest(p_benchmark_ids)
) AS n (id, report_id, benchmark_id)
CROSS JOIN LATERAL (
    SELECT r.project_id
    FROM active_series.report AS r
    WHERE r.id OPERATOR(pg_catalog.=) n.report_id
    OFFSET 0
) AS r
CROSS JOIN LATERAL (
    SELECT b.project_id
    FROM active_series.benchmark AS b
    WHERE b.id OPERATOR(pg_catalog.=) n.benchmark_id
    OFFSET 0
) AS b
WHERE b.project_id OPERATOR(pg_catalog.<>) r.project_id
ORDER BY n.id
LIMIT 1;
$$;
COMMENT ON FUNCTION active_series._benchmark_elsewhere(bigint[], bigint[], bigint[]) IS
'Internal: the first inserted report_benchmark whose benchmark is another project''s than its report''s.';

CREATE FUNCTION active_series._attach_triggers()
RETURNS TABLE (
    role text, event text, needs text, timing text, level text, transition text,
    definer boolean, body text
)
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The triggers attach installs on the application's tables: each becomes a function
-- active_series._attached_<role>_<event>() and a trigger active_series_<event> on the
-- role's table, with the table's own column names filled in ({column}: the role column's
-- name in that table). needs: a role column the table must have for the trigger to exist.
-- definer: the function writes the extension's tables, which the ingesting role may not
-- (SECURITY DEFINER: what it writes comes from the rows the statement touched).
SELECT t.role, t.event, t.needs, t.timing, t.level, t.transition, t.definer, t.body
FROM (VALUES
    -- report.created is the transaction time
    ('report', 'report_created', NULL, 'BEFORE INSERT', 'ROW', NULL, false, $b$
-- BEFORE INSERT on the report table: created is the transaction time. An explicit other value is
-- refused unless the session set active_series.allow_explicit_created = on and the role
-- inserting the row is a superuser or a member of active_series_admin (migrations,
-- backfills, demo loaders): clients cannot move activity out of the period it happened in.
-- SECURITY INVOKER on purpose: current_user is then the role that runs the INSERT (after
-- SET ROLE, the role set, not the session's login role), which is the one to judge. As
-- SECURITY DEFINER it would be the extension owner, and session_user would let a
-- superuser session that SET ROLE to an ingest role pass. It writes no billing table.
DECLARE
    v_allowed boolean;
BEGIN
    IF NEW.{created} IS NULL THEN
        NEW.{created} := now();
    ELSIF NEW.{created} IS DISTINCT FROM now() THEN
        v_allowed := coalesce(current_setting('active_series.allow_explicit_created', true), 'off')
            IN ('on', 'true', '1', 'yes')
            AND (
                coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r
                    WHERE r.rolname = current_user), false)
                OR (
                    to_regrole('active_series_admin') IS NOT NULL
                    AND pg_has_role(current_user, 'active_series_admin', 'MEMBER')
                )
            );
        IF NOT v_allowed THEN
            RAISE EXCEPTION 'active_series: report.created is set by the server to the transaction time (got %)',
                NEW.{created}
                USING ERRCODE = 'insufficient_privilege',
                HINT = 'Leave created out of the INSERT. Loading history needs '
                    'SET active_series.allow_explicit_created = on as a superuser or '
                    'a member of active_series_admin.';
        END IF;
        IF NOT isfinite(NEW.{created}) THEN
            RAISE EXCEPTION 'active_series: report.created must be a finite time (got %)',
                NEW.{created}
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- billing periods around it must stay readable by every client (Python's datetime
        -- ends at year 9999 and starts at year 1): a typo like year 20240 is an error
        IF NEW.{created} < '1900-01-01 00:00:00+00' OR NEW.{created} >= '9000-01-01 00:00:00+00' THEN
            RAISE EXCEPTION 'active_series: report.created must be from 1900-01-01 to before '
                '9000-01-01 UTC (got %)', NEW.{created}
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN NEW;
END;
$b$),
    -- a statement's metrics, noted for the commit-time recording (_flush_pending): the
    -- transaction's first statement inserts its _pending row (whose deferred trigger
    -- records them all at commit), the later ones append their pairs to it
    ('metric', 'metric_inserted', NULL, 'AFTER INSERT', 'STATEMENT', 'NEW', true, $b$
BEGIN
    INSERT INTO active_series._pending AS p (report_benchmark_ids, measure_ids)
    SELECT array_agg(n.{report_benchmark_id}::bigint), array_agg(n.{measure_id}::bigint)
    FROM new_rows AS n
    HAVING count(*) > 0
    ON CONFLICT (txid) DO UPDATE
    SET report_benchmark_ids = p.report_benchmark_ids || excluded.report_benchmark_ids,
        measure_ids = p.measure_ids || excluded.measure_ids;
    RETURN NULL;
END;
$b$),
    -- a report_benchmark's benchmark is its report's project's
    ('report_benchmark', 'report_benchmark_inserted', NULL, 'AFTER INSERT', 'STATEMENT', 'NEW', true, $b$
-- AFTER INSERT (statement) on the report_benchmark table: a benchmark of another project
-- than the report's is refused when the row is inserted (SQLSTATE 23503), not later when
-- a metric of it is committed. One lookup of the statement's rows (_benchmark_elsewhere);
-- its variant is the benchmark's (a foreign key). SECURITY DEFINER only to read the report
-- and benchmark tables through the extension's views; it writes nothing.
DECLARE
    v_bad record;
BEGIN
    SELECT e.* INTO v_bad
    FROM (
        SELECT
            array_agg(n.{id}::bigint) AS ids,
            array_agg(n.{report_id}::bigint) AS report_ids,
            array_agg(n.{benchmark_id}::bigint) AS benchmark_ids
        FROM new_rows AS n
    ) AS a
    CROSS JOIN LATERAL active_series._benchmark_elsewhere(a.ids, a.report_ids, a.benchmark_ids) AS e;
    IF FOUND THEN
        RAISE EXCEPTION 'active_series: report_benchmark % names benchmark % of project %, but its report % is in project %',
            v_bad.id, v_bad.benchmark_id, v_bad.benchmark_project_id, v_bad.report_id,
            v_bad.report_project_id
            USING ERRCODE = 'foreign_key_violation',
            DETAIL = 'A report''s benchmarks must be its project''s.',
            HINT = format('Use the benchmark of the same name in project %s (the report''s), '
                'creating it there if needed.', v_bad.report_project_id);
    END IF;
    RETURN NULL;
END;
$b$),
    -- hard deletes: their series leave the history (_forget_series)
    ('benchmark', 'benchmark_deleted', NULL, 'AFTER DELETE', 'STATEMENT', 'OLD', true, $b$
BEGIN
    PERFORM active_series._forget_series(
        array_agg(DISTINCT o.{project_id}::bigint), array_agg(o.{id}::bigint), '{}', '{}', '{}'
    )
    FROM old_rows AS o;
    RETURN NULL;
END;
$b$),
    ('variant', 'variant_deleted', NULL, 'AFTER DELETE', 'STATEMENT', 'OLD', true, $b$
BEGIN
    PERFORM active_series._forget_series(
        array_agg(DISTINCT b.project_id::bigint),
        '{}',
        coalesce(array_agg(o.{id}::bigint) FILTER (WHERE o.{parameters} <> '{}'::jsonb), '{}'),
        coalesce(
            array_agg(o.{benchmark_id}::bigint) FILTER (WHERE o.{parameters} = '{}'::jsonb), '{}'
        ),
        '{}'
    )
    FROM old_rows AS o
    INNER JOIN active_series.benchmark AS b ON b.id = o.{benchmark_id};
    RETURN NULL;
END;
$b$),
    ('measure', 'measure_deleted', NULL, 'AFTER DELETE', 'STATEMENT', 'OLD', true, $b$
BEGIN
    PERFORM active_series._forget_series(
        array_agg(DISTINCT o.{project_id}::bigint), '{}', '{}', '{}', array_agg(o.{id}::bigint)
    )
    FROM old_rows AS o;
    RETURN NULL;
END;
$b$),
    -- organizations, projects and testbeds deleted take the extension's rows of them along
    ('organization', 'organization_deleted', NULL, 'AFTER DELETE', 'STATEMENT', 'OLD', true, $b$
BEGIN
    PERFORM active_series._owners_deleted('organization', array_agg(o.{id}::bigint))
    FROM old_rows AS o;
    RETURN NULL;
END;
$b$),
    ('project', 'project_deleted', NULL, 'AFTER DELETE', 'STATEMENT', 'OLD', true, $b$
BEGIN
    PERFORM active_series._owners_deleted('project', array_agg(o.{id}::bigint))
    FROM old_rows AS o;
    RETURN NULL;
END;
$b$),
    ('testbed', 'testbed_deleted', NULL, 'AFTER DELETE', 'STATEMENT', 'OLD', true, $b$
BEGIN
    PERFORM active_series._owners_deleted('testbed', array_agg(o.{id}::bigint))
    FROM old_rows AS o;
    RETURN NULL;
END;
$b$),
    -- a project soft-deleted or restored changes what its organization is billed
    ('project', 'project_changed', 'deleted_at', 'AFTER UPDATE', 'STATEMENT', 'OLD NEW', true, $b$
BEGIN
    PERFORM active_series._changed(c.organization_id, NULL, 'project')
    FROM (
        SELECT DISTINCT n.{organization_id}::bigint AS organization_id
        FROM new_rows AS n
        INNER JOIN old_rows AS o ON o.{id} = n.{id}
        WHERE (o.{deleted_at} IS NULL) <> (n.{deleted_at} IS NULL)
    ) AS c;
    RETURN NULL;
END;
$b$)
) AS t (role, event, needs, timing, level, transition, definer, body);
$$;
COMMENT ON FUNCTION active_series._attach_triggers() IS
'Internal: the trigger templates attach fills in for the application''s tables.';

CREATE FUNCTION active_series._attach_install(p_att jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Installs a checked attachment (_attach_check): records it, makes the view
-- active_series.<role> of each table that is not itself active_series.<role> (with the
-- reference model's column names, keys as bigint: the recorder reads these), creates the
-- indexes the recorder's reads need, and the triggers (_attach_triggers, and the refusal
-- of key updates). In a database where active_series is an extension, the functions and
-- triggers it creates depend on the extension: DROP EXTENSION removes them and nothing else.
DECLARE
    v_role text;
    v_a jsonb;
    v_rel regclass;
    v_cols jsonb;
    v_ids jsonb;
    v_select text;
    v_t record;
    v_fn text;
    v_trigger text;
    v_keys text [];
    v_index name;
    v_indexes name [];
    v_col text;
    v_int boolean;
    v_extension boolean := EXISTS (
        SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series'
    );
BEGIN
    FOR v_role, v_a IN
        SELECT s.role, p_att -> s.role
        FROM (SELECT DISTINCT x.role, x.ord FROM _attach_spec() AS x) AS s
        ORDER BY s.ord
    LOOP
        IF v_a IS NULL THEN
            -- no variant table: every report_benchmark reports its benchmark's empty variant
            IF to_regclass('active_series.variant') IS NOT NULL THEN
                -- (attach's own view of an earlier attachment: _attach_check allows no other)
                EXECUTE 'DROP VIEW active_series.variant';
            END IF;
            EXECUTE 'CREATE VIEW active_series.variant AS SELECT NULL::bigint AS id, '
                'NULL::bigint AS benchmark_id, NULL::jsonb AS parameters WHERE false';
            EXECUTE 'GRANT SELECT ON active_series.variant TO active_series_reader, '
                'active_series_worker, active_series_admin';
            CONTINUE;
        END IF;
        v_rel := (v_a ->> 'oid')::oid::regclass;
        v_cols := v_a -> 'columns';
        SELECT jsonb_object_agg(c.key, quote_ident(c.value)) INTO v_ids
        FROM jsonb_each_text(v_cols) AS c;
        v_ids := v_ids || jsonb_build_object('table', v_rel::text);

        -- the view the recorder reads, unless the table is active_series.<role> itself
        IF NOT (v_a ->> 'schema' = 'active_series' AND v_a ->> 'table' = v_role) THEN
            SELECT string_agg(
                CASE
                    WHEN v_cols ? s.col AND s.kind = 'visibility' AND (
                        SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = v_rel AND a.attname = v_cols ->> s.col
                    ) = 'boolean'::regtype
                        THEN format('CASE WHEN t.%I THEN ''public'' ELSE ''private'' END', v_cols ->> s.col)
                    WHEN v_cols ? s.col AND s.kind = 'visibility'
                        THEN format('t.%I::text', v_cols ->> s.col)
                    WHEN v_cols ? s.col AND s.kind IN ('key', 'ref') THEN format('t.%I::bigint', v_cols ->> s.col)
                    WHEN v_cols ? s.col THEN format('t.%I', v_cols ->> s.col)
                    WHEN s.kind = 'visibility' THEN '''public''::text'
                    WHEN s.kind = 'time' THEN 'NULL::timestamptz'
                    WHEN s.kind = 'text' THEN 'NULL::text'
                    ELSE 'NULL::bigint'
                END || ' AS ' || quote_ident(s.col),
                ', ' ORDER BY s.col <> 'id', s.col
            )
            INTO v_select
            FROM _attach_spec() AS s
            WHERE s.role = v_role;
            IF to_regclass(format('active_series.%I', v_role)) IS NOT NULL THEN
                EXECUTE format('DROP VIEW active_series.%I', v_role);
            END IF;
            EXECUTE format('CREATE VIEW active_series.%I AS SELECT %s FROM %s AS t',
                v_role, v_select, v_rel);
            EXECUTE format('COMMENT ON VIEW active_series.%I IS %L', v_role, format(
                'The %s role of the data model, read from %s (attach).', v_role, v_rel));
        END IF;
        EXECUTE format('GRANT SELECT ON active_series.%I TO active_series_reader, '
            'active_series_admin', v_role);
        IF v_role IN ('organization', 'project', 'variant') THEN
            EXECUTE format('GRANT SELECT ON active_series.%I TO active_series_worker', v_role);
        END IF;

        -- indexes the recorder's reads need: the key, a metric's report_benchmark, a
        -- report's rows, an organization's projects; an integer column is read as bigint
        -- (the view casts it), so it is indexed as bigint
        v_indexes := '{}';
        FOREACH v_col IN ARRAY ARRAY['id'] || CASE v_role
            WHEN 'metric' THEN ARRAY['report_benchmark_id']
            WHEN 'report_benchmark' THEN ARRAY['report_id']
            WHEN 'project' THEN ARRAY['organization_id']
            ELSE '{}'::text []
        END LOOP
            CONTINUE WHEN NOT v_cols ? v_col;
            v_int := (
                SELECT a.atttypid = 'integer'::regtype FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = v_rel AND a.attname = v_cols ->> v_col
            );
            CONTINUE WHEN EXISTS (
                SELECT FROM pg_catalog.pg_index AS i
                WHERE i.indrelid = v_rel AND i.indpred IS NULL AND CASE
                    WHEN v_int THEN i.indkey[0] = 0 AND pg_get_indexdef(i.indexrelid, 1, false)
                        = format('((%I)::bigint)', v_cols ->> v_col)
                    ELSE i.indkey[0] = (
                        SELECT a.attnum FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = v_rel AND a.attname = v_cols ->> v_col
                    )
                END
            );
            v_index := left(format('%s_%s_active_series_idx', v_a ->> 'table', v_cols ->> v_col), 63);
            EXECUTE format('CREATE INDEX %I ON %s (%s)', v_index, v_rel, CASE
                WHEN v_int THEN format('(%I::bigint)', v_cols ->> v_col)
                ELSE quote_ident(v_cols ->> v_col)
            END);
            v_indexes := v_indexes || v_index;
        END LOOP;

        INSERT INTO active_series._attachment (role, table_schema, table_name, columns, created_indexes)
        VALUES (v_role, v_a ->> 'schema', v_a ->> 'table', v_cols, v_indexes);

        -- triggers
        FOR v_t IN
            SELECT t.* FROM _attach_triggers() AS t
            WHERE t.role = v_role AND (t.needs IS NULL OR v_cols ? t.needs)
        LOOP
            v_fn := format('active_series.%I', '_attached_' || v_t.event);
            v_trigger := 'active_series_' || v_t.event;
            -- (the report_benchmark project check runs on every insert of report_benchmarks
            -- and reads the report and benchmark tables by key: as the recorder, index paths
            -- whatever the statistics were when the session cached its plan)
            EXECUTE format(
                'CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql %s '
                'SET search_path = active_series, pg_catalog, pg_temp%s AS %L',
                v_fn, CASE WHEN v_t.definer THEN 'SECURITY DEFINER' ELSE '' END,
                CASE
                    WHEN v_t.event = 'report_benchmark_inserted'
                        THEN ' SET enable_seqscan = off SET enable_bitmapscan = off'
                    ELSE ''
                END,
                CASE WHEN v_t.definer THEN E'\n-- SECURITY DEFINER: the ingesting role may not '
                    'write the extension''s tables; what it writes comes from the rows the '
                    'statement touched.' ELSE '' END
                || _attach_render(v_t.body, v_ids));
            EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', v_fn);
            EXECUTE format('COMMENT ON FUNCTION %s() IS %L', v_fn, format(
                'Trigger %s on %s (attach).', v_trigger, v_rel));
            EXECUTE format('CREATE TRIGGER %I %s ON %s %s FOR EACH %s EXECUTE FUNCTION %s()',
                v_trigger, v_t.timing, v_rel,
                CASE v_t.transition
                    WHEN 'NEW' THEN 'REFERENCING NEW TABLE AS new_rows'
                    WHEN 'OLD' THEN 'REFERENCING OLD TABLE AS old_rows'
                    WHEN 'OLD NEW' THEN 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                    ELSE ''
                END,
                v_t.level, v_fn);
            IF v_extension THEN
                EXECUTE format('ALTER FUNCTION %s() DEPENDS ON EXTENSION active_series', v_fn);
                EXECUTE format('ALTER TRIGGER %I ON %s DEPENDS ON EXTENSION active_series',
                    v_trigger, v_rel);
            END IF;
        END LOOP;

        -- the columns that decide whose activity a row is cannot be updated
        SELECT array_agg(v_cols ->> s.col ORDER BY s.col) INTO v_keys
        FROM _attach_spec() AS s
        WHERE s.role = v_role AND v_cols ? s.col
            AND (s.kind = 'ref' OR (s.role, s.col) IN (('report', 'created'), ('variant', 'parameters')));
        IF v_keys IS NOT NULL THEN
            EXECUTE format(
                'CREATE TRIGGER active_series_reject_key_update BEFORE UPDATE OF %s ON %s '
                'FOR EACH ROW WHEN (%s) '
                'EXECUTE FUNCTION active_series._reject_key_update(%L, %L)',
                (SELECT string_agg(quote_ident(k), ', ') FROM unnest(v_keys) AS k),
                v_rel,
                (SELECT string_agg(format('old.%1$I IS DISTINCT FROM new.%1$I', k), ' OR ')
                    FROM unnest(v_keys) AS k),
                array_to_string(v_keys, ', ', ''),
                v_cols ->> 'id');
            IF v_extension THEN
                EXECUTE format('ALTER TRIGGER active_series_reject_key_update ON %s '
                    'DEPENDS ON EXTENSION active_series', v_rel);
            END IF;
        END IF;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION active_series._attach_install(jsonb) IS
'Internal: install a checked attachment: views, indexes and triggers (attach).';

CREATE FUNCTION active_series.attach(
    organization regclass DEFAULT NULL,
    project regclass DEFAULT NULL,
    testbed regclass DEFAULT NULL,
    benchmark regclass DEFAULT NULL,
    measure regclass DEFAULT NULL,
    report regclass DEFAULT NULL,
    report_benchmark regclass DEFAULT NULL,
    metric regclass DEFAULT NULL,
    variant regclass DEFAULT NULL,
    columns jsonb DEFAULT '{}'
)
RETURNS SETOF active_series._attachment
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Starts tracking on the application's own tables: which table plays each role, and in
-- columns, which of its columns holds each value the extension reads where the column is
-- not named as in the reference model (create_reference_model), e.g.
-- '{"report": {"created": "created_at"}, "project": {"visibility": "is_public"}}'.
-- Every role but variant is required (named arguments: a role left out is an error that
-- names it); without a variant table every report_benchmark reports its benchmark's empty
-- variant.
-- Checked whole first (_attach_check): nothing is installed unless all of it is right.
-- Refused while another attachment is in place (detach first). Returns what it recorded.
-- Existing rows are not recorded: CALL active_series.backfill() does that.
-- Locks: _attachment (one attach or detach at a time), and the tables it adds triggers to.
BEGIN
    LOCK TABLE active_series._attachment IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM active_series._attachment) THEN
        RAISE EXCEPTION 'active_series: already attached (to %)', (
            SELECT string_agg(format('%s: %I.%I', a.role, a.table_schema, a.table_name), ', '
                ORDER BY a.role)
            FROM active_series._attachment AS a
        )
            USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'SELECT active_series.detach() first.';
    END IF;
    IF jsonb_typeof(coalesce($10, '{}')) <> 'object' THEN
        RAISE EXCEPTION 'active_series: columns must be a JSON object (got %)', $10
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM active_series._attach_install(active_series._attach_check(
        jsonb_strip_nulls(jsonb_build_object(
            'organization', $1::oid, 'project', $2::oid, 'testbed', $3::oid,
            'benchmark', $4::oid, 'measure', $5::oid, 'report', $6::oid,
            'report_benchmark', $7::oid, 'metric', $8::oid, 'variant', $9::oid
        )),
        coalesce($10, '{}')
    ));
    RETURN QUERY SELECT * FROM active_series._attachment AS a ORDER BY a.role;
END;
$$;
COMMENT ON FUNCTION active_series.attach(
    regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass, regclass, jsonb
) IS
'Start tracking on the application''s own tables: name the table of each role and, where they differ from the reference model''s, the columns.';

CREATE FUNCTION active_series.detach()
RETURNS SETOF active_series._attachment
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Stops tracking: drops the triggers, trigger functions, views and indexes attach made. The
-- application's tables and rows, and the extension's history and counts, stay. Returns what
-- was attached (nothing when nothing was).
-- Locks: _attachment, and the tables it drops triggers from.
DECLARE
    v_a record;
    v_t record;
    v_index name;
BEGIN
    LOCK TABLE active_series._attachment IN SHARE ROW EXCLUSIVE MODE;
    FOR v_a IN SELECT * FROM active_series._attachment AS a LOOP
        FOR v_t IN
            SELECT t.event FROM active_series._attach_triggers() AS t WHERE t.role = v_a.role
        LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I',
                'active_series_' || v_t.event, v_a.table_schema, v_a.table_name);
            EXECUTE format('DROP FUNCTION IF EXISTS active_series.%I()', '_attached_' || v_t.event);
        END LOOP;
        EXECUTE format('DROP TRIGGER IF EXISTS active_series_reject_key_update ON %I.%I',
            v_a.table_schema, v_a.table_name);
        FOREACH v_index IN ARRAY v_a.created_indexes LOOP
            EXECUTE format('DROP INDEX IF EXISTS %I.%I', v_a.table_schema, v_index);
        END LOOP;
        IF NOT (v_a.table_schema = 'active_series' AND v_a.table_name = v_a.role) THEN
            EXECUTE format('DROP VIEW IF EXISTS active_series.%I', v_a.role);
        END IF;
    END LOOP;
    -- (the empty view that stands for a missing variant table)
    IF EXISTS (SELECT FROM active_series._attachment)
        AND NOT EXISTS (SELECT FROM active_series._attachment AS a WHERE a.role = 'variant')
    THEN
        DROP VIEW IF EXISTS active_series.variant;
    END IF;
    RETURN QUERY DELETE FROM active_series._attachment RETURNING *;
END;
$$;
COMMENT ON FUNCTION active_series.detach() IS
'Stop tracking: remove the triggers, views and indexes attach made; the application''s tables, rows and the recorded history stay.';
