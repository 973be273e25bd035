-- active_series 0.3.0 -> 0.4.0 (ALTER EXTENSION active_series UPDATE, or
-- `active-series install` on a plain install). The application's tables become the
-- application's: the reference data model (organization ... metric, branch) stays where it
-- is, with its rows and grants, but no longer belongs to the extension, and is attached
-- (attach): its triggers are made from the attachment's templates. The extension's tables
-- lose their foreign keys to it (its deletions reach them through triggers) and are
-- registered for pg_dump. The upgrade tests compare the result with a fresh 0.4.0 install on
-- which create_reference_model() ran.

-- The application's tables (active_series.<role>: its own, or views attach makes of them)
-- do not exist while this script runs: the functions that read them are checked when they
-- run, not when they are created (plpgsql_check checks them all in make lint).
SET LOCAL check_function_bodies = off;

-- ================================================================ the old triggers
DROP FUNCTION active_series._track_metric_insert() CASCADE;
DROP FUNCTION active_series._report_set_created() CASCADE;
DROP FUNCTION active_series._benchmark_deleted() CASCADE;
DROP FUNCTION active_series._variant_deleted() CASCADE;
DROP FUNCTION active_series._measure_deleted() CASCADE;
DROP FUNCTION active_series._project_changed() CASCADE;
DROP FUNCTION active_series._reject_key_update() CASCADE;

-- ================================================================ foreign keys to the model
DO $$
DECLARE
    v_fk record;
BEGIN
    FOR v_fk IN
        SELECT k.conrelid::regclass AS rel, k.conname
        FROM pg_catalog.pg_constraint AS k
        WHERE k.contype = 'f'
            AND k.confrelid IN (
                'active_series.organization'::regclass, 'active_series.project'::regclass,
                'active_series.testbed'::regclass
            )
            AND k.conrelid NOT IN (
                'active_series.organization'::regclass, 'active_series.project'::regclass,
                'active_series.testbed'::regclass, 'active_series.benchmark'::regclass,
                'active_series.variant'::regclass, 'active_series.measure'::regclass,
                'active_series.branch'::regclass, 'active_series.report'::regclass,
                'active_series.report_benchmark'::regclass, 'active_series.metric'::regclass
            )
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', v_fk.rel, v_fk.conname);
    END LOOP;
END;
$$;

-- ================================================================ the model leaves the extension
DO $$
DECLARE
    v_table text;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        FOREACH v_table IN ARRAY ARRAY[
            'organization', 'project', 'testbed', 'benchmark', 'variant', 'measure', 'branch',
            'report', 'report_benchmark', 'metric'
        ] LOOP
            EXECUTE format('ALTER EXTENSION active_series DROP TABLE active_series.%I', v_table);
            -- (its identity sequence, where the extension holds it apart)
            IF EXISTS (
                SELECT FROM pg_catalog.pg_depend AS d
                WHERE d.classid = 'pg_catalog.pg_class'::regclass
                    AND d.objid = format('active_series.%I', v_table || '_id_seq')::regclass
                    AND d.deptype = 'e'
            ) THEN
                EXECUTE format('ALTER EXTENSION active_series DROP SEQUENCE active_series.%I',
                    v_table || '_id_seq');
            END IF;
        END LOOP;
    END IF;
END;
$$;

-- ================================================================ attach
-- ---------------------------------------------------------------- sql/tables/attachment.sql
CREATE TABLE active_series._attachment (
    -- the part the table plays in the data model
    role text PRIMARY KEY CHECK (role IN (
        'organization', 'project', 'testbed', 'benchmark', 'variant', 'measure', 'report',
        'report_benchmark', 'metric'
    )),
    table_schema name NOT NULL,
    table_name name NOT NULL,
    -- the role's columns (as the reference model names them) -> the table's own columns;
    -- an optional column the table lacks is left out
    columns jsonb NOT NULL CHECK (jsonb_typeof(columns) = 'object'),
    -- indexes attach created on the table for the recorder's reads (detach drops them)
    created_indexes name[] NOT NULL DEFAULT '{}',
    attached_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT attachment_table_key UNIQUE (table_schema, table_name)
);
COMMENT ON TABLE active_series._attachment IS
'Which of the application''s tables plays each role of the data model, and which of its columns holds each value the extension reads (attach, detach).';

-- ---------------------------------------------------------------- triggers/reject_key_update.sql
CREATE FUNCTION active_series._reject_key_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE UPDATE OF <key columns> on an attached table, only fired when one of them
-- changes (see the trigger's WHEN; attach installs it): moving a row to another owner
-- would silently re-attribute recorded activity, so it is refused. TG_ARGV: the columns,
-- and the table's key column.
BEGIN
    RAISE EXCEPTION 'active_series: % of % cannot be changed (row id %)',
        TG_ARGV[0], TG_TABLE_NAME, to_jsonb(OLD) ->> TG_ARGV[1]
        USING ERRCODE = 'feature_not_supported',
        HINT = 'Delete the row and insert a new one instead.';
END;
$$;
COMMENT ON FUNCTION active_series._reject_key_update() IS
'Trigger: refuse updates of the columns that decide which series and organization activity belongs to.';

-- ---------------------------------------------------------------- triggers/owners_deleted.sql
CREATE FUNCTION active_series._owners_deleted(p_role text, p_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Organizations, projects or testbeds the application deleted (attach's AFTER DELETE
-- triggers active_series_<role>_deleted): the extension's rows of them go too. A testbed's
-- histories (whose deletion lowers the counts, _testbed_period_deleted); a project's sets
-- and counts; an organization's periods (their counts with them), billing account, prices,
-- alerts, ledger and relay state. (A project's or organization's testbeds go by their own
-- trigger: the application deletes them with it, its foreign keys see to that.)
-- Locks: the rows it deletes.
BEGIN
    IF p_ids IS NULL THEN
        RETURN;
    END IF;
    CASE p_role
        WHEN 'testbed' THEN
            DELETE FROM active_series._testbed_period AS t WHERE t.testbed_id = ANY(p_ids);
        WHEN 'project' THEN
            DELETE FROM active_series._period_usage AS u WHERE u.project_id = ANY(p_ids);
            DELETE FROM active_series._shape AS s WHERE s.project_id = ANY(p_ids);
        WHEN 'organization' THEN
            DELETE FROM active_series._period AS p WHERE p.organization_id = ANY(p_ids);
            DELETE FROM active_series.billing_account AS b WHERE b.organization_id = ANY(p_ids);
            DELETE FROM active_series._price AS p WHERE p.organization_id = ANY(p_ids);
            DELETE FROM active_series._alert AS a WHERE a.organization_id = ANY(p_ids);
            DELETE FROM active_series._alert_threshold AS a WHERE a.organization_id = ANY(p_ids);
            DELETE FROM active_series._period_watch AS w WHERE w.organization_id = ANY(p_ids);
            DELETE FROM active_series._ledger AS l WHERE l.organization_id = ANY(p_ids);
            DELETE FROM active_series._relay_state AS r WHERE r.organization_id = ANY(p_ids);
    END CASE;
END;
$$;
COMMENT ON FUNCTION active_series._owners_deleted(text, bigint[]) IS
'Internal: the extension''s rows of deleted organizations, projects or testbeds go with them.';

-- ---------------------------------------------------------------- sql/functions/attach.sql
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
    -- a statement's metrics, noted for the commit-time recording (_record_pending)
    ('metric', 'metric_inserted', NULL, 'AFTER INSERT', 'STATEMENT', 'NEW', true, $b$
BEGIN
    INSERT INTO active_series._pending (report_benchmark_ids, measure_ids, head)
    SELECT
        array_agg(n.{report_benchmark_id}::bigint),
        array_agg(n.{measure_id}::bigint),
        NOT EXISTS (SELECT FROM active_series._pending AS p WHERE p.txid = txid_current())
    FROM new_rows AS n
    HAVING count(*) > 0;
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
            EXECUTE format(
                'CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql %s '
                'SET search_path = active_series, pg_catalog, pg_temp AS %L',
                v_fn, CASE WHEN v_t.definer THEN 'SECURITY DEFINER' ELSE '' END,
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

-- ---------------------------------------------------------------- sql/functions/create_reference_model.sql
CREATE FUNCTION active_series.create_reference_model(p_schema name DEFAULT 'active_series')
RETURNS void
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The reference data model (organization ... metric, and branch) as ordinary tables in
-- p_schema, owned by the caller (never by the extension: pg_dump, pg_upgrade and DROP
-- EXTENSION treat them as the application's), created there if needed, then attached
-- (attach). The ingest role gets what an application needs: insert, read and delete rows,
-- soft-delete and restore projects, archive testbeds, benchmarks and measures.
-- Refused when any of the tables already exists in p_schema.
-- Locks: the new tables; then what attach takes.
DECLARE
    v_existing text;
BEGIN
    IF p_schema IS NULL THEN
        RAISE EXCEPTION 'active_series: create_reference_model needs a schema name'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY c.relname)
    INTO v_existing
    FROM pg_catalog.pg_class AS c
    INNER JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = p_schema AND c.relname IN (
        'organization', 'project', 'testbed', 'benchmark', 'variant', 'measure', 'branch',
        'report', 'report_benchmark', 'metric'
    );
    IF v_existing IS NOT NULL THEN
        RAISE EXCEPTION 'active_series: the reference model cannot be created in schema %: % already exist(s)',
            quote_ident(p_schema), v_existing
            USING ERRCODE = 'duplicate_table',
            HINT = 'Name another schema, or attach the existing tables with active_series.attach().';
    END IF;
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', p_schema);
    EXECUTE format($ddl$
CREATE TABLE %1$I.organization (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE %1$I.organization IS
'A customer: every series, count and bill belongs to one organization.';
CREATE TABLE %1$I.project (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL
    REFERENCES %1$I.organization (id) ON DELETE CASCADE,
    name text NOT NULL,
    visibility text NOT NULL DEFAULT 'public'
    CHECK (visibility IN ('public', 'private')),
    deleted_at timestamptz,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX project_organization_id_idx ON %1$I.project (organization_id);
COMMENT ON TABLE %1$I.project IS
'Projects of an organization. deleted_at set = soft-deleted: its series are not counted (NULL restores).';
CREATE TABLE %1$I.testbed (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL
    REFERENCES %1$I.project (id) ON DELETE CASCADE,
    name text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    archived timestamptz,
    UNIQUE (project_id, id)
);
COMMENT ON TABLE %1$I.testbed IS
'A testbed of a project: one of the three coordinates (testbed, benchmark, measure) of a series.';
COMMENT ON COLUMN %1$I.testbed.archived IS
'When the testbed was archived (NULL: not archived). Archiving hides it in an application; it does not stop billing: an archived testbed that still reports is counted.';
CREATE TABLE %1$I.benchmark (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL
    REFERENCES %1$I.project (id) ON DELETE CASCADE,
    name text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    archived timestamptz,
    UNIQUE (project_id, id)
);
COMMENT ON TABLE %1$I.benchmark IS
'A benchmark of a project: one of the three coordinates (testbed, benchmark, measure) of a series.';
COMMENT ON COLUMN %1$I.benchmark.archived IS
'When the benchmark was archived (NULL: not archived). Archiving hides it in an application; it does not stop billing: an archived benchmark that still reports is counted.';
CREATE TABLE %1$I.variant (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    benchmark_id bigint NOT NULL
    REFERENCES %1$I.benchmark (id) ON DELETE CASCADE,
    -- the benchmark's parameter set; '{}' is its empty variant
    parameters jsonb NOT NULL DEFAULT '{}'
    CONSTRAINT variant_parameters_object CHECK (jsonb_typeof(parameters) = 'object'),
    created timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT variant_benchmark_id_parameters_key UNIQUE (benchmark_id, parameters),
    CONSTRAINT variant_benchmark_id_id_key UNIQUE (benchmark_id, id)
);
COMMENT ON TABLE %1$I.variant IS
'A parameter set of a benchmark (for example {"size_mb": 16}): the variant coordinate of a series (testbed, benchmark, variant, measure). A report_benchmark without variant_id reports the benchmark''s empty variant ({}), created on demand.';
CREATE TABLE %1$I.measure (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL
    REFERENCES %1$I.project (id) ON DELETE CASCADE,
    name text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    archived timestamptz,
    UNIQUE (project_id, id)
);
COMMENT ON TABLE %1$I.measure IS
'A measure of a project: one of the three coordinates (testbed, benchmark, measure) of a series.';
COMMENT ON COLUMN %1$I.measure.archived IS
'When the measure was archived (NULL: not archived). Archiving hides it in an application; it does not stop billing: an archived measure that still reports is counted.';
CREATE TABLE %1$I.branch (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL
    REFERENCES %1$I.project (id) ON DELETE CASCADE,
    name text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, id)
);
COMMENT ON TABLE %1$I.branch IS
'A branch of a project (main, a pull request, ...). Reports may name one; a series does not include it: the same testbed, benchmark and measure reported on several branches is one series.';
CREATE TABLE %1$I.report (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL
    REFERENCES %1$I.project (id) ON DELETE CASCADE,
    testbed_id bigint NOT NULL,
    start_time timestamptz NOT NULL,
    end_time timestamptz NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    branch_id bigint,
    -- the testbed must belong to the report's project
    FOREIGN KEY (project_id, testbed_id)
    REFERENCES %1$I.testbed (project_id, id) ON DELETE CASCADE,
    -- so must the branch, when the report names one
    FOREIGN KEY (project_id, branch_id)
    REFERENCES %1$I.branch (project_id, id) ON DELETE CASCADE
);
-- for the branch's cascade (and reading a branch's reports)
CREATE INDEX report_project_id_branch_id_idx ON %1$I.report (project_id, branch_id);
CREATE INDEX report_project_id_testbed_id_idx ON %1$I.report (project_id, testbed_id);
COMMENT ON TABLE %1$I.report IS
'One benchmark run. created is the server-side ingest time (the transaction time), which decides the billing period.';
COMMENT ON COLUMN %1$I.report.created IS
'Set by the server to the transaction time; an explicit value needs %1$I.allow_explicit_created (privileged).';
COMMENT ON COLUMN %1$I.report.branch_id IS
'The branch the report was made on (optional). Not part of a series: reports on several branches report to the same series.';
CREATE TABLE %1$I.report_benchmark (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    report_id bigint NOT NULL
    REFERENCES %1$I.report (id) ON DELETE CASCADE,
    benchmark_id bigint NOT NULL
    REFERENCES %1$I.benchmark (id) ON DELETE CASCADE,
    iteration integer NOT NULL DEFAULT 0,
    -- NULL: the benchmark's empty variant
    variant_id bigint,
    -- the variant must be one of the benchmark's
    CONSTRAINT report_benchmark_variant_fkey FOREIGN KEY (benchmark_id, variant_id)
    REFERENCES %1$I.variant (benchmark_id, id) ON DELETE CASCADE
);
CREATE INDEX report_benchmark_report_id_idx ON %1$I.report_benchmark (report_id);
-- (serves both foreign keys: the benchmark's, and the variant's with it)
CREATE INDEX report_benchmark_benchmark_id_variant_id_idx
ON %1$I.report_benchmark (benchmark_id, variant_id);
COMMENT ON TABLE %1$I.report_benchmark IS 'A benchmark (one iteration of it, one variant of it: NULL variant_id is its empty variant) within a report.';
CREATE TABLE %1$I.metric (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    report_benchmark_id bigint NOT NULL
    REFERENCES %1$I.report_benchmark (id) ON DELETE CASCADE,
    measure_id bigint NOT NULL
    REFERENCES %1$I.measure (id) ON DELETE CASCADE,
    value double precision NOT NULL
    CONSTRAINT metric_value_finite
    CHECK (value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8))
);
CREATE INDEX metric_report_benchmark_id_idx
ON %1$I.metric (report_benchmark_id, measure_id);
CREATE INDEX metric_measure_id_idx ON %1$I.metric (measure_id);
COMMENT ON TABLE %1$I.metric IS
'One measured value. Inserting metrics is what makes a series active (see the trigger active_series_metric_inserted that attach installs). value must be finite: NULL, NaN and infinities are rejected.';
$ddl$, p_schema);
    EXECUTE format($grants$
GRANT USAGE ON SCHEMA %1$I TO active_series_ingest, active_series_reader, active_series_admin,
    active_series_worker;
GRANT SELECT, INSERT ON %1$I.organization TO active_series_ingest;
GRANT SELECT, INSERT, DELETE ON
    %1$I.project, %1$I.testbed, %1$I.benchmark, %1$I.variant, %1$I.measure, %1$I.report,
    %1$I.report_benchmark, %1$I.metric, %1$I.branch
TO active_series_ingest;
GRANT UPDATE (deleted_at, visibility) ON %1$I.project TO active_series_ingest;
GRANT UPDATE (archived) ON %1$I.testbed, %1$I.benchmark, %1$I.measure TO active_series_ingest;
GRANT USAGE ON SEQUENCE
    %1$I.organization_id_seq, %1$I.project_id_seq, %1$I.testbed_id_seq,
    %1$I.benchmark_id_seq, %1$I.variant_id_seq, %1$I.measure_id_seq, %1$I.report_id_seq,
    %1$I.report_benchmark_id_seq, %1$I.metric_id_seq, %1$I.branch_id_seq
TO active_series_ingest;
GRANT SELECT ON %1$I.organization, %1$I.project, %1$I.variant TO active_series_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    %1$I.organization, %1$I.project, %1$I.testbed, %1$I.benchmark, %1$I.variant,
    %1$I.measure, %1$I.branch, %1$I.report, %1$I.report_benchmark, %1$I.metric
TO active_series_admin;
GRANT USAGE, SELECT ON
    %1$I.organization_id_seq, %1$I.project_id_seq, %1$I.testbed_id_seq,
    %1$I.benchmark_id_seq, %1$I.variant_id_seq, %1$I.measure_id_seq, %1$I.report_id_seq,
    %1$I.report_benchmark_id_seq, %1$I.metric_id_seq, %1$I.branch_id_seq
TO active_series_admin;
GRANT SELECT ON
    %1$I.organization, %1$I.project, %1$I.testbed, %1$I.benchmark, %1$I.variant,
    %1$I.measure, %1$I.branch, %1$I.report, %1$I.report_benchmark, %1$I.metric
TO active_series_reader;
$grants$, p_schema);
    PERFORM active_series.attach(
        organization => format('%I.organization', p_schema)::regclass,
        project => format('%I.project', p_schema)::regclass,
        testbed => format('%I.testbed', p_schema)::regclass,
        benchmark => format('%I.benchmark', p_schema)::regclass,
        measure => format('%I.measure', p_schema)::regclass,
        report => format('%I.report', p_schema)::regclass,
        report_benchmark => format('%I.report_benchmark', p_schema)::regclass,
        metric => format('%I.metric', p_schema)::regclass,
        variant => format('%I.variant', p_schema)::regclass
    );
END;
$$;
COMMENT ON FUNCTION active_series.create_reference_model(name) IS
'Create the reference data model (organization, project, testbed, benchmark, variant, measure, branch, report, report_benchmark, metric) as the caller''s own tables in a schema, and attach it.';

-- ---------------------------------------------------------------- sql/functions/_model_rows.sql
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

-- ================================================================ no NOTIFY from ingest
-- (a notifying commit takes a server-wide lock: the worker watches the outbox instead)
-- ---------------------------------------------------------------- sql/functions/_changed.sql
CREATE OR REPLACE FUNCTION active_series._changed(
    p_organization_id bigint,
    p_period_start timestamptz,
    p_reason text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Durable "this organization's count may have changed" for the relay. No NOTIFY: a
-- transaction that notified takes a lock shared by the whole server at commit, which would
-- queue every ingest commit that changes a count behind the one before it; the worker
-- watches the outbox's ids instead (python/active_series/relay/daemon.py).
-- (PL/pgSQL for its cached plan: ingest commits that change a count call it.)
BEGIN
    INSERT INTO active_series._outbox (organization_id, period_start, reason)
    VALUES (p_organization_id, p_period_start, p_reason);
END;
$$;
COMMENT ON FUNCTION active_series._changed(bigint, timestamptz, text) IS
'Internal: append an outbox row for the relay.';

-- ---------------------------------------------------------------- sql/functions/_check_usage.sql
CREATE OR REPLACE FUNCTION active_series._check_usage(
    p_organization_id bigint,
    p_period_start timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- An ingest commit raised the period's billed count: refuse it beyond the organization's
-- series cap (SQLSTATE AS001), and write an alert row for every threshold the count
-- reached that has none in the period yet (no NOTIFY: see _changed; readers of alerts
-- poll them by id, `active-series alerts --follow`). Nothing to do,
-- and no lock, for an organization without a cap or thresholds.
-- Locks the period's _period_watch row (an upsert: a concurrent commit that raised the
-- count waits here until it is committed, and then counts with it; under REPEATABLE
-- READ it fails with a serialization error instead), so commits check one at a time.
DECLARE
    v_cap bigint;
    v_total bigint;
BEGIN
    SELECT b.series_cap INTO v_cap
    FROM active_series.billing_account AS b
    WHERE b.organization_id = p_organization_id;
    IF v_cap IS NULL
        AND NOT EXISTS (SELECT FROM active_series._alert_thresholds(p_organization_id)) THEN
        RETURN;
    END IF;

    INSERT INTO active_series._period_watch AS w (organization_id, period_start, series_count)
    VALUES (p_organization_id, p_period_start, 0)
    ON CONFLICT (organization_id, period_start) DO UPDATE
    SET checked_at = clock_timestamp();

    -- a new statement: it sees every commit that held the row before us
    SELECT coalesce(sum(u.series_count), 0)::bigint INTO v_total
    FROM active_series._billed_usage AS u
    WHERE u.organization_id = p_organization_id AND u.period_start = p_period_start;

    IF v_total > v_cap THEN
        RAISE EXCEPTION
            'active_series: organization % is capped at % active series; this commit would make % in the period starting %',
            p_organization_id, v_cap, v_total, p_period_start
            USING ERRCODE = 'AS001',
            DETAIL = format(
                'organization_id=%s series_cap=%s series_count=%s', p_organization_id, v_cap,
                v_total
            ),
            HINT = 'Nothing of this transaction was written. An operator raises the cap with '
            'active_series.set_series_cap(organization, cap) or removes it with NULL.';
    END IF;

    UPDATE active_series._period_watch AS w
    SET series_count = v_total
    WHERE w.organization_id = p_organization_id AND w.period_start = p_period_start;

    INSERT INTO active_series._alert AS a (
        organization_id, period_start, threshold, series_count, source
    )
    SELECT p_organization_id, p_period_start, t.threshold, v_total, t.source
    FROM active_series._alert_thresholds(p_organization_id) AS t
    WHERE t.threshold <= v_total
    ORDER BY t.threshold
    ON CONFLICT (organization_id, period_start, threshold) DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._check_usage(bigint, timestamptz) IS
'Internal: after an ingest commit raised a period''s count, enforce the series cap and write the alerts of the thresholds reached.';

-- ---------------------------------------------------------------- sql/functions/_record_groups.sql
CREATE OR REPLACE FUNCTION active_series._record_groups(
    p_groups active_series._shape_group[],
    p_reason text DEFAULT 'ingest'
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- (as _record_activity: generic plans on index paths, whatever the statistics were)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Writes sets of series into the history: each group says that a testbed reported these
-- series within one (recorded) period between first_seen and last_seen. Row writes follow
-- what changed, never the number of series:
-- * a set the testbed already reported in the period widens that _shape_seen row's
--   first_seen/last_seen (one HOT update; nothing when already inside);
-- * activity the history already holds (a late commit, backfill over recorded data) writes
--   nothing;
-- * a set new to the testbed in the period adds one _shape_seen row; when it holds series
--   the testbed had not reported in the period, the testbed's set for the period
--   (_testbed_period, the union) is replaced, and _period_usage grows by the difference;
-- * the sets themselves are stored once (_shape) and shared by testbeds and periods.
-- Then an outbox row for each (organization, period) whose count changed.
-- Locks, in this order, so that concurrent callers cannot deadlock: the testbeds' history
-- locks (_lock_testbeds: every write to a testbed's history happens under it); the
-- empty variants and shapes it creates (_resolve_shapes; nobody waits for a shape); last,
-- the _period_usage rows in key order. The caller holds the organizations' period locks.
DECLARE
    v_groups active_series._shape_group [];
    v_todo integer;
    v_new active_series._shape_group [];
    v_unions active_series._shape_group [];
BEGIN
    PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(p_groups) AS g));

    -- one group per (testbed, period, shape), in key order
    SELECT
        array_agg(
            row(
                a.organization_id, a.project_id, a.testbed_id, a.period_start, a.first_seen,
                a.last_seen, NULL, NULL, NULL, a.shape_id
            )::active_series._shape_group
            ORDER BY a.testbed_id, a.period_start, a.shape_id
        ),
        count(*)
    INTO v_groups, v_todo
    FROM (
        SELECT
            g.testbed_id, g.period_start, g.shape_id,
            min(g.organization_id) AS organization_id, min(g.project_id) AS project_id,
            min(g.first_seen) AS first_seen, max(g.last_seen) AS last_seen
        FROM unnest(active_series._resolve_shapes(ARRAY(
            SELECT g FROM unnest(p_groups) AS g WHERE NOT active_series._covered(g)
        ))) AS g
        GROUP BY g.testbed_id, g.period_start, g.shape_id
    ) AS a;
    IF v_todo = 0 THEN
        RETURN;
    END IF;

    -- Sets the testbed reported before in the period: widen their times. The others are new.
    PERFORM active_series._widen(v_groups);
    SELECT array_agg(g) INTO v_new
    FROM unnest(v_groups) AS g
    WHERE NOT coalesce((
        SELECT true
        FROM active_series._shape_seen AS s
        WHERE s.testbed_id = g.testbed_id
            AND s.period_start = g.period_start
            AND s.shape_id = g.shape_id
        LIMIT 1
    ), false);
    IF v_new IS NULL THEN
        RETURN;
    END IF;

    -- The testbed's set for the period with the new sets added, where that adds series: the
    -- new set itself when the testbed had none (no unfolding), else the union unfolded
    WITH t AS (
        SELECT
            n.testbed_id, n.period_start,
            min(n.organization_id) AS organization_id, min(n.project_id) AS project_id,
            array_agg(DISTINCT n.shape_id) AS shape_ids,
            (
                SELECT p.shape_id FROM active_series._testbed_period AS p
                WHERE p.testbed_id = n.testbed_id AND p.period_start = n.period_start
            ) AS old_shape_id
        FROM unnest(v_new) AS n
        GROUP BY n.testbed_id, n.period_start
    )
    SELECT array_agg(
        row(
            t.organization_id, t.project_id, t.testbed_id, t.period_start, NULL, NULL,
            e.benchmark_ids, e.variant_ids, e.measure_ids,
            CASE
                WHEN t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1
                    THEN t.shape_ids[1]
            END
        )::active_series._shape_group
        ORDER BY t.testbed_id, t.period_start
    )
    INTO v_unions
    FROM t
    LEFT JOIN LATERAL (
        SELECT
            array_agg(x.b ORDER BY x.b, x.v, x.m) AS benchmark_ids,
            array_agg(x.v ORDER BY x.b, x.v, x.m) AS variant_ids,
            array_agg(x.m ORDER BY x.b, x.v, x.m) AS measure_ids
        FROM (
            SELECT e.b, e.v, e.m
            FROM active_series._shape AS s
            CROSS JOIN LATERAL unnest(s.benchmark_ids, s.variant_ids, s.measure_ids)
                AS e (b, v, m)
            WHERE s.id = ANY(t.shape_ids || t.old_shape_id)
            GROUP BY e.b, e.v, e.m
        ) AS x
    ) AS e ON NOT (t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1)
    WHERE t.old_shape_id IS NULL
        OR cardinality(e.measure_ids) > (
            SELECT o.series FROM active_series._shape AS o WHERE o.id = t.old_shape_id
        );
    IF v_unions IS NULL THEN
        -- (every new set was inside the testbed's set: no count changes)
        INSERT INTO active_series._shape_seen AS s (
            testbed_id, period_start, shape_id, first_seen, last_seen
        )
        SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
        FROM unnest(v_new) AS n
        ORDER BY n.testbed_id, n.period_start, n.shape_id;
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM unnest(v_unions) AS u WHERE u.shape_id IS NULL) THEN
        v_unions := active_series._resolve_shapes(v_unions);
    END IF;

    -- the testbeds' sets for the periods, and the counts by what they gained
    WITH old AS (
        SELECT
            u.*,
            (SELECT s.series FROM active_series._shape AS s WHERE s.id = u.shape_id) AS series,
            coalesce((
                SELECT s.series FROM active_series._shape AS s
                WHERE s.id = (
                    SELECT p.shape_id FROM active_series._testbed_period AS p
                    WHERE p.testbed_id = u.testbed_id AND p.period_start = u.period_start
                )
            ), 0) AS old_series
        FROM unnest(v_unions) AS u
    ),
    written AS (
        INSERT INTO active_series._testbed_period AS p (
            testbed_id, period_start, organization_id, project_id, shape_id
        )
        SELECT o.testbed_id, o.period_start, o.organization_id, o.project_id, o.shape_id
        FROM old AS o
        ORDER BY o.testbed_id, o.period_start
        ON CONFLICT (testbed_id, period_start) DO UPDATE SET shape_id = excluded.shape_id
    )
    INSERT INTO active_series._period_usage AS u (
        organization_id, period_start, project_id, series_count
    )
    SELECT o.organization_id, o.period_start, o.project_id, sum(o.series - o.old_series)
    FROM old AS o
    GROUP BY o.organization_id, o.period_start, o.project_id
    ORDER BY o.organization_id, o.period_start, o.project_id
    ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
    SET series_count = u.series_count + excluded.series_count;

    INSERT INTO active_series._shape_seen AS s (
        testbed_id, period_start, shape_id, first_seen, last_seen
    )
    SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
    FROM unnest(v_new) AS n
    ORDER BY n.testbed_id, n.period_start, n.shape_id;

    PERFORM active_series._changed(c.organization_id, c.period_start, p_reason)
    FROM (
        SELECT DISTINCT u.organization_id, u.period_start
        FROM unnest(v_unions) AS u
        ORDER BY u.organization_id, u.period_start
    ) AS c;
END;
$$;
COMMENT ON FUNCTION active_series._record_groups(active_series._shape_group[], text) IS
'Internal: write sets of series reported by testbeds within periods into the history and the per-period counts (writes follow what changed, not the number of series).';

-- (the empty variant is created only where a variant table is attached)
-- ---------------------------------------------------------------- sql/functions/_resolve_shapes.sql
CREATE OR REPLACE FUNCTION active_series._resolve_shapes(p_groups active_series._shape_group[])
RETURNS active_series._shape_group[]
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Fills in each group's shape_id: the stored shape with the same project and series, else
-- a new one. A new shape is checked first: its benchmarks and measures must be its
-- project's (a series never joins another project's catalog), and the empty variant of
-- each benchmark it reports without a variant is created. Shapes are never updated and
-- have no unique key (two transactions may store the same set; either serves), so
-- creating one waits for nobody.
-- Locks: the empty variants it creates (benchmark order), nothing else.
DECLARE
    v_groups active_series._shape_group [];
    v_foreign record;
BEGIN
    v_groups := ARRAY(
        SELECT row(
            g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
            g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids,
            coalesce(
                g.shape_id,
                active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
        )::active_series._shape_group
        FROM unnest(p_groups) AS g
    );
    IF NOT EXISTS (SELECT FROM unnest(v_groups) AS g WHERE g.shape_id IS NULL) THEN
        RETURN v_groups;
    END IF;

    SELECT x.kind, x.id, x.project_id, x.report_project_id INTO v_foreign
    FROM (
        SELECT DISTINCT 'benchmark' AS kind, e.id, b.project_id, g.project_id AS report_project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids) AS e (id)
        INNER JOIN active_series.benchmark AS b ON b.id = e.id
        WHERE g.shape_id IS NULL
        UNION ALL
        SELECT DISTINCT 'measure', e.id, m.project_id, g.project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.measure_ids) AS e (id)
        INNER JOIN active_series.measure AS m ON m.id = e.id
        WHERE g.shape_id IS NULL
    ) AS x
    WHERE x.project_id <> x.report_project_id
    ORDER BY x.kind, x.id
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'active_series: % % belongs to project %, not to project % of the report',
            v_foreign.kind, v_foreign.id, v_foreign.project_id, v_foreign.report_project_id
            USING ERRCODE = 'foreign_key_violation',
            HINT = 'Use the ' || v_foreign.kind || ' of the same name in the report''s project.';
    END IF;

    -- (without a variant table, every report_benchmark reports the empty variant)
    IF EXISTS (SELECT FROM active_series._attachment AS a WHERE a.role = 'variant') THEN
        INSERT INTO active_series.variant (benchmark_id, parameters)
        SELECT DISTINCT e.benchmark_id, '{}'::jsonb
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids, g.variant_ids) AS e (benchmark_id, variant_id)
        WHERE g.shape_id IS NULL AND e.variant_id = 0
        ORDER BY e.benchmark_id
        ON CONFLICT (benchmark_id, parameters) DO NOTHING;
    END IF;

    WITH missing AS (
        SELECT DISTINCT g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
    ),
    created AS (
        INSERT INTO active_series._shape (
            project_id, benchmark_ids, variant_ids, measure_ids, series
        )
        SELECT
            m.project_id, m.benchmark_ids, m.variant_ids, m.measure_ids,
            cardinality(m.measure_ids)
        FROM missing AS m
        RETURNING id, project_id, benchmark_ids, variant_ids, measure_ids
    )
    SELECT array_agg(
        row(
            g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
            g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids,
            coalesce(g.shape_id, c.id)
        )::active_series._shape_group
    )
    INTO v_groups
    FROM unnest(v_groups) AS g
    LEFT JOIN created AS c
        ON g.shape_id IS NULL
        AND c.project_id = g.project_id
        AND c.benchmark_ids = g.benchmark_ids
        AND c.variant_ids = g.variant_ids
        AND c.measure_ids = g.measure_ids;
    RETURN v_groups;
END;
$$;
COMMENT ON FUNCTION active_series._resolve_shapes(active_series._shape_group[]) IS
'Internal: the stored shape of each group''s set of series, created (after the project check) when new.';

-- ================================================================ views read the model through _model_rows
-- ---------------------------------------------------------------- sql/views/_billed_usage.sql
CREATE OR REPLACE VIEW active_series._billed_usage AS
-- The one rule for which counts bill: a project's count row for a period, unless the project
-- is soft-deleted (its rows are kept, and a restore bills them again). Every count that is
-- billed, shown, posted or checked against the cap sums these rows (a plain view: the
-- planner folds it into each query, as if written out there).
SELECT
    u.organization_id,
    u.period_start,
    u.project_id,
    p.visibility,
    u.series_count
FROM active_series._period_usage AS u
INNER JOIN active_series._project_rows() AS p ON u.project_id = p.id
WHERE p.deleted_at IS NULL;
COMMENT ON VIEW active_series._billed_usage IS
'Internal: the per-(organization, period, project) counts that bill (soft-deleted projects left out); every billed, shown or checked count sums these.';

-- ---------------------------------------------------------------- sql/views/usage.sql
CREATE OR REPLACE VIEW active_series.usage AS
SELECT
    o.id AS organization_id,
    o.name AS organization_name,
    coalesce(b.plan, 'free') AS plan,
    b.stripe_customer_id,
    cp.period_start,
    cp.period_end,
    coalesce(sum(u.series_count), 0)::bigint AS active_series,
    coalesce(sum(u.series_count) FILTER (WHERE u.visibility = 'private'), 0)::bigint
        AS private_series,
    coalesce(sum(u.series_count) FILTER (WHERE u.visibility = 'public'), 0)::bigint
        AS public_series
FROM active_series._organization_rows() AS o
LEFT JOIN active_series.billing_account AS b ON b.organization_id = o.id
CROSS JOIN LATERAL active_series.current_period(o.id) AS cp
LEFT JOIN active_series._billed_usage AS u
    ON o.id = u.organization_id AND cp.period_start = u.period_start
GROUP BY o.id, o.name, b.plan, b.stripe_customer_id, cp.period_start, cp.period_end;
COMMENT ON VIEW active_series.usage IS
'Per organization: plan, Stripe customer, current billing period and its exact active-series count, split private/public.';

-- ---------------------------------------------------------------- sql/views/alerts.sql
CREATE OR REPLACE VIEW active_series.alerts AS
SELECT
    a.id,
    a.organization_id,
    o.name AS organization_name,
    a.period_start,
    p.period_end,
    a.threshold,
    a.series_count,
    a.source,
    a.created
FROM active_series._alert AS a
INNER JOIN active_series._organization_rows() AS o ON o.id = a.organization_id
LEFT JOIN active_series._period AS p
    ON p.organization_id = a.organization_id AND p.period_start = a.period_start;
COMMENT ON VIEW active_series.alerts IS
'Every alert written: the organization, the period, the threshold its count reached and the count then (source: set_alert or a price tier''s upper bound), oldest first by id.';

-- ---------------------------------------------------------------- sql/views/series_last_seen.sql
CREATE OR REPLACE VIEW active_series.series_last_seen AS
SELECT
    h.organization_id,
    h.project_id,
    h.testbed_id,
    h.benchmark_id,
    coalesce(v.id, nullif(h.variant_id, 0)) AS variant_id,
    h.measure_id,
    max(h.last_seen) AS last_seen,
    max(h.period_start) AS period_start
FROM active_series._series_history AS h
LEFT JOIN active_series._variant_rows() AS v
    ON h.variant_id = 0 AND v.benchmark_id = h.benchmark_id AND v.parameters = '{}'::jsonb
GROUP BY
    h.organization_id, h.project_id, h.testbed_id, h.benchmark_id, h.variant_id, v.id,
    h.measure_id;
COMMENT ON VIEW active_series.series_last_seen IS
'One row per series: the greatest report.created ever recorded for it (only rises), and the billing period containing it.';

-- ================================================================ grants and pg_dump
-- ---------------------------------------------------------------- sql/grants.sql
-- Least privilege (README.md, Roles and privileges; docs/roles.md says who may do what and why).
-- Nothing in the schema is usable by PUBLIC; each group role of sql/roles.sql gets what
-- its job needs. The ingest path works for an ingest-only role because the triggers that
-- write the cache, history, counts and outbox are SECURITY DEFINER (their comments say
-- why); every other function runs with its caller's rights.

-- (sqlfluff takes the PUBLIC pseudo-role for an identifier: CP02 does not apply.)
REVOKE ALL ON SCHEMA active_series FROM PUBLIC; -- noqa: CP02
REVOKE EXECUTE ON ALL ROUTINES IN SCHEMA active_series FROM PUBLIC; -- noqa: CP02

GRANT USAGE ON SCHEMA active_series
TO active_series_ingest, active_series_worker, active_series_admin, active_series_reader;

-- ---------------------------------------------------------------- active_series_ingest
-- The application's tables are the application's: it grants its ingest role what it needs
-- (create_reference_model grants the reference model's: insert, read and delete rows,
-- soft-delete and restore projects, archive). The triggers attach installs write the
-- extension's tables as their owner (SECURITY DEFINER): no billing table, no function here.

-- ---------------------------------------------------------------- active_series_worker
-- Exactly what python/active_series/relay/ (its queries.py) uses: find and claim relay
-- work, delete the outbox rows it relayed, read counts and billing accounts, write the
-- ledger and its relay state, close periods, and follow the Stripe subscription's billing
-- period (set_billing_period, SECURITY DEFINER). Plus the read API, for `relay status`.
GRANT SELECT ON active_series._meta TO active_series_worker;
-- (the CLI checks that tables are attached before it reads them: `relay status` as the worker)
GRANT SELECT ON active_series._attachment TO active_series_worker;
GRANT SELECT ON
active_series.billing_account,
active_series._period,
active_series._period_usage,
active_series._billed_usage,
active_series._shape,
active_series._shape_seen,
active_series._testbed_period,
active_series._series_history,
active_series.series_last_seen,
active_series.usage,
active_series.relay_status,
active_series.relay_failures,
active_series.relay_periods,
active_series.billing_drift
TO active_series_worker;
GRANT SELECT, DELETE ON active_series._outbox TO active_series_worker;
GRANT SELECT, INSERT, UPDATE ON active_series._ledger TO active_series_worker;
GRANT SELECT, INSERT ON active_series._relay_state TO active_series_worker;
GRANT UPDATE (
    parked_at, parked_reason, next_attempt_at, attempts, last_event_timestamp, updated_at
) ON active_series._relay_state TO active_series_worker;
GRANT UPDATE (closed_at, finalized_at, billed_value, drift_since) ON active_series._period
TO active_series_worker;
-- the metered price, read from the subscription item with the billing period
GRANT SELECT, INSERT, DELETE ON active_series._price, active_series._price_tier
TO active_series_worker;
GRANT EXECUTE ON FUNCTION
active_series._relay_work(interval, interval),
active_series._relay_next_wakeup(interval, interval),
active_series._relay_claim(bigint[]),
active_series._relay_plan(bigint[], interval, interval),
active_series._relay_timestamp(bigint, bigint, bigint, bigint),
active_series._relay_window(timestamptz, timestamptz),
active_series._relay_held(text, timestamptz, timestamptz),
active_series._relay_identifier(text, bigint, bigint),
active_series._relay_instance(),
active_series._require_organization(bigint),
active_series._organization_rows(),
active_series._project_rows(),
active_series._variant_rows(),
active_series._period_at(bigint, timestamptz),
active_series._recorded_period(bigint, timestamptz),
active_series._derive_period(bigint, timestamptz),
active_series.period_usage(bigint, timestamptz),
active_series.period_series(bigint, timestamptz),
active_series.periods(bigint),
active_series.current_period(bigint),
active_series.count_active(bigint, timestamptz, timestamptz, text),
active_series.set_billing_period(bigint, timestamptz, timestamptz),
active_series._store_price(bigint, jsonb, text),
active_series.price_preview(bigint, timestamptz),
active_series.usage_summary(bigint)
TO active_series_worker;

-- ---------------------------------------------------------------- active_series_admin
-- Operators: everything above, and set_billing_period, set_stripe_customer, backfill
-- (a committing procedure: it cannot be SECURITY DEFINER, so it runs with these table
-- rights), verify, relay_resume, and an explicit report.created (checked by the
-- report_created trigger against membership in this role). No TRUNCATE, no DDL.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA active_series
TO active_series_admin;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA active_series TO active_series_admin;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA active_series TO active_series_admin;

-- ---------------------------------------------------------------- active_series_reader
-- Applications and dashboards: read the reference data model, the counts, the usage, the
-- price preview and the alerts. The read functions are SECURITY DEFINER (each says why):
-- they read billing tables the reader may not read itself. No billing table, no ledger,
-- no relay internals, no writes. (Granted after the admin's, as an upgrade adds them.)
GRANT SELECT ON
active_series.usage,
active_series.relay_status,
active_series.alerts
TO active_series_reader;
GRANT EXECUTE ON FUNCTION
active_series.period_usage(bigint, timestamptz),
active_series.periods(bigint),
active_series.period_series(bigint, timestamptz),
active_series.count_active(bigint, timestamptz, timestamptz, text),
active_series.current_period(bigint),
active_series.price_preview(bigint, timestamptz),
active_series.usage_summary(bigint),
-- (the views usage and alerts read the organizations through it)
active_series._organization_rows(),
active_series._project_rows(),
active_series._variant_rows()
TO active_series_reader;

-- ---------------------------------------------------------------- sql/config_dump.sql
-- pg_dump leaves out the rows of an extension's tables unless the extension registers them:
-- every table of the extension's state, and the sequences of their identity columns, are
-- dumped with the database (and restored before the application's tables get their
-- triggers back: a restore records nothing again). Not dumped: _meta (the install script
-- writes it), _pending and _rerecording (rows that live within one transaction). A plain
-- install (no extension) is dumped whole anyway.
DO $$
DECLARE
    v_rel regclass;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        -- (one call a statement: each one updates the extension's row)
        FOREACH v_rel IN ARRAY ARRAY[
            'active_series._attachment',
            'active_series.billing_account',
            'active_series._period',
            'active_series._shape',
            'active_series._shape_id_seq',
            'active_series._testbed_period',
            'active_series._shape_seen',
            'active_series._period_usage',
            'active_series._outbox',
            'active_series._outbox_id_seq',
            'active_series._relay_state',
            'active_series._ledger',
            'active_series._ledger_id_seq',
            'active_series._price',
            'active_series._price_tier',
            'active_series._alert_threshold',
            'active_series._alert',
            'active_series._alert_id_seq',
            'active_series._period_watch'
        ]::regclass [] LOOP
            PERFORM pg_catalog.pg_extension_config_dump(v_rel, '');
        END LOOP;
    END IF;
END;
$$;

-- ================================================================ errors a user can act on
-- The refusals of the commit-time recording (series cap, another project's benchmark or
-- measure) are raised by _flush_pending at the top, with hints; a report_benchmark of
-- another project's benchmark is refused when inserted (a trigger template, installed by
-- the attach below).
-- ---------------------------------------------------------------- triggers/pending_flush.sql
CREATE OR REPLACE FUNCTION active_series._flush_pending()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Deferred (fires at commit) for the transaction's first _pending row: records the
-- activity of every metric the transaction inserted, in one batch (_record_activity), and
-- removes its rows. Still inside the ingest transaction: a failure aborts the commit.
-- SECURITY DEFINER: it fires at commit as the ingesting role, which may neither write the
-- cache, history, counts and outbox nor call the internal functions that do; what it
-- records is derived from committed-to-be metric rows only, never from arguments.
-- A refusal found deep inside the recording (the series cap, _check_usage; a series with
-- another project's benchmark or measure, _resolve_shapes) is noted in the transaction
-- setting active_series._refusal instead of raised there, and raised here, at the top:
-- the client then sees its message, detail and hint with one line of context, not the
-- nested statements of the recorder. (No exception block: that would cost a
-- subtransaction at every commit.)
DECLARE
    v_report_benchmark_ids bigint [];
    v_measure_ids bigint [];
    v_refusal jsonb;
BEGIN
    PERFORM pg_catalog.set_config('active_series._refusal', 'defer', true);
    -- (the head row's pairs are NEW's: only the later statements' rows are unfolded, and a
    -- transaction of one statement passes its arrays as they are)
    WITH done AS (
        DELETE FROM active_series._pending AS p
        WHERE p.txid = NEW.txid
        RETURNING p.report_benchmark_ids, p.measure_ids, p.head
    )
    SELECT array_agg(x.id), array_agg(x.measure_id)
    INTO v_report_benchmark_ids, v_measure_ids
    FROM done AS d
    CROSS JOIN LATERAL unnest(d.report_benchmark_ids, d.measure_ids) AS x (id, measure_id)
    WHERE NOT d.head;
    PERFORM active_series._record_activity(
        NEW.report_benchmark_ids || v_report_benchmark_ids, NEW.measure_ids || v_measure_ids
    );
    v_refusal := nullif(pg_catalog.current_setting('active_series._refusal'), 'defer')::jsonb;
    PERFORM pg_catalog.set_config('active_series._refusal', '', true);
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._flush_pending() IS
'Trigger: at commit, record the activity of the metrics a transaction inserted.';

-- ---------------------------------------------------------------- sql/functions/_check_usage.sql
CREATE OR REPLACE FUNCTION active_series._check_usage(
    p_organization_id bigint,
    p_period_start timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- An ingest commit raised the period's billed count: refuse it beyond the organization's
-- series cap (SQLSTATE AS001; within the commit-time recording the refusal is noted for
-- _flush_pending to raise, see there), and write an alert row for every threshold the count
-- reached that has none in the period yet (no NOTIFY: see _changed; readers of alerts
-- poll them by id, `active-series alerts --follow`). Nothing to do,
-- and no lock, for an organization without a cap or thresholds.
-- Locks the period's _period_watch row (an upsert: a concurrent commit that raised the
-- count waits here until it is committed, and then counts with it; under REPEATABLE
-- READ it fails with a serialization error instead), so commits check one at a time.
DECLARE
    v_cap bigint;
    v_total bigint;
    v_refusal jsonb;
BEGIN
    SELECT b.series_cap INTO v_cap
    FROM active_series.billing_account AS b
    WHERE b.organization_id = p_organization_id;
    IF v_cap IS NULL
        AND NOT EXISTS (SELECT FROM active_series._alert_thresholds(p_organization_id)) THEN
        RETURN;
    END IF;

    INSERT INTO active_series._period_watch AS w (organization_id, period_start, series_count)
    VALUES (p_organization_id, p_period_start, 0)
    ON CONFLICT (organization_id, period_start) DO UPDATE
    SET checked_at = clock_timestamp();

    -- a new statement: it sees every commit that held the row before us
    SELECT coalesce(sum(u.series_count), 0)::bigint INTO v_total
    FROM active_series._billed_usage AS u
    WHERE u.organization_id = p_organization_id AND u.period_start = p_period_start;

    IF v_total > v_cap THEN
        v_refusal := jsonb_build_object(
            'sqlstate', 'AS001',
            'message', format(
                'active_series: organization %s is capped at %s active series; this commit '
                'would make %s in the period starting %s',
                p_organization_id, v_cap, v_total, p_period_start
            ),
            'detail', format(
                'organization_id=%s series_cap=%s series_count=%s',
                p_organization_id, v_cap, v_total
            ),
            'hint', 'Nothing of this transaction was written. Report fewer new series, or '
            'have an operator raise the cap: SELECT active_series.set_series_cap('
            || p_organization_id || ', <cap>) (NULL removes it).'
        );
        -- at commit, _flush_pending raises it (the first refusal of the commit wins)
        IF current_setting('active_series._refusal', true) = 'defer' THEN
            PERFORM set_config('active_series._refusal', v_refusal::text, true);
            RETURN;
        ELSIF current_setting('active_series._refusal', true) LIKE '{%' THEN
            RETURN;
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
    END IF;

    UPDATE active_series._period_watch AS w
    SET series_count = v_total
    WHERE w.organization_id = p_organization_id AND w.period_start = p_period_start;

    INSERT INTO active_series._alert AS a (
        organization_id, period_start, threshold, series_count, source
    )
    SELECT p_organization_id, p_period_start, t.threshold, v_total, t.source
    FROM active_series._alert_thresholds(p_organization_id) AS t
    WHERE t.threshold <= v_total
    ORDER BY t.threshold
    ON CONFLICT (organization_id, period_start, threshold) DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._check_usage(bigint, timestamptz) IS
'Internal: after an ingest commit raised a period''s count, enforce the series cap and write the alerts of the thresholds reached.';

-- ---------------------------------------------------------------- sql/functions/_resolve_shapes.sql
CREATE OR REPLACE FUNCTION active_series._resolve_shapes(p_groups active_series._shape_group[])
RETURNS active_series._shape_group[]
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Fills in each group's shape_id: the stored shape with the same project and series, else
-- a new one. A new shape is checked first: its benchmarks and measures must be its
-- project's (a series never joins another project's catalog), and the empty variant of
-- each benchmark it reports without a variant is created. Shapes are never updated and
-- have no unique key (two transactions may store the same set; either serves), so
-- creating one waits for nobody.
-- Locks: the empty variants it creates (benchmark order), nothing else.
DECLARE
    v_groups active_series._shape_group [];
    v_foreign record;
    v_refusal jsonb;
BEGIN
    v_groups := ARRAY(
        SELECT row(
            g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
            g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids,
            coalesce(
                g.shape_id,
                active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
        )::active_series._shape_group
        FROM unnest(p_groups) AS g
    );
    IF NOT EXISTS (SELECT FROM unnest(v_groups) AS g WHERE g.shape_id IS NULL) THEN
        RETURN v_groups;
    END IF;

    SELECT x.kind, x.id, x.project_id, x.report_project_id INTO v_foreign
    FROM (
        SELECT DISTINCT 'benchmark' AS kind, e.id, b.project_id, g.project_id AS report_project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids) AS e (id)
        INNER JOIN active_series.benchmark AS b ON b.id = e.id
        WHERE g.shape_id IS NULL
        UNION ALL
        SELECT DISTINCT 'measure', e.id, m.project_id, g.project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.measure_ids) AS e (id)
        INNER JOIN active_series.measure AS m ON m.id = e.id
        WHERE g.shape_id IS NULL
    ) AS x
    WHERE x.project_id <> x.report_project_id
    ORDER BY x.kind, x.id
    LIMIT 1;
    IF FOUND THEN
        v_refusal := jsonb_build_object(
            'sqlstate', '23503',
            'message', format(
                'active_series: %s %s belongs to project %s, not to project %s of the report',
                v_foreign.kind, v_foreign.id, v_foreign.project_id, v_foreign.report_project_id
            ),
            'detail', format(
                'A series is a testbed, benchmark, variant and measure of one project; %s %s '
                'is in project %s.', v_foreign.kind, v_foreign.id, v_foreign.project_id
            ),
            'hint', format(
                'Nothing of this transaction was written. Use the %s of the same name in '
                'project %s (the report''s), creating it there if needed.',
                v_foreign.kind, v_foreign.report_project_id
            )
        );
        -- within the commit-time recording (a trigger), _flush_pending raises it at the top:
        -- the groups with a new shape are left out, so that the recording ends cleanly
        IF pg_trigger_depth() > 0
            AND (
                current_setting('active_series._refusal', true) = 'defer'
                OR current_setting('active_series._refusal', true) LIKE '{%'
            ) THEN
            IF current_setting('active_series._refusal', true) = 'defer' THEN
                PERFORM set_config('active_series._refusal', v_refusal::text, true);
            END IF;
            RETURN ARRAY(SELECT g FROM unnest(v_groups) AS g WHERE g.shape_id IS NOT NULL);
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
    END IF;

    -- (without a variant table, every report_benchmark reports the empty variant)
    IF EXISTS (SELECT FROM active_series._attachment AS a WHERE a.role = 'variant') THEN
        INSERT INTO active_series.variant (benchmark_id, parameters)
        SELECT DISTINCT e.benchmark_id, '{}'::jsonb
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids, g.variant_ids) AS e (benchmark_id, variant_id)
        WHERE g.shape_id IS NULL AND e.variant_id = 0
        ORDER BY e.benchmark_id
        ON CONFLICT (benchmark_id, parameters) DO NOTHING;
    END IF;

    WITH missing AS (
        SELECT DISTINCT g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
    ),
    created AS (
        INSERT INTO active_series._shape (
            project_id, benchmark_ids, variant_ids, measure_ids, series
        )
        SELECT
            m.project_id, m.benchmark_ids, m.variant_ids, m.measure_ids,
            cardinality(m.measure_ids)
        FROM missing AS m
        RETURNING id, project_id, benchmark_ids, variant_ids, measure_ids
    )
    SELECT array_agg(
        row(
            g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
            g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids,
            coalesce(g.shape_id, c.id)
        )::active_series._shape_group
    )
    INTO v_groups
    FROM unnest(v_groups) AS g
    LEFT JOIN created AS c
        ON g.shape_id IS NULL
        AND c.project_id = g.project_id
        AND c.benchmark_ids = g.benchmark_ids
        AND c.variant_ids = g.variant_ids
        AND c.measure_ids = g.measure_ids;
    RETURN v_groups;
END;
$$;
COMMENT ON FUNCTION active_series._resolve_shapes(active_series._shape_group[]) IS
'Internal: the stored shape of each group''s set of series, created (after the project check) when new.';

-- ---------------------------------------------------------------- sql/functions/_require_organization.sql
CREATE OR REPLACE FUNCTION active_series._require_organization(p_organization_id bigint)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Raises a clear error (SQLSTATE P0002) unless the organization exists. Takes no locks.
BEGIN
    IF p_organization_id IS NULL THEN
        RAISE EXCEPTION 'active_series: organization id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass the id of an existing organization.';
    END IF;
    PERFORM FROM active_series.organization AS o WHERE o.id = p_organization_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'active_series: organization % does not exist', p_organization_id
            USING ERRCODE = 'no_data_found',
            HINT = 'Pass the id of an existing organization: SELECT organization_id, '
            'organization_name FROM active_series.usage lists them.';
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._require_organization(bigint) IS
'Internal: raise SQLSTATE P0002 "organization N does not exist" unless it does.';

-- ---------------------------------------------------------------- sql/functions/set_series_cap.sql
CREATE OR REPLACE FUNCTION active_series.set_series_cap(
    p_organization_id bigint,
    p_series_cap bigint
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Sets the organization's hard cap on a period's active series (NULL: no cap, the
-- default). From then on an ingest commit that would raise a period's count above it
-- fails with SQLSTATE AS001. A cap below the current count refuses new series only.
-- Locks the billing_account row.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_series_cap < 0 THEN
        RAISE EXCEPTION 'active_series: a series cap must be 0 or more (got %)', p_series_cap
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass a number of series, or NULL for no cap.';
    END IF;
    INSERT INTO active_series.billing_account AS b (organization_id, series_cap)
    VALUES (p_organization_id, p_series_cap)
    ON CONFLICT (organization_id) DO UPDATE
    SET series_cap = excluded.series_cap, updated_at = now();
END;
$$;
COMMENT ON FUNCTION active_series.set_series_cap(bigint, bigint) IS
'Set (or with NULL remove) an organization''s hard cap on the active series of a period.';

-- ---------------------------------------------------------------- sql/functions/set_alert.sql
CREATE OR REPLACE FUNCTION active_series.set_alert(
    p_organization_id bigint,
    p_series_count bigint,
    p_enabled boolean DEFAULT true
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Sets (p_enabled) or removes (false) an alert at p_series_count active series: the first
-- ingest commit of a period that brings the count to it or above writes one alert row.
-- false also silences a price tier's upper bound. Locks the threshold's row.
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_series_count IS NULL OR p_enabled IS NULL THEN
        RAISE EXCEPTION 'active_series: set_alert needs a series count and whether it is enabled'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_series_count < 1 THEN
        RAISE EXCEPTION 'active_series: an alert threshold must be a positive number of series (got %)',
            p_series_count
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass the number of active series to be alerted at (1 or more).';
    END IF;
    INSERT INTO active_series._alert_threshold AS a (organization_id, series_count, enabled)
    VALUES (p_organization_id, p_series_count, p_enabled)
    ON CONFLICT (organization_id, series_count) DO UPDATE
    SET enabled = excluded.enabled, updated_at = now();
END;
$$;
COMMENT ON FUNCTION active_series.set_alert(bigint, bigint, boolean) IS
'Set (true, the default) or remove (false) an alert threshold of an organization, in active series; false also silences a price tier''s bound.';

-- ---------------------------------------------------------------- sql/functions/count_active.sql
CREATE OR REPLACE FUNCTION active_series.count_active(
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

-- ---------------------------------------------------------------- triggers/reject_key_update.sql
CREATE OR REPLACE FUNCTION active_series._reject_key_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE UPDATE OF <key columns> on an attached table, only fired when one of them
-- changes (see the trigger's WHEN; attach installs it): moving a row to another owner
-- would silently re-attribute recorded activity, so it is refused. TG_ARGV: the columns,
-- and the table's key column.
DECLARE
    v_changed text;
    v_id text := to_jsonb(OLD) ->> TG_ARGV[1];
BEGIN
    -- (it always raises: the trigger's WHEN fires it only when a key column changes)
    SELECT string_agg(c.col, ', ' ORDER BY c.ord) INTO v_changed
    FROM unnest(string_to_array(TG_ARGV[0], ', ')) WITH ORDINALITY AS c (col, ord)
    WHERE (to_jsonb(OLD) -> c.col) IS DISTINCT FROM (to_jsonb(NEW) -> c.col);
    RAISE EXCEPTION 'active_series: % of % cannot be changed%',
        coalesce(v_changed, TG_ARGV[0]), TG_TABLE_NAME,
        coalesce(' (row id ' || v_id || ')', '')
        USING ERRCODE = 'feature_not_supported',
        DETAIL = format('These columns decide which series and organization activity belongs to: %s.',
            TG_ARGV[0]),
        HINT = 'Delete the row and insert a new one instead.';
END;
$$;
COMMENT ON FUNCTION active_series._reject_key_update() IS
'Trigger: refuse updates of the columns that decide which series and organization activity belongs to.';

-- ---------------------------------------------------------------- sql/functions/attach.sql
CREATE OR REPLACE FUNCTION active_series._benchmark_elsewhere(
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
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Of the report_benchmarks (id, report, benchmark) a statement inserted, the first whose
-- benchmark belongs to another project than its report (none: no row). Key lookups only,
-- whatever the statistics say (the planner settings above): it runs on every insert of
-- report_benchmarks (the trigger template report_benchmark_inserted). Takes no locks.
BEGIN
    RETURN QUERY
    SELECT n.id, n.benchmark_id, b.project_id, n.report_id, r.project_id
    FROM unnest(p_ids, p_report_ids, p_benchmark_ids) AS n (id, report_id, benchmark_id)
    INNER JOIN active_series.report AS r ON r.id = n.report_id
    INNER JOIN active_series.benchmark AS b ON b.id = n.benchmark_id
    WHERE b.project_id <> r.project_id
    ORDER BY n.id
    LIMIT 1;
END;
$$;
COMMENT ON FUNCTION active_series._benchmark_elsewhere(bigint[], bigint[], bigint[]) IS
'Internal: the first inserted report_benchmark whose benchmark is another project''s than its report''s.';

-- ---------------------------------------------------------------- sql/functions/attach.sql
CREATE OR REPLACE FUNCTION active_series._attach_triggers()
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
    -- a statement's metrics, noted for the commit-time recording (_record_pending)
    ('metric', 'metric_inserted', NULL, 'AFTER INSERT', 'STATEMENT', 'NEW', true, $b$
BEGIN
    INSERT INTO active_series._pending (report_benchmark_ids, measure_ids, head)
    SELECT
        array_agg(n.{report_benchmark_id}::bigint),
        array_agg(n.{measure_id}::bigint),
        NOT EXISTS (SELECT FROM active_series._pending AS p WHERE p.txid = txid_current())
    FROM new_rows AS n
    HAVING count(*) > 0;
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

-- ================================================================ the model, attached
-- (its triggers, made now, are the application's like its tables: not the extension's)
SELECT active_series.attach(
    organization => 'active_series.organization',
    project => 'active_series.project',
    testbed => 'active_series.testbed',
    benchmark => 'active_series.benchmark',
    measure => 'active_series.measure',
    report => 'active_series.report',
    report_benchmark => 'active_series.report_benchmark',
    metric => 'active_series.metric',
    variant => 'active_series.variant'
);
DO $$
DECLARE
    v_fn regprocedure;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        FOR v_fn IN
            SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
            WHERE p.pronamespace = 'active_series'::regnamespace
                AND p.proname LIKE '\_attached\_%'
        LOOP
            EXECUTE format('ALTER EXTENSION active_series DROP FUNCTION %s', v_fn);
        END LOOP;
    END IF;
END;
$$;

COMMENT ON TABLE active_series.metric IS
'One measured value. Inserting metrics is what makes a series active (see the trigger active_series_metric_inserted that attach installs). value must be finite: NULL, NaN and infinities are rejected.';

-- each post attempt has an idempotency key of its own; the identifier is only the identifier
CREATE OR REPLACE FUNCTION active_series._relay_identifier(
    p_stripe_customer_id text, p_event_timestamp bigint, p_value bigint
)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The identifier of a meter event post (Stripe's duplicate check; each attempt's
-- idempotency key is this plus a fresh suffix). Deterministic: a customer
-- never gets two events with one timestamp, so (customer, timestamp, value) names a post,
-- also across ledger rebuilds. The worker calls this. Takes no locks.
SELECT 'as-' || p_stripe_customer_id || '-' || p_event_timestamp || '-' || p_value;
$$;
COMMENT ON FUNCTION active_series._relay_identifier(text, bigint, bigint) IS
'Internal: the identifier of a meter event post, from customer, timestamp and value.';

-- prices: a per-unit price's transform_quantity is kept and applied; a first tier's flat
-- amount is charged at a quantity of 0 (Stripe bills it whatever the usage)
ALTER TABLE active_series._price
ADD COLUMN transform_divide_by bigint CHECK (transform_divide_by >= 1);
ALTER TABLE active_series._price
ADD COLUMN transform_round text CHECK (transform_round IN ('up', 'down'));
ALTER TABLE active_series._price
ADD CONSTRAINT _price_transform_quantity_check CHECK (
    (transform_divide_by IS NULL) = (transform_round IS NULL)
    AND (transform_divide_by IS NULL OR billing_scheme = 'per_unit')
);
COMMENT ON TABLE active_series._price IS
'The metered Stripe price of each billed organization, as the worker last read it from the subscription item for the meter (with _price_tier). price_preview computes amounts from it. transform_divide_by and transform_round are the price''s transform_quantity (per-unit prices only): the quantity is divided by it and rounded before it is priced.';

CREATE OR REPLACE FUNCTION active_series._price_breakdown(
    p_organization_id bigint,
    p_quantity bigint
)
RETURNS TABLE (
    tier integer,
    first_unit bigint,
    up_to bigint,
    units bigint,
    unit_amount_decimal numeric,
    flat_amount_decimal numeric,
    amount numeric
)
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What each tier of the organization's stored price charges for p_quantity units, unrounded
-- (minor units), as Stripe prices a metered item: graduated tiers charge each tier's units
-- at its unit amount plus the flat amount of every tier holding at least one unit; volume
-- tiers charge all units at the tier the total falls in, plus its flat amount. A tier's
-- range starts at 0, so a quantity of 0 falls in the first tier and is charged its flat
-- amount in both modes (Stripe "always bills the first flat rate tier when quantity=0").
-- per_unit prices are one tier, whose units are the quantity after the price's
-- transform_quantity (divided, rounded up or down) when it has one. No rows without a
-- stored price.
WITH price AS (
    SELECT p.billing_scheme, p.tiers_mode, p.unit_amount_decimal, p.transform_divide_by, p.transform_round
    FROM active_series._price AS p
    WHERE p.organization_id = p_organization_id
),

quantity AS (
    SELECT greatest(p_quantity, 0) AS q
),

tiers AS (
    SELECT
        t.tier, t.up_to, t.unit_amount_decimal, t.flat_amount_decimal,
        coalesce(lag(t.up_to) OVER (ORDER BY t.tier), 0) AS lower_bound
    FROM active_series._price_tier AS t
    WHERE t.organization_id = p_organization_id
),

volume_tier AS (
    SELECT min(t.tier) AS tier
    FROM tiers AS t
    CROSS JOIN quantity AS n
    WHERE t.up_to IS NULL OR n.q <= t.up_to
),

charged AS (
    SELECT
        t.tier,
        t.lower_bound + 1 AS first_unit,
        t.up_to,
        CASE
            WHEN pr.tiers_mode = 'volume'
                THEN CASE WHEN t.tier = v.tier THEN n.q ELSE 0 END
            ELSE greatest(least(n.q, coalesce(t.up_to, n.q)) - t.lower_bound, 0)
        END AS units,
        CASE
            WHEN pr.tiers_mode = 'volume' THEN t.tier = v.tier
            ELSE t.tier = 1 OR n.q > t.lower_bound
        END AS flat_charged,
        t.unit_amount_decimal,
        t.flat_amount_decimal
    FROM tiers AS t
    CROSS JOIN price AS pr
    CROSS JOIN quantity AS n
    CROSS JOIN volume_tier AS v
    WHERE pr.billing_scheme = 'tiered'
    UNION ALL
    SELECT
        1,
        1,
        NULL::bigint,
        CASE pr.transform_round
            WHEN 'up' THEN (n.q + pr.transform_divide_by - 1) / pr.transform_divide_by
            WHEN 'down' THEN n.q / pr.transform_divide_by
            ELSE n.q
        END,
        false,
        pr.unit_amount_decimal,
        NULL::numeric
    FROM price AS pr
    CROSS JOIN quantity AS n
    WHERE pr.billing_scheme = 'per_unit'
)

SELECT
    c.tier,
    c.first_unit,
    c.up_to,
    c.units,
    c.unit_amount_decimal,
    c.flat_amount_decimal,
    c.units * coalesce(c.unit_amount_decimal, 0)
    + CASE WHEN c.flat_charged THEN coalesce(c.flat_amount_decimal, 0) ELSE 0 END AS amount
FROM charged AS c
ORDER BY c.tier;
$$;
COMMENT ON FUNCTION active_series._price_breakdown(bigint, bigint) IS
'Internal: per tier of the organization''s stored price, the units and the unrounded amount (minor units) Stripe charges for a quantity (per_unit: the units after transform_quantity; a first tier''s flat amount also at 0).';

CREATE OR REPLACE FUNCTION active_series._store_price(
    p_organization_id bigint,
    p_price jsonb,
    p_subscription_item_id text DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Keeps a copy of the organization's metered Stripe price (a Stripe price object as JSON,
-- its tiers expanded), replacing the previous one; NULL forgets it. Amounts are kept in
-- Stripe's exact _decimal forms (minor units), falling back to the integer fields; a
-- per-unit price's transform_quantity (divide_by, round) is kept with it (Stripe allows it
-- on per-unit prices only). Locks the organization's _price row.
DECLARE
    v_scheme text := coalesce(p_price ->> 'billing_scheme', 'per_unit');
    v_tiers jsonb := p_price -> 'tiers';
    v_transform jsonb := p_price -> 'transform_quantity';
    v_divide_by bigint;
    v_round text;
    v_bad text;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    DELETE FROM active_series._price AS p WHERE p.organization_id = p_organization_id;
    IF p_price IS NULL OR jsonb_typeof(p_price) = 'null' THEN
        RETURN;
    END IF;
    IF jsonb_typeof(p_price) <> 'object' OR p_price ->> 'id' IS NULL
        OR coalesce(p_price ->> 'currency', '') !~ '^[a-zA-Z]{3}$'
        OR v_scheme NOT IN ('per_unit', 'tiered') THEN
        RAISE EXCEPTION 'active_series: not a Stripe price object with an id, a currency and a billing scheme'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_scheme = 'tiered' AND (
        jsonb_typeof(v_tiers) IS DISTINCT FROM 'array' OR jsonb_array_length(v_tiers) = 0
    ) THEN
        RAISE EXCEPTION 'active_series: tiered price % has no tiers (read it with expand[]=...price.tiers)',
            p_price ->> 'id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(v_transform) = 'object' THEN
        v_round := v_transform ->> 'round';
        v_divide_by := CASE
            WHEN v_transform ->> 'divide_by' ~ '^[0-9]{1,18}$' THEN (v_transform ->> 'divide_by')::bigint
        END;
        IF v_scheme <> 'per_unit' THEN
            RAISE EXCEPTION 'active_series: price % has transform_quantity with billing scheme %: Stripe allows it on per_unit prices only',
                p_price ->> 'id', v_scheme
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF coalesce(v_divide_by, 0) < 1 OR v_round IS NULL OR v_round NOT IN ('up', 'down') THEN
            RAISE EXCEPTION 'active_series: price % has a transform_quantity other than {divide_by: a positive whole number, round: up or down}: %',
                p_price ->> 'id', v_transform
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    INSERT INTO active_series._price (
        organization_id, stripe_price_id, stripe_subscription_item_id, currency, billing_scheme,
        tiers_mode, unit_amount, unit_amount_decimal, read_at, transform_divide_by, transform_round
    )
    VALUES (
        p_organization_id,
        p_price ->> 'id',
        p_subscription_item_id,
        lower(p_price ->> 'currency'),
        v_scheme,
        CASE WHEN v_scheme = 'tiered' THEN p_price ->> 'tiers_mode' END,
        (p_price ->> 'unit_amount')::bigint,
        coalesce(p_price ->> 'unit_amount_decimal', p_price ->> 'unit_amount')::numeric,
        now(),
        v_divide_by,
        v_round
    );
    IF v_scheme <> 'tiered' THEN
        RETURN;
    END IF;
    INSERT INTO active_series._price_tier (
        organization_id, tier, up_to, flat_amount, flat_amount_decimal, unit_amount,
        unit_amount_decimal
    )
    SELECT
        p_organization_id,
        e.n,
        CASE WHEN e.t ->> 'up_to' IS NULL OR e.t ->> 'up_to' = 'inf' THEN NULL
            ELSE (e.t ->> 'up_to')::bigint END,
        (e.t ->> 'flat_amount')::bigint,
        coalesce(e.t ->> 'flat_amount_decimal', e.t ->> 'flat_amount')::numeric,
        (e.t ->> 'unit_amount')::bigint,
        coalesce(e.t ->> 'unit_amount_decimal', e.t ->> 'unit_amount')::numeric
    FROM jsonb_array_elements(v_tiers) WITH ORDINALITY AS e (t, n);
    -- Stripe's rules: up_to increases, only the last tier is unbounded
    SELECT format('tier %s', t.tier) INTO v_bad
    FROM (
        SELECT
            r.tier, r.up_to,
            lag(r.up_to) OVER (ORDER BY r.tier) AS previous,
            r.tier = max(r.tier) OVER () AS last
        FROM active_series._price_tier AS r
        WHERE r.organization_id = p_organization_id
    ) AS t
    WHERE (t.up_to IS NULL) <> t.last OR t.up_to <= t.previous
    ORDER BY t.tier
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'active_series: price %: % breaks the tier order (up_to must increase, only the last tier is unbounded)',
            p_price ->> 'id', v_bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._store_price(bigint, jsonb, text) IS
'Internal (the worker): store the organization''s metered Stripe price and its tiers as read from its subscription item; NULL forgets it.';

-- sql/functions/set_billing_period.sql: the recorded periods after the new end are
-- re-bucketed onto the rolling schedule
CREATE OR REPLACE FUNCTION active_series.set_billing_period(
    p_organization_id bigint,
    p_period_start timestamptz,
    p_period_end timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Makes [p_period_start, p_period_end) a billing period of the organization and the
-- anchor of the ones after it: they roll forward by the same interval (whole months when
-- the end is the start plus whole months in UTC, else the exact duration). Recorded
-- periods cut by either bound are split exactly; those inside are merged into it. Recorded
-- periods after the end are re-bucketed onto the new schedule the same way: each rolling
-- period [anchor + k * interval, anchor + (k + 1) * interval), k >= 1, that holds recorded
-- activity becomes one recorded period with exactly that history; the ones after the end
-- that hold none are dropped (derived again, on the schedule, when first used). The work
-- is one probe when nothing is recorded after the end, else one split and merge per
-- rolling period with activity (empty stretches are skipped, whatever the interval).
-- Locks: the organization's period lock, exclusively (waits for ingest in flight).
-- SECURITY DEFINER (EXECUTE: active_series_admin and active_series_worker only): the worker
-- follows the Stripe subscription's periods with it, and re-bucketing rewrites history,
-- counts and last_seen, which the worker must not be able to write directly.
DECLARE
    v_start_utc timestamp := p_period_start AT TIME ZONE 'UTC';
    v_end_utc timestamp := p_period_end AT TIME ZONE 'UTC';
    v_months integer;
    v_interval interval;
    v_at timestamptz;
    v_next timestamptz;
    v_first timestamptz;
    v_cell_start timestamptz;
    v_cell_end timestamptz;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_period_start IS NULL OR p_period_end IS NULL THEN
        RAISE EXCEPTION 'active_series: a billing period needs a start and an end'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT (isfinite(p_period_start) AND isfinite(p_period_end)) THEN
        RAISE EXCEPTION 'active_series: billing period bounds must be finite'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_period_end <= p_period_start THEN
        RAISE EXCEPTION 'active_series: billing period end % is not after its start %',
            p_period_end, p_period_start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the same range as report.created (every client can read the periods), and no longer
    -- than Stripe's longest billing interval: anything else is a typo
    IF p_period_start < '1900-01-01 00:00:00+00' OR p_period_end > '9000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'active_series: a billing period must lie between 1900-01-01 and '
            '9000-01-01 UTC (got % to %)', p_period_start, p_period_end
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_period_end > p_period_start + interval '3 years' THEN
        RAISE EXCEPTION 'active_series: a billing period must not be longer than 3 years '
            '(got % to %)', p_period_start, p_period_end
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    PERFORM pg_advisory_xact_lock(1634956099, hashint8(p_organization_id));

    v_months := ((extract(YEAR FROM v_end_utc) - extract(YEAR FROM v_start_utc)) * 12
        + extract(MONTH FROM v_end_utc) - extract(MONTH FROM v_start_utc))::integer;
    IF v_months >= 1 AND v_start_utc + make_interval(months => v_months) = v_end_utc THEN
        v_interval := make_interval(months => v_months);
    ELSE
        v_interval := make_interval(secs => extract(EPOCH FROM p_period_end - p_period_start));
    END IF;

    PERFORM active_series._split_period(p_organization_id, p_period_start);
    PERFORM active_series._split_period(p_organization_id, p_period_end);
    PERFORM active_series._merge_periods(p_organization_id, p_period_start, p_period_end);

    -- the recorded periods after the end, onto the rolling schedule; no recorded period
    -- crosses v_at at the top of the loop (split there before)
    v_at := p_period_end;
    LOOP
        -- the first recorded period from v_at on that holds activity, and its first activity
        SELECT t.period_start INTO v_next
        FROM active_series._testbed_period AS t
        WHERE t.organization_id = p_organization_id AND t.period_start >= v_at
        ORDER BY t.period_start
        LIMIT 1;
        IF v_next IS NULL THEN
            -- nothing recorded from v_at on holds activity
            DELETE FROM active_series._period AS p
            WHERE p.organization_id = p_organization_id AND p.period_start >= v_at;
            EXIT;
        END IF;
        SELECT min(s.first_seen) INTO v_first
        FROM active_series._testbed_period AS t
        INNER JOIN active_series._shape_seen AS s
            ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
        WHERE t.organization_id = p_organization_id AND t.period_start = v_next;
        v_first := greatest(coalesce(v_first, v_next), v_next);

        -- the rolling period containing v_first (k >= 1: v_first >= the end)
        SELECT r.period_start, r.period_end INTO v_cell_start, v_cell_end
        FROM active_series._rolling_period(p_period_start, v_interval, v_first) AS r;

        PERFORM active_series._split_period(p_organization_id, v_cell_start);
        PERFORM active_series._split_period(p_organization_id, v_cell_end);
        -- what lies before the cell holds no activity (v_first is the first from v_at on)
        DELETE FROM active_series._period AS p
        WHERE p.organization_id = p_organization_id
            AND p.period_start >= v_at
            AND p.period_start < v_cell_start;
        PERFORM active_series._merge_periods(p_organization_id, v_cell_start, v_cell_end);
        v_at := v_cell_end;
    END LOOP;

    INSERT INTO active_series.billing_account AS b (
        organization_id, period_anchor, period_interval
    )
    VALUES (p_organization_id, p_period_start, v_interval)
    ON CONFLICT (organization_id) DO UPDATE
    SET period_anchor = excluded.period_anchor,
        period_interval = excluded.period_interval,
        updated_at = now();
    PERFORM active_series._changed(p_organization_id, p_period_start, 'billing_period');
END;
$$;
COMMENT ON FUNCTION active_series.set_billing_period(bigint, timestamptz, timestamptz) IS
'Set an organization''s billing period [start, end); later periods roll forward by the same interval. History is re-bucketed exactly.';

UPDATE active_series._meta SET version = '0.4.0';

-- sql/grants.sql: the reader runs the CLI's read commands (version check, attachment check,
-- relay failures)
GRANT SELECT ON active_series._meta, active_series._attachment TO active_series_reader;
GRANT SELECT ON active_series.relay_failures TO active_series_reader;

-- ================================================================ tenant isolation (optional)
-- ---------------------------------------------------------------- sql/roles.sql (the new role)
-- The group roles shipped with the extension (NOLOGIN; grant them to login roles). Roles
-- are cluster-wide: created here when missing, left alone when another database of the
-- cluster (or an administrator) created them first, and not dropped by DROP EXTENSION.
-- What each may do is granted per database in sql/grants.sql (see docs/roles.md).
DO $roles$
DECLARE
    v_role record;
BEGIN
    FOR v_role IN
        SELECT r.name, r.purpose
        FROM (
            VALUES
            ('active_series_ingest',
                'active_series: ingest clients (insert and read the reference data model)'),
            ('active_series_worker',
                'active_series: the Stripe relay worker (claim relay work, read counts, '
                'write the ledger)'),
            ('active_series_reader',
                'active_series: applications and dashboards (read counts, usage, prices '
                'and alerts; no writes)'),
            ('active_series_admin',
                'active_series: operators (billing periods, Stripe customers, backfill, '
                'verify, relay resume, explicit report.created)'),
            ('active_series_tenant',
                'active_series: a tenant''s dashboard (the tenant_* read functions, for the '
                'organization the connection''s active_series.organization_id names)')
        ) AS r (name, purpose)
    LOOP
        IF pg_catalog.to_regrole(v_role.name) IS NULL THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', v_role.name);
                EXECUTE pg_catalog.format(
                    'COMMENT ON ROLE %I IS %L', v_role.name, v_role.purpose
                );
            EXCEPTION WHEN duplicate_object THEN
                -- created meanwhile by a concurrent install into another database
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;

-- ---------------------------------------------------------------- sql/functions/tenant.sql
-- Tenant isolation (optional): the read API of one organization, for a tenant-facing
-- dashboard. A member of active_series_tenant may call these functions and nothing else
-- of the schema; each answers for the organization the connection's setting
-- active_series.organization_id names, which the application sets on every connection it
-- hands to a tenant's dashboard. Trust model (docs/roles.md): any session may SET a
-- setting, so the role keeps the dashboard's own queries to one organization, but must
-- never run SQL written by a tenant's users.

CREATE FUNCTION active_series._tenant_organization()
RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The organization named by the connection's setting active_series.organization_id.
-- Raises 42501 when it is not set, 22023 when it is no organization id, P0002 when that
-- organization does not exist. Takes no locks.
DECLARE
    v_setting text := btrim(current_setting('active_series.organization_id', true));
BEGIN
    IF v_setting IS NULL OR v_setting = '' THEN
        RAISE EXCEPTION 'active_series: no tenant organization is set on this connection'
            USING ERRCODE = 'insufficient_privilege',
            HINT = 'The application sets it on each connection of a tenant''s dashboard: '
            'SET active_series.organization_id = ''<organization id>''.';
    END IF;
    IF v_setting !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'active_series: active_series.organization_id must be an organization id (got %)',
            quote_literal(v_setting)
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'SET active_series.organization_id = ''<organization id>''.';
    END IF;
    PERFORM FROM active_series.organization AS o WHERE o.id = v_setting::bigint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'active_series: organization % (active_series.organization_id) does not exist',
            v_setting
            USING ERRCODE = 'no_data_found',
            HINT = 'The application sets active_series.organization_id to the id of the '
            'tenant''s organization.';
    END IF;
    RETURN v_setting::bigint;
END;
$$;
COMMENT ON FUNCTION active_series._tenant_organization() IS
'Internal: the organization of the connection''s setting active_series.organization_id (tenant functions).';

CREATE FUNCTION active_series.tenant_usage()
RETURNS TABLE (
    organization_id bigint,
    organization_name text,
    plan text,
    period_start timestamptz,
    period_end timestamptz,
    active_series bigint,
    private_series bigint,
    public_series bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The tenant's row of the view usage (without the Stripe customer).
-- SECURITY DEFINER: the read API of active_series_tenant, which may read neither the view
-- (every organization's rows) nor the tables behind it; it returns the connection's
-- organization only.
DECLARE
    v_org bigint := active_series._tenant_organization();
BEGIN
    RETURN QUERY
    SELECT
        u.organization_id, u.organization_name, u.plan, u.period_start, u.period_end,
        u.active_series, u.private_series, u.public_series
    FROM active_series.usage AS u
    WHERE u.organization_id = v_org;
END;
$$;
COMMENT ON FUNCTION active_series.tenant_usage() IS
'Tenant: the connection''s organization''s current period and count (the view usage, one row, no Stripe customer).';

CREATE FUNCTION active_series.tenant_period_usage(p_period_start timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- period_usage of the connection's organization.
-- SECURITY DEFINER: the read API of active_series_tenant, which may not call period_usage
-- (any organization); it answers for the connection's organization only.
BEGIN
    RETURN active_series.period_usage(active_series._tenant_organization(), p_period_start);
END;
$$;
COMMENT ON FUNCTION active_series.tenant_period_usage(timestamptz) IS
'Tenant: period_usage of the connection''s organization (active_series.organization_id).';

CREATE FUNCTION active_series.tenant_periods()
RETURNS TABLE (period_start timestamptz, period_end timestamptz, active_series bigint)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- periods of the connection's organization.
-- SECURITY DEFINER: the read API of active_series_tenant, which may not call periods (any
-- organization); it answers for the connection's organization only.
BEGIN
    RETURN QUERY SELECT * FROM active_series.periods(active_series._tenant_organization());
END;
$$;
COMMENT ON FUNCTION active_series.tenant_periods() IS
'Tenant: periods of the connection''s organization (active_series.organization_id).';

CREATE FUNCTION active_series.tenant_period_series(p_period_start timestamptz DEFAULT NULL)
RETURNS TABLE (
    project_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    variant_id bigint,
    measure_id bigint,
    first_seen timestamptz,
    last_seen timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- period_series of the connection's organization.
-- SECURITY DEFINER: the read API of active_series_tenant, which may not call
-- period_series (any organization); it answers for the connection's organization only.
BEGIN
    RETURN QUERY
    SELECT * FROM active_series.period_series(active_series._tenant_organization(), p_period_start);
END;
$$;
COMMENT ON FUNCTION active_series.tenant_period_series(timestamptz) IS
'Tenant: period_series of the connection''s organization (active_series.organization_id).';

CREATE FUNCTION active_series.tenant_price_preview(p_period_start timestamptz DEFAULT NULL)
RETURNS TABLE (
    period_start timestamptz,
    period_end timestamptz,
    active_series bigint,
    amount bigint,
    currency text,
    tiers_mode text,
    tiers jsonb,
    stripe_price_id text,
    price_read_at timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- price_preview of the connection's organization.
-- SECURITY DEFINER: the read API of active_series_tenant, which may not call
-- price_preview (any organization); it answers for the connection's organization only.
BEGIN
    RETURN QUERY
    SELECT * FROM active_series.price_preview(active_series._tenant_organization(), p_period_start);
END;
$$;
COMMENT ON FUNCTION active_series.tenant_price_preview(timestamptz) IS
'Tenant: price_preview of the connection''s organization (active_series.organization_id).';

CREATE FUNCTION active_series.tenant_usage_summary()
RETURNS TABLE (
    organization_id bigint,
    organization_name text,
    plan text,
    period_start timestamptz,
    period_end timestamptz,
    active_series bigint,
    private_series bigint,
    public_series bigint,
    amount bigint,
    currency text,
    tiers jsonb,
    series_cap bigint,
    next_alert bigint,
    stripe_value bigint,
    stripe_in_sync boolean
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- usage_summary of the connection's organization.
-- SECURITY DEFINER: the read API of active_series_tenant, which may not call
-- usage_summary (any organization); it answers for the connection's organization only.
BEGIN
    RETURN QUERY SELECT * FROM active_series.usage_summary(active_series._tenant_organization());
END;
$$;
COMMENT ON FUNCTION active_series.tenant_usage_summary() IS
'Tenant: usage_summary of the connection''s organization (active_series.organization_id).';

CREATE FUNCTION active_series.tenant_alerts()
RETURNS TABLE (
    id bigint,
    period_start timestamptz,
    period_end timestamptz,
    threshold bigint,
    series_count bigint,
    source text,
    created timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The alerts of the connection's organization (the view alerts), oldest first.
-- SECURITY DEFINER: the read API of active_series_tenant, which may not read the view
-- (every organization's alerts); it returns the connection's organization's only.
DECLARE
    v_org bigint := active_series._tenant_organization();
BEGIN
    RETURN QUERY
    SELECT a.id, a.period_start, a.period_end, a.threshold, a.series_count, a.source, a.created
    FROM active_series.alerts AS a
    WHERE a.organization_id = v_org
    ORDER BY a.id;
END;
$$;
COMMENT ON FUNCTION active_series.tenant_alerts() IS
'Tenant: the alerts of the connection''s organization (active_series.organization_id), oldest first.';

-- ---------------------------------------------------------------- sql/grants.sql
REVOKE EXECUTE ON FUNCTION
active_series._tenant_organization(),
active_series.tenant_usage(),
active_series.tenant_period_usage(timestamptz),
active_series.tenant_periods(),
active_series.tenant_period_series(timestamptz),
active_series.tenant_price_preview(timestamptz),
active_series.tenant_usage_summary(),
active_series.tenant_alerts()
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION
active_series._tenant_organization(),
active_series.tenant_usage(),
active_series.tenant_period_usage(timestamptz),
active_series.tenant_periods(),
active_series.tenant_period_series(timestamptz),
active_series.tenant_price_preview(timestamptz),
active_series.tenant_usage_summary(),
active_series.tenant_alerts()
TO active_series_admin;
GRANT USAGE ON SCHEMA active_series TO active_series_tenant;
GRANT EXECUTE ON FUNCTION
active_series.tenant_usage(),
active_series.tenant_period_usage(timestamptz),
active_series.tenant_periods(),
active_series.tenant_period_series(timestamptz),
active_series.tenant_price_preview(timestamptz),
active_series.tenant_usage_summary(),
active_series.tenant_alerts()
TO active_series_tenant;
REVOKE EXECUTE ON FUNCTION active_series._benchmark_elsewhere(bigint[], bigint[], bigint[])
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series._benchmark_elsewhere(bigint[], bigint[], bigint[])
TO active_series_admin;
-- relay_now posted beside the worker on its own terms; posting is the worker's alone.
DROP FUNCTION IF EXISTS active_series.relay_now(bigint);
-- sql/functions/_rolling_period.sql: the one definition of the rolling schedule, which
-- _derive_period and set_billing_period both call.
CREATE FUNCTION active_series._rolling_period(
    p_anchor timestamptz,
    p_interval interval,
    p_at timestamptz,
    OUT period_start timestamptz,
    OUT period_end timestamptz
)
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rolling period [anchor + k * interval, anchor + (k + 1) * interval), k >= 0, that
-- contains p_at (at or after the anchor). Computed in UTC from the anchor each time, so
-- month lengths never drift: k is first estimated from whole months (an interval with a
-- month part) or seconds, then corrected both ways (months differ in length, and an
-- interval times k is rounded to microseconds). The one definition of the schedule:
-- _derive_period and set_billing_period call it. Reads nothing; takes no locks.
DECLARE
    v_anchor timestamp := p_anchor AT TIME ZONE 'UTC';
    v_at timestamp := p_at AT TIME ZONE 'UTC';
    v_months integer := extract(YEAR FROM p_interval)::integer * 12
        + extract(MONTH FROM p_interval)::integer;
    v_k bigint;
BEGIN
    IF v_months > 0 THEN
        v_k := ((extract(YEAR FROM v_at) - extract(YEAR FROM v_anchor)) * 12
            + extract(MONTH FROM v_at) - extract(MONTH FROM v_anchor))::bigint / v_months;
    ELSE
        v_k := floor(
            extract(EPOCH FROM p_at - p_anchor) / extract(EPOCH FROM p_interval)
        )::bigint;
    END IF;
    v_k := greatest(v_k, 0);
    WHILE v_k > 0 AND v_anchor + v_k * p_interval > v_at LOOP
        v_k := v_k - 1;
    END LOOP;
    WHILE v_anchor + (v_k + 1) * p_interval <= v_at LOOP
        v_k := v_k + 1;
    END LOOP;
    period_start := (v_anchor + v_k * p_interval) AT TIME ZONE 'UTC';
    period_end := (v_anchor + (v_k + 1) * p_interval) AT TIME ZONE 'UTC';
END;
$$;
COMMENT ON FUNCTION active_series._rolling_period(timestamptz, interval, timestamptz) IS
'Internal: the period of the rolling schedule anchor + k * interval that contains a time.';
REVOKE ALL ON FUNCTION active_series._rolling_period(timestamptz, interval, timestamptz)
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series._rolling_period(timestamptz, interval, timestamptz)
TO active_series_worker, active_series_admin;
CREATE OR REPLACE FUNCTION active_series._derive_period(
    p_organization_id bigint,
    p_at timestamptz,
    OUT period_start timestamptz,
    OUT period_end timestamptz
)
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The billing period that would contain p_at, from the organization's configuration:
-- the rolling period anchor + k * interval (_rolling_period), or the calendar month in UTC
-- before the anchor / without one.
-- Clamped so that it never overlaps a recorded period. Reads only; takes no locks.
DECLARE
    v_anchor timestamptz;
    v_interval interval;
    v_month timestamp;
    v_bound timestamptz;
BEGIN
    SELECT b.period_anchor, b.period_interval
    INTO v_anchor, v_interval
    FROM active_series.billing_account AS b
    WHERE b.organization_id = p_organization_id;

    IF v_anchor IS NOT NULL AND p_at >= v_anchor THEN
        SELECT r.period_start, r.period_end INTO period_start, period_end
        FROM active_series._rolling_period(v_anchor, v_interval, p_at) AS r;
    ELSE
        v_month := date_trunc('month', p_at AT TIME ZONE 'UTC');
        period_start := v_month AT TIME ZONE 'UTC';
        period_end := (v_month + interval '1 month') AT TIME ZONE 'UTC';
    END IF;

    SELECT p.period_end INTO v_bound
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start <= p_at
    ORDER BY p.period_start DESC
    LIMIT 1;
    IF v_bound IS NOT NULL AND v_bound > period_start THEN
        period_start := v_bound;
    END IF;

    SELECT p.period_start INTO v_bound
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start > p_at
    ORDER BY p.period_start
    LIMIT 1;
    IF v_bound IS NOT NULL AND v_bound < period_end THEN
        period_end := v_bound;
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._derive_period(bigint, timestamptz) IS
'Internal: the period that would contain a time, from the billing configuration, clamped between recorded periods.';

-- ================================================================ error reports matched to posts
-- ---------------------------------------------------------------- sql/tables/post_attempt.sql
CREATE TABLE active_series._post_attempt (
    idempotency_key text NOT NULL,
    identifier text NOT NULL,
    created timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (idempotency_key, identifier)
);
CREATE INDEX post_attempt_created_idx ON active_series._post_attempt (created);
COMMENT ON TABLE active_series._post_attempt IS
'The idempotency key of each request the relay made to post meter events, with the ledger identifiers it carried (one for a v1 post, up to 100 for a v2 stream request), written before the request: Stripe validates meter events after answering and its error reports name a refused event by its request''s key. The relay deletes rows after 31 days (the Events API keeps events 30).';
-- ---------------------------------------------------------------- sql/grants.sql
GRANT SELECT, INSERT, DELETE ON active_series._post_attempt TO active_series_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON active_series._post_attempt TO active_series_admin;
-- ---------------------------------------------------------------- sql/config_dump.sql
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        PERFORM pg_catalog.pg_extension_config_dump('active_series._post_attempt', '');
    END IF;
END;
$$;
-- ================================================================ the subscription's edges, kept by the relay
-- ---------------------------------------------------------------- sql/tables/relay_subscription.sql
CREATE TABLE active_series._relay_subscription (
    organization_id bigint PRIMARY KEY,
    stripe_customer_id text NOT NULL,
    ended_at bigint,
    cancel_at bigint,
    billed_since bigint,
    stripe_price_id text,
    read_at timestamptz NOT NULL DEFAULT now(),
    started_at bigint,
    prior_ended_at bigint
);
COMMENT ON TABLE active_series._relay_subscription IS
'Relay bookkeeping per organization: when its Stripe customer''s subscriptions let Stripe bill usage, as the worker last read them (Unix seconds). ended_at: no subscription is live, the newest canceled one ended then (nothing is posted at or after it); cancel_at: the live subscription''s scheduled cancellation (the final value is posted before it); billed_since: the metered item bills usage from then on (added to the subscription, or its price changed, after the period began); stripe_price_id: the metered item''s price at that read; started_at: the live subscription''s start (its metered item''s, when added later), and prior_ended_at: the end of an earlier subscription of the customer before it, if any: the periods that ended at or before started_at and began at or after prior_ended_at are billed by no invoice (finalized unbilled, never posted). Kept in the database so that every worker, a restarted one too, respects them before its own first read of the subscription. A row of another customer than the organization''s billing account is ignored.';
GRANT SELECT, INSERT, UPDATE ON active_series._relay_subscription
TO active_series_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON active_series._relay_subscription
TO active_series_admin;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        PERFORM pg_catalog.pg_extension_config_dump('active_series._relay_subscription', '');
    END IF;
END;
$$;
-- ---------------------------------------------------------------- sql/functions/_lock_key.sql
CREATE FUNCTION active_series._lock_key(p_name text)
RETURNS integer
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The classes of the extension's advisory locks, registered here and nowhere else: the
-- first key of pg_advisory_*lock(class, key). Immutable, and always called with a constant
-- name: the planner folds the call into the cached plan, so the locks cost nothing more.
--   period           per organization (hashint8 of its id): shared while a transaction uses
--                    its period boundaries (_period_for), exclusive while set_billing_period
--                    moves them
--   period_creation  per organization: recording a new period (_period_for)
--   testbed_history  per testbed (hashint8 of its id): every write to its history
--                    (_lock_testbeds)
--   backfill         key 0, session level: one backfill at a time
-- (The installer's lock, one bigint key, is in another key space: active_series.install.)
DECLARE
    v_class integer;
BEGIN
    v_class := CASE p_name
        WHEN 'period' THEN 1634956099
        WHEN 'period_creation' THEN 1634956100
        WHEN 'testbed_history' THEN 1634956101
        WHEN 'backfill' THEN 1634956102
    END;
    IF v_class IS NULL THEN
        -- (a lock taken with a NULL class would silently be no lock)
        RAISE EXCEPTION 'active_series: no advisory lock named %', p_name
            USING ERRCODE = 'internal_error';
    END IF;
    RETURN v_class;
END;
$$;
COMMENT ON FUNCTION active_series._lock_key(text) IS
'Internal: the advisory-lock class of a named lock (period, period_creation, testbed_history, backfill).';
-- ---------------------------------------------------------------- sql/functions/_period_for.sql
CREATE OR REPLACE FUNCTION active_series._period_for(
    p_organization_id bigint,
    p_at timestamptz,
    OUT period_start timestamptz,
    OUT period_end timestamptz
)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The period containing p_at, recorded in _period if it was not yet.
-- Locks: the organization's period lock in shared mode until the transaction ends
-- (set_billing_period takes it exclusively, so boundaries stay fixed while they are
-- used); recording a new period also takes the organization's period-creation lock, so
-- that two transactions never derive overlapping periods from different snapshots.
BEGIN
    PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(p_organization_id));
    -- the recorded one (as _recorded_period, written out: this runs at every ingest commit)
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
    IF period_start IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(_lock_key('period_creation'), hashint8(p_organization_id));
    -- a fresh snapshot: a period recorded meanwhile by a committed transaction counts
    SELECT a.period_start, a.period_end
    INTO period_start, period_end
    FROM active_series._period_at(p_organization_id, p_at) AS a;
    INSERT INTO active_series._period (organization_id, period_start, period_end)
    VALUES (p_organization_id, period_start, period_end)
    ON CONFLICT ON CONSTRAINT _period_pkey DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._period_for(bigint, timestamptz) IS
'Internal: the billing period containing a time, recorded on first use; holds the organization''s period lock (shared) until commit.';
-- ---------------------------------------------------------------- sql/functions/_lock_testbeds.sql
CREATE OR REPLACE FUNCTION active_series._lock_testbeds(p_testbed_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Every write to a testbed's history happens under its advisory lock (until the transaction
-- ends); taken in lock-key order, so that two writers of several testbeds cannot deadlock.
-- (PL/pgSQL for its cached plan: it runs at every ingest commit.)
BEGIN
    PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), k.key)
    FROM (
        SELECT DISTINCT hashint8(t.id) AS key FROM unnest(p_testbed_ids) AS t (id) ORDER BY 1
    ) AS k;
END;
$$;
COMMENT ON FUNCTION active_series._lock_testbeds(bigint[]) IS
'Internal: take the history locks of some testbeds, in lock-key order, until the transaction ends.';
-- ---------------------------------------------------------------- sql/functions/_record_activity.sql
CREATE OR REPLACE FUNCTION active_series._record_activity(
    p_report_benchmark_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Records metrics, given as (report_benchmark, measure) pairs (the ingest trigger passes a
-- whole transaction's at commit, backfill a batch of reports'), in the history and the
-- per-period counts: each report_benchmark is looked up once (its report, project and
-- variant), the pairs become one set of series per (testbed, report.created), each in the
-- billing period containing that time, and _record_groups writes them. A variant_id that
-- is NULL, or names the benchmark's empty variant, is variant 0 in the sets.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
    v_group active_series._shape_group;
    v_shape_id bigint;
    v_series integer;
    v_organization_id bigint;
    v_project_id bigint;
    v_testbed_id bigint;
    v_created timestamptz;
    v_benchmark_id bigint;
    v_variant_id bigint;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its one set, looked up directly, in
        -- plain statements (a function in the join would be a table function: a tuplestore
        -- per call)
        SELECT
            p.organization_id, r.project_id, r.testbed_id, r.created, rb.benchmark_id,
            CASE
                WHEN rb.variant_id IS NULL THEN 0
                ELSE active_series._variant_key(rb.variant_id)
            END
        INTO v_organization_id, v_project_id, v_testbed_id, v_created, v_benchmark_id,
            v_variant_id
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE rb.id = p_report_benchmark_ids[1];
        IF NOT FOUND THEN
            RETURN;
        END IF;
        v_groups := ARRAY[
            row(
                v_organization_id, v_project_id, v_testbed_id,
                (active_series._period_for(v_organization_id, v_created)).period_start,
                v_created, v_created, ARRAY[v_benchmark_id], ARRAY[v_variant_id], p_measure_ids,
                NULL
            )::active_series._shape_group
        ];
    ELSE
        -- (each report_benchmark, then each report, looked up once; OFFSET 0 keeps each
        -- LATERAL subquery a per-row index lookup, whatever the statistics said when this plan
        -- was cached)
        v_groups := ARRAY(
            WITH rbs AS MATERIALIZED (
                SELECT
                    rb.id, rb.report_id, rb.benchmark_id,
                    -- (without a variant_id, as most reports send, no call)
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END AS variant_id
                FROM active_series.report_benchmark AS rb
                WHERE rb.id = ANY(p_report_benchmark_ids)
            ),
            -- each report's set, sorted (one sort on four keys; the series come distinct and
            -- in set order, and each set's arrays are aggregated in that order; an order lost
            -- would only store a set twice)
            sets AS MATERIALIZED (
                SELECT
                    s.report_id, array_agg(s.benchmark_id) AS benchmark_ids,
                    array_agg(s.variant_id) AS variant_ids, array_agg(s.measure_id) AS measure_ids
                FROM (
                    SELECT DISTINCT b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                    INNER JOIN rbs AS b ON b.id = x.id
                    ORDER BY b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                ) AS s
                GROUP BY s.report_id
            ),
            -- (each report looked up once; OFFSET 0 keeps the LATERAL subquery a per-row
            -- index lookup, whatever the statistics said when this plan was cached)
            reports AS MATERIALIZED (
                SELECT d.benchmark_ids, d.variant_ids, d.measure_ids, k.*
                FROM sets AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM reports AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            ),
            keyed AS MATERIALIZED (
                SELECT
                    s.*, t.period_start,
                    count(*) OVER (PARTITION BY s.testbed_id, s.created) AS reports
                FROM reports AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
            )
            -- a testbed's one report at a time: its set as it is
            SELECT row(
                k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                k.created, k.benchmark_ids, k.variant_ids, k.measure_ids, NULL
            )::active_series._shape_group
            FROM keyed AS k
            WHERE k.reports = 1
            UNION ALL
            -- several reports of one testbed in one transaction (one time): their sets merged
            SELECT row(
                m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created,
                m.created, array_agg(m.b), array_agg(m.v), array_agg(m.m), NULL
            )::active_series._shape_group
            FROM (
                SELECT DISTINCT
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
                FROM keyed AS k
                CROSS JOIN LATERAL unnest(k.benchmark_ids, k.variant_ids, k.measure_ids)
                    AS e (b, v, m)
                WHERE k.reports > 1
                ORDER BY
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
            ) AS m
            GROUP BY m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same set of series as before in the period,
    -- later than before: one HOT update of that set's row per testbed (_widen). Anything
    -- else (a set or a period new to the testbed, older activity) goes on below, which finds
    -- what these updates already did and leaves it.
    IF cardinality(v_groups) = 1 THEN
        -- (one testbed at one time, nearly every transaction: the same three steps written
        -- out, without the calls: _lock_testbeds, _find_shape and _widen for one group)
        v_group := v_groups[1];
        PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), hashint8(v_group.testbed_id));
        SELECT s.id, s.series INTO v_shape_id, v_series
        FROM active_series._shape AS s
        WHERE s.project_id = v_group.project_id
            AND s.digest = hash_array_extended(
                v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
            )
            AND s.benchmark_ids = v_group.benchmark_ids
            AND s.variant_ids = v_group.variant_ids
            AND s.measure_ids = v_group.measure_ids
        LIMIT 1;
        v_group.shape_id := v_shape_id;
        UPDATE active_series._shape_seen AS s
        SET first_seen = least(s.first_seen, v_group.first_seen),
            last_seen = greatest(s.last_seen, v_group.last_seen)
        WHERE s.testbed_id = v_group.testbed_id
            AND s.period_start = v_group.period_start
            AND s.shape_id = v_shape_id
            AND (v_group.first_seen < s.first_seen OR v_group.last_seen > s.last_seen);
        IF FOUND THEN
            RETURN;
        END IF;
        -- (the first report of the testbed in the period with a stored set, as below for
        -- several sets, written for one)
        IF v_shape_id IS NOT NULL AND NOT EXISTS (
            SELECT
            FROM active_series._testbed_period AS p
            WHERE p.testbed_id = v_group.testbed_id AND p.period_start = v_group.period_start
        ) THEN
            WITH sets AS (
                INSERT INTO active_series._testbed_period (
                    testbed_id, period_start, organization_id, project_id, shape_id
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_group.organization_id,
                    v_group.project_id, v_shape_id
                )
            ),
            seen AS (
                INSERT INTO active_series._shape_seen (
                    testbed_id, period_start, shape_id, first_seen, last_seen
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_shape_id, v_group.first_seen,
                    v_group.last_seen
                )
            )
            INSERT INTO active_series._period_usage AS u (
                organization_id, period_start, project_id, series_count
            )
            VALUES (v_group.organization_id, v_group.period_start, v_group.project_id, v_series)
            ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
            SET series_count = u.series_count + excluded.series_count;
            PERFORM active_series._changed(v_group.organization_id, v_group.period_start, 'ingest');
            RETURN;
        END IF;
        v_groups := ARRAY[v_group];
    ELSE
        PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
        v_groups := ARRAY(
            SELECT row(
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids,
                active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )::active_series._shape_group
            FROM unnest(v_groups) AS g
        );
        IF active_series._widen(v_groups) = cardinality(v_groups) THEN
            RETURN;
        END IF;
    END IF;

    -- The first report of a testbed in a period (a new testbed, or the first report after
    -- the period changed) of a set already stored: the set is the testbed's set for the
    -- period, so one statement writes what _record_groups would, in the same key order:
    -- the testbeds' sets for the period, their _shape_seen rows, the counts grown by the
    -- sets' sizes (_period_usage, key order); then the outbox. It holds when every group is
    -- of a stored set, no testbed has history in its period (under the history locks taken
    -- above: nothing else writes it meanwhile; so _widen did nothing) and no (testbed,
    -- period) has two groups. Else the general path.
    IF NOT EXISTS (
        SELECT
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
            OR (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
    )
    AND (
        SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(v_groups) AS g
    ) = cardinality(v_groups) THEN
        WITH g AS MATERIALIZED (
            SELECT
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.shape_id, s.series
            FROM unnest(v_groups) AS g
            CROSS JOIN LATERAL (
                SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
            ) AS s
        ),
        sets AS (
            INSERT INTO active_series._testbed_period (
                testbed_id, period_start, organization_id, project_id, shape_id
            )
            SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
            FROM g
            ORDER BY g.testbed_id, g.period_start
        ),
        seen AS (
            INSERT INTO active_series._shape_seen (
                testbed_id, period_start, shape_id, first_seen, last_seen
            )
            SELECT g.testbed_id, g.period_start, g.shape_id, g.first_seen, g.last_seen
            FROM g
            ORDER BY g.testbed_id, g.period_start, g.shape_id
        )
        INSERT INTO active_series._period_usage AS u (
            organization_id, period_start, project_id, series_count
        )
        SELECT g.organization_id, g.period_start, g.project_id, sum(g.series)
        FROM g
        GROUP BY g.organization_id, g.period_start, g.project_id
        ORDER BY g.organization_id, g.period_start, g.project_id
        ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
        SET series_count = u.series_count + excluded.series_count;
        PERFORM active_series._changed(c.organization_id, c.period_start, 'ingest')
        FROM (
            SELECT DISTINCT g.organization_id, g.period_start
            FROM unnest(v_groups) AS g
            ORDER BY g.organization_id, g.period_start
        ) AS c;
        RETURN;
    END IF;
    PERFORM active_series._record_groups(v_groups);
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';
-- ---------------------------------------------------------------- sql/functions/set_billing_period.sql
CREATE OR REPLACE FUNCTION active_series.set_billing_period(
    p_organization_id bigint,
    p_period_start timestamptz,
    p_period_end timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Makes [p_period_start, p_period_end) a billing period of the organization and the
-- anchor of the ones after it: they roll forward by the same interval (whole months when
-- the end is the start plus whole months in UTC, else the exact duration). Recorded
-- periods cut by either bound are split exactly; those inside are merged into it. Recorded
-- periods after the end are re-bucketed onto the new schedule the same way: each rolling
-- period [anchor + k * interval, anchor + (k + 1) * interval), k >= 1, that holds recorded
-- activity becomes one recorded period with exactly that history; the ones after the end
-- that hold none are dropped (derived again, on the schedule, when first used). The work
-- is one probe when nothing is recorded after the end, else one split and merge per
-- rolling period with activity (empty stretches are skipped, whatever the interval).
-- Locks: the organization's period lock, exclusively (waits for ingest in flight).
-- SECURITY DEFINER (EXECUTE: active_series_admin and active_series_worker only): the worker
-- follows the Stripe subscription's periods with it, and re-bucketing rewrites history,
-- counts and last_seen, which the worker must not be able to write directly.
DECLARE
    v_start_utc timestamp := p_period_start AT TIME ZONE 'UTC';
    v_end_utc timestamp := p_period_end AT TIME ZONE 'UTC';
    v_months integer;
    v_interval interval;
    v_at timestamptz;
    v_next timestamptz;
    v_first timestamptz;
    v_cell_start timestamptz;
    v_cell_end timestamptz;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_period_start IS NULL OR p_period_end IS NULL THEN
        RAISE EXCEPTION 'active_series: a billing period needs a start and an end'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT (isfinite(p_period_start) AND isfinite(p_period_end)) THEN
        RAISE EXCEPTION 'active_series: billing period bounds must be finite'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_period_end <= p_period_start THEN
        RAISE EXCEPTION 'active_series: billing period end % is not after its start %',
            p_period_end, p_period_start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the same range as report.created (every client can read the periods), and no longer
    -- than Stripe's longest billing interval: anything else is a typo
    IF p_period_start < '1900-01-01 00:00:00+00' OR p_period_end > '9000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'active_series: a billing period must lie between 1900-01-01 and '
            '9000-01-01 UTC (got % to %)', p_period_start, p_period_end
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_period_end > p_period_start + interval '3 years' THEN
        RAISE EXCEPTION 'active_series: a billing period must not be longer than 3 years '
            '(got % to %)', p_period_start, p_period_end
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    PERFORM pg_advisory_xact_lock(_lock_key('period'), hashint8(p_organization_id));

    v_months := ((extract(YEAR FROM v_end_utc) - extract(YEAR FROM v_start_utc)) * 12
        + extract(MONTH FROM v_end_utc) - extract(MONTH FROM v_start_utc))::integer;
    IF v_months >= 1 AND v_start_utc + make_interval(months => v_months) = v_end_utc THEN
        v_interval := make_interval(months => v_months);
    ELSE
        v_interval := make_interval(secs => extract(EPOCH FROM p_period_end - p_period_start));
    END IF;

    PERFORM active_series._split_period(p_organization_id, p_period_start);
    PERFORM active_series._split_period(p_organization_id, p_period_end);
    PERFORM active_series._merge_periods(p_organization_id, p_period_start, p_period_end);

    -- the recorded periods after the end, onto the rolling schedule; no recorded period
    -- crosses v_at at the top of the loop (split there before)
    v_at := p_period_end;
    LOOP
        -- the first recorded period from v_at on that holds activity, and its first activity
        SELECT t.period_start INTO v_next
        FROM active_series._testbed_period AS t
        WHERE t.organization_id = p_organization_id AND t.period_start >= v_at
        ORDER BY t.period_start
        LIMIT 1;
        IF v_next IS NULL THEN
            -- nothing recorded from v_at on holds activity
            DELETE FROM active_series._period AS p
            WHERE p.organization_id = p_organization_id AND p.period_start >= v_at;
            EXIT;
        END IF;
        SELECT min(s.first_seen) INTO v_first
        FROM active_series._testbed_period AS t
        INNER JOIN active_series._shape_seen AS s
            ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
        WHERE t.organization_id = p_organization_id AND t.period_start = v_next;
        v_first := greatest(coalesce(v_first, v_next), v_next);

        -- the rolling period containing v_first (k >= 1: v_first >= the end)
        SELECT r.period_start, r.period_end INTO v_cell_start, v_cell_end
        FROM active_series._rolling_period(p_period_start, v_interval, v_first) AS r;

        PERFORM active_series._split_period(p_organization_id, v_cell_start);
        PERFORM active_series._split_period(p_organization_id, v_cell_end);
        -- what lies before the cell holds no activity (v_first is the first from v_at on)
        DELETE FROM active_series._period AS p
        WHERE p.organization_id = p_organization_id
            AND p.period_start >= v_at
            AND p.period_start < v_cell_start;
        PERFORM active_series._merge_periods(p_organization_id, v_cell_start, v_cell_end);
        v_at := v_cell_end;
    END LOOP;

    INSERT INTO active_series.billing_account AS b (
        organization_id, period_anchor, period_interval
    )
    VALUES (p_organization_id, p_period_start, v_interval)
    ON CONFLICT (organization_id) DO UPDATE
    SET period_anchor = excluded.period_anchor,
        period_interval = excluded.period_interval,
        updated_at = now();
    PERFORM active_series._changed(p_organization_id, p_period_start, 'billing_period');
END;
$$;
COMMENT ON FUNCTION active_series.set_billing_period(bigint, timestamptz, timestamptz) IS
'Set an organization''s billing period [start, end); later periods roll forward by the same interval. History is re-bucketed exactly.';
-- ---------------------------------------------------------------- sql/functions/backfill.sql
CREATE OR REPLACE PROCEDURE active_series.backfill(p_batch_size integer DEFAULT 500)
LANGUAGE plpgsql
AS $$
-- (Re)builds series_last_seen, period history and counts from the metrics already in
-- the database, p_batch_size reports at a time (after a ramp of 1, 2, 4, ... reports),
-- committing after each batch so that ingest is never blocked for long; progress is
-- reported as NOTICEs. Additive and
-- idempotent: activity already recorded (also of deleted reports) is kept, and a second
-- run writes nothing. Runs the same code as the ingest trigger (_record_activity).
-- Call it outside a transaction block: CALL active_series.backfill();
-- Locks: a session advisory lock so that only one backfill runs at a time.
-- (A procedure that commits cannot carry SET search_path; every name is qualified.)
DECLARE
    v_lo bigint;
    v_max bigint;
    v_done bigint := 0;
    v_total bigint;
    v_rb bigint [];
    v_measures bigint [];
    v_org bigint;
    v_period timestamptz;
    v_batches bigint := 0;
    v_size bigint;
BEGIN
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'active_series: backfill batch size must be a positive number of reports'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_catalog.pg_try_advisory_lock(active_series._lock_key('backfill'), 0) THEN
        RAISE EXCEPTION 'active_series: another backfill is running'
            USING ERRCODE = 'lock_not_available';
    END IF;
    SELECT pg_catalog.min(r.id), pg_catalog.max(r.id), pg_catalog.count(*)
    INTO v_lo, v_max, v_total
    FROM active_series.report AS r;
    WHILE v_lo <= v_max LOOP
        -- Statements are planned once and cached; planned against empty cache tables
        -- (after an ANALYZE of them, e.g. a database-wide one) they scan whole tables, and
        -- one batch of many new series would grow those tables under the scans: quadratic.
        -- Batches of 1, 2, 4, ... reports, each followed by ANALYZE (which also replans),
        -- bound that growth until the statistics describe tables of real size.
        v_size := LEAST(p_batch_size::bigint, 1::bigint << LEAST(v_batches, 62)::integer);
        SELECT pg_catalog.array_agg(m.report_benchmark_id), pg_catalog.array_agg(m.measure_id)
        INTO v_rb, v_measures
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.metric AS m ON m.report_benchmark_id = rb.id
        WHERE rb.report_id >= v_lo AND rb.report_id < v_lo + v_size;
        IF v_rb IS NOT NULL THEN
            PERFORM active_series._record_activity(v_rb, v_measures);
        END IF;
        SELECT v_done + pg_catalog.count(*) INTO v_done
        FROM active_series.report AS r
        WHERE r.id >= v_lo AND r.id < v_lo + v_size;
        v_lo := v_lo + v_size;
        v_batches := v_batches + 1;
        COMMIT;
        -- the history grows fastest at the start: fresh statistics (which also replan the
        -- cached statements) after each batch of the ramp, then after batches 16, 32, 64, ...
        IF v_size < p_batch_size OR v_batches & (v_batches - 1) = 0 THEN
            ANALYZE active_series._shape, active_series._shape_seen,
            active_series._testbed_period, active_series._period_usage, active_series._period;
            COMMIT;
        END IF;
        RAISE NOTICE 'active_series backfill: % of % reports', v_done, v_total;
    END LOOP;
    -- counts follow the history rows (repairs a drifted count)
    FOR v_org, v_period IN
        SELECT DISTINCT d.organization_id, d.period_start FROM active_series._count_drift AS d
    LOOP
        PERFORM active_series._recount_period(v_org, v_period);
    END LOOP;
    COMMIT;
    PERFORM pg_catalog.pg_advisory_unlock(active_series._lock_key('backfill'), 0);
    RAISE NOTICE 'active_series backfill: done, % reports', v_done;
END;
$$;
COMMENT ON PROCEDURE active_series.backfill (integer) IS
'Rebuild last_seen, period history and counts from existing metrics, in committed batches of reports (CALL it outside a transaction). Idempotent, additive, reports progress as NOTICEs.';
REVOKE EXECUTE ON FUNCTION active_series._lock_key(text)
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series._lock_key(text)
TO active_series_admin;

-- sql/functions/count_active.sql, sql/functions/period_series.sql: the reads size each
-- testbed's series from the sizes of its sets where they are known, and cut the distinct
-- sets of the other testbeds into parts instead of unfolding them per testbed;
-- period_series looks up the empty variant once per series of the distinct sets.
CREATE OR REPLACE FUNCTION active_series.count_active(
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
-- period, so only the history of periods from the one containing p_from on is read (an
-- index range scan on (organization_id, period_start) of _testbed_period). Series belong to
-- one testbed, and those of a testbed seen since p_to are a subset of those seen since
-- p_from: the count is, per testbed, |seen since p_from| - |seen since p_to|. The series seen
-- since a bound are the union of the sets of the _shape_seen rows whose last_seen is at or
-- after it; within one period its size is known without unfolding a set when those rows are
-- none, hold the period's whole set (_testbed_period.shape_id), are all of the period's rows,
-- or are rows of a period whose sets are disjoint (their sizes add up to the whole set's): the
-- sum of their sizes. For the testbeds where neither holds (rows of several periods, or
-- overlapping sets cut by a bound), the distinct sets they reported since p_from are cut
-- into parts (the series held by exactly the same of those sets, each set unfolded once
-- however many testbeds share it): a testbed has seen a part since p_from when it reported
-- one of the part's sets since then, last at the latest such report. Takes no locks.
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
        WITH seen AS MATERIALIZED (
            -- the testbeds' rows in the periods from v_lower on, with the sizes of their sets
            SELECT
                t.testbed_id, t.period_start, t.shape_id AS period_shape_id,
                u.series AS period_series, s.shape_id, s.last_seen, h.series
            FROM active_series._testbed_period AS t
            INNER JOIN active_series.project AS p ON p.id = t.project_id
            INNER JOIN active_series._shape AS u ON u.id = t.shape_id
            INNER JOIN active_series._shape_seen AS s
                ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
            INNER JOIN active_series._shape AS h ON h.id = s.shape_id
            WHERE t.organization_id = p_organization_id
                AND t.period_start >= coalesce(v_lower, '-infinity')
                AND p.deleted_at IS NULL
                AND (p_visibility IS NULL OR p.visibility = p_visibility)
        ),
        periods AS (
            SELECT
                g.testbed_id, g.rows_from > 0 AS active,
                -- the number of series seen since each bound (NULL: not known without
                -- unfolding the sets)
                CASE
                    WHEN g.rows_from = 0 THEN 0
                    WHEN g.whole_from OR g.rows_from = g.all_rows THEN g.period_series
                    WHEN g.sizes = g.period_series THEN g.sizes_from
                END AS since_from,
                CASE
                    WHEN g.rows_to = 0 THEN 0
                    WHEN g.whole_to OR g.rows_to = g.all_rows THEN g.period_series
                    WHEN g.sizes = g.period_series THEN g.sizes_to
                END AS since_to
            FROM (
                SELECT
                    x.testbed_id, min(x.period_series) AS period_series,
                    count(*) AS all_rows, sum(x.series) AS sizes,
                    count(*) FILTER (WHERE x.last_seen >= p_from) AS rows_from,
                    count(*) FILTER (WHERE x.last_seen >= p_to) AS rows_to,
                    coalesce(sum(x.series) FILTER (WHERE x.last_seen >= p_from), 0)
                        AS sizes_from,
                    coalesce(sum(x.series) FILTER (WHERE x.last_seen >= p_to), 0) AS sizes_to,
                    coalesce(bool_or(x.shape_id = x.period_shape_id AND x.last_seen >= p_from),
                        FALSE) AS whole_from,
                    coalesce(bool_or(x.shape_id = x.period_shape_id AND x.last_seen >= p_to),
                        FALSE) AS whole_to
                FROM seen AS x
                GROUP BY x.testbed_id, x.period_start
            ) AS g
        ),
        testbeds AS MATERIALIZED (
            SELECT
                q.testbed_id,
                count(*) FILTER (WHERE q.active) <= 1
                AND bool_and(q.since_from IS NOT NULL AND q.since_to IS NOT NULL) AS known,
                sum(q.since_from - q.since_to) AS active_series
            FROM periods AS q
            GROUP BY q.testbed_id
        ),
        -- the other testbeds' sets seen since p_from (a set in several periods: its latest row)
        slow AS MATERIALIZED (
            SELECT x.testbed_id, x.shape_id, max(x.last_seen) AS last_seen
            FROM testbeds AS b
            INNER JOIN seen AS x ON x.testbed_id = b.testbed_id
            WHERE NOT b.known AND x.last_seen >= p_from
            GROUP BY x.testbed_id, x.shape_id
        ),
        -- their distinct sets cut into parts: the series held by exactly the same sets
        -- (unfolded once per set, however many testbeds report it)
        parts AS MATERIALIZED (
            SELECT row_number() OVER () AS part, m.shape_ids, count(*) AS series
            FROM (
                -- (the sets in scan order, unsorted: a part listed in two orders is two parts,
                -- with the same result)
                SELECT array_agg(e.shape_id) AS shape_ids
                FROM (
                    SELECT
                        h.id AS shape_id, unnest(h.benchmark_ids) AS benchmark_id,
                        unnest(h.variant_ids) AS variant_id, unnest(h.measure_ids) AS measure_id
                    FROM active_series._shape AS h
                    WHERE h.id IN (SELECT z.shape_id FROM slow AS z)
                ) AS e
                GROUP BY e.benchmark_id, e.variant_id, e.measure_id
            ) AS m
            GROUP BY m.shape_ids
        )
        SELECT
            coalesce((SELECT sum(b.active_series) FROM testbeds AS b WHERE b.known), 0)
            -- a part's series are seen since p_from on a testbed with one of the part's
            -- sets seen since p_from, last at the latest of those
            + coalesce((
                SELECT sum(y.series)
                FROM (
                    SELECT min(a.series) AS series, max(z.last_seen) AS last_seen
                    FROM parts AS a
                    CROSS JOIN LATERAL unnest(a.shape_ids) AS k (shape_id)
                    INNER JOIN slow AS z ON z.shape_id = k.shape_id
                    GROUP BY z.testbed_id, a.part
                ) AS y
                WHERE y.last_seen < p_to
            ), 0)
    );
END;
$$;
COMMENT ON FUNCTION active_series.count_active(bigint, timestamptz, timestamptz, text) IS
'Number of series of an organization whose last_seen is in [p_from, p_to); p_visibility ''public''/''private'' or NULL for all; soft-deleted projects excluded.';

CREATE OR REPLACE FUNCTION active_series.period_series(
    p_organization_id bigint,
    p_period_start timestamptz DEFAULT NULL
)
RETURNS TABLE (
    project_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    variant_id bigint,
    measure_id bigint,
    first_seen timestamptz,
    last_seen timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The series a period's bill is made of, with their first and last activity in the
-- period (NULL period: the current one); soft-deleted projects excluded; in no particular
-- order. Takes no locks. A testbed whose sets in the period are disjoint (their sizes add up
-- to the size of its whole set, _testbed_period.shape_id: a single set, or reports of
-- separate parts) has each series in one _shape_seen row, whose first_seen and last_seen are
-- the series': its sets are unfolded as they are. The distinct sets of the testbeds with
-- overlapping sets are cut into parts (the series held by exactly the same of those sets),
-- each set unfolded once however many testbeds share it: a testbed has the parts of its
-- sets, first and last seen at the earliest and latest of its rows of the part's sets. The
-- empty variant's id, for variant 0, is looked up once per distinct series of the sets, not
-- per row.
-- SECURITY DEFINER: the read API of active_series_reader, which may not read the history
-- tables themselves; it returns the series of the organization named only.
DECLARE
    v_start timestamptz := p_period_start;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF v_start IS NULL THEN
        SELECT a.period_start INTO v_start
        FROM active_series._period_at(p_organization_id, now()) AS a;
    END IF;
    RETURN QUERY
    WITH seen AS MATERIALIZED (
        SELECT
            t.project_id, t.testbed_id, s.shape_id, s.first_seen, s.last_seen,
            sum(h.series) OVER (PARTITION BY t.testbed_id) = u.series AS disjoint
        FROM active_series._testbed_period AS t
        INNER JOIN active_series.project AS p ON p.id = t.project_id
        INNER JOIN active_series._shape AS u ON u.id = t.shape_id
        INNER JOIN active_series._shape_seen AS s
            ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
        INNER JOIN active_series._shape AS h ON h.id = s.shape_id
        WHERE t.organization_id = p_organization_id
            AND t.period_start = v_start
            AND p.deleted_at IS NULL
    ),
    -- each disjoint set with its variants as returned (variant 0: the benchmark's empty
    -- variant, if any)
    shapes AS MATERIALIZED (
        SELECT
            e.shape_id, array_agg(e.benchmark_id) AS benchmark_ids,
            array_agg(coalesce(v.id, nullif(e.variant_id, 0))) AS variant_ids,
            array_agg(e.measure_id) AS measure_ids
        FROM (
            SELECT
                h.id AS shape_id, unnest(h.benchmark_ids) AS benchmark_id,
                unnest(h.variant_ids) AS variant_id, unnest(h.measure_ids) AS measure_id
            FROM active_series._shape AS h
            WHERE h.id IN (SELECT w.shape_id FROM seen AS w WHERE w.disjoint)
        ) AS e
        LEFT JOIN active_series.variant AS v
            ON e.variant_id = 0 AND v.benchmark_id = e.benchmark_id AND v.parameters = '{}'::jsonb
        GROUP BY e.shape_id
    ),
    -- the distinct sets of the overlapping testbeds cut into parts: the series held by
    -- exactly the same of those sets (each set unfolded once, however many testbeds share it)
    parts AS MATERIALIZED (
        SELECT
            row_number() OVER () AS part, m.shape_ids,
            array_agg(m.benchmark_id) AS benchmark_ids,
            array_agg(coalesce(v.id, nullif(m.variant_id, 0))) AS variant_ids,
            array_agg(m.measure_id) AS measure_ids
        FROM (
            SELECT
                e.benchmark_id, e.variant_id, e.measure_id,
                -- (the sets in scan order, unsorted: a part listed in two orders is two parts,
                -- with the same result)
                array_agg(e.shape_id) AS shape_ids
            FROM (
                SELECT
                    h.id AS shape_id, unnest(h.benchmark_ids) AS benchmark_id,
                    unnest(h.variant_ids) AS variant_id, unnest(h.measure_ids) AS measure_id
                FROM active_series._shape AS h
                WHERE h.id IN (SELECT w.shape_id FROM seen AS w WHERE NOT w.disjoint)
            ) AS e
            GROUP BY e.benchmark_id, e.variant_id, e.measure_id
        ) AS m
        LEFT JOIN active_series.variant AS v
            ON m.variant_id = 0 AND v.benchmark_id = m.benchmark_id AND v.parameters = '{}'::jsonb
        GROUP BY m.shape_ids
    )
    -- (the arrays unfolded side by side in the select list: one pass, no tuplestore per row)
    SELECT
        w.project_id, w.testbed_id, unnest(h.benchmark_ids), unnest(h.variant_ids),
        unnest(h.measure_ids), w.first_seen, w.last_seen
    FROM seen AS w
    INNER JOIN shapes AS h ON h.shape_id = w.shape_id
    WHERE w.disjoint
    UNION ALL
    -- the overlapping testbeds: a part's series are in a testbed's rows whose set is one of
    -- the part's sets, first and last seen at the earliest and latest of them
    SELECT
        g.project_id, g.testbed_id, unnest(a.benchmark_ids), unnest(a.variant_ids),
        unnest(a.measure_ids), g.first_seen, g.last_seen
    FROM (
        SELECT
            w.project_id, w.testbed_id, a.part, min(w.first_seen) AS first_seen,
            max(w.last_seen) AS last_seen
        FROM parts AS a
        CROSS JOIN LATERAL unnest(a.shape_ids) AS k (shape_id)
        INNER JOIN seen AS w ON w.shape_id = k.shape_id
        WHERE NOT w.disjoint
        GROUP BY w.project_id, w.testbed_id, a.part
    ) AS g
    INNER JOIN parts AS a ON a.part = g.part;
END;
$$;
COMMENT ON FUNCTION active_series.period_series(bigint, timestamptz) IS
'The series (testbed, benchmark, variant, measure) counted in a billing period (NULL: current) with their first and last activity in it: what the bill is made of.';

-- sql/functions/period_series.sql: period_series becomes a plain SQL function the planner
-- inlines into the caller's query (its rows stream out instead of being stored first); it
-- runs with its caller's rights and reads the history through the _read_* views. Re-created
-- (a plpgsql function cannot be replaced by a SQL one in place), re-granted as
-- sql/grants.sql grants it.
DROP FUNCTION active_series.period_series(bigint, timestamptz);
-- The history period_series reads, as views: period_series is a plain SQL function that
-- the planner inlines into the caller's query (a set-returning function that is not
-- inlined stores every row it returns before the caller sees the first), so it runs with
-- its caller's rights; a view reads its table with its owner's. Granted to the roles that
-- may call period_series (sql/grants.sql; docs/roles.md says what that lets them see).
CREATE VIEW active_series._read_testbed_period AS
SELECT
    t.organization_id,
    t.period_start,
    t.project_id,
    t.testbed_id,
    t.shape_id
FROM active_series._testbed_period AS t;
COMMENT ON VIEW active_series._read_testbed_period IS
'Internal: _testbed_period as period_series reads it (with its owner''s rights).';

CREATE VIEW active_series._read_shape_seen AS
SELECT
    s.testbed_id,
    s.period_start,
    s.shape_id,
    s.first_seen,
    s.last_seen
FROM active_series._shape_seen AS s;
COMMENT ON VIEW active_series._read_shape_seen IS
'Internal: _shape_seen as period_series reads it (with its owner''s rights).';

CREATE VIEW active_series._read_shape AS
SELECT
    h.id,
    h.series,
    h.benchmark_ids,
    h.variant_ids,
    h.measure_ids
FROM active_series._shape AS h;
COMMENT ON VIEW active_series._read_shape IS
'Internal: _shape as period_series reads it (with its owner''s rights).';

CREATE FUNCTION active_series.period_series(
    p_organization_id bigint,
    p_period_start timestamptz DEFAULT NULL
)
RETURNS TABLE (
    project_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    variant_id bigint,
    measure_id bigint,
    first_seen timestamptz,
    last_seen timestamptz
)
LANGUAGE sql
STABLE
AS $$
-- The series a period's bill is made of, with their first and last activity in the
-- period (NULL period: the current one); soft-deleted projects excluded; in no particular
-- order. Takes no locks. A testbed whose sets in the period are disjoint (their sizes add up
-- to the size of its whole set, _testbed_period.shape_id: a single set, or reports of
-- separate parts) has each series in one _shape_seen row, whose first_seen and last_seen are
-- the series': its sets are unfolded as they are. The distinct sets of the testbeds with
-- overlapping sets are cut into parts (the series held by exactly the same of those sets),
-- each set unfolded once however many testbeds share it: a testbed has the parts of its
-- sets, first and last seen at the earliest and latest of its rows of the part's sets. The
-- empty variant's id, for variant 0, is looked up once per distinct series of the sets, not
-- per row.
-- Plain SQL, no SET clause, not SECURITY DEFINER: the planner inlines it into the caller's
-- query, so the rows stream out instead of being stored first. It runs with the caller's
-- rights and search_path: it reads the history through the _read_* views (their owner's
-- rights), and names every function, operator and type by its schema. current_period
-- (SECURITY DEFINER, the reader may call it) raises for a NULL or unknown organization, in
-- a one-time filter that runs before any row; with no period given it names the current
-- one.
WITH seen AS MATERIALIZED (
    SELECT
        t.project_id, t.testbed_id, s.shape_id, s.first_seen, s.last_seen,
        pg_catalog.sum(h.series) OVER (PARTITION BY t.testbed_id)
        OPERATOR(pg_catalog.=) u.series AS disjoint
    FROM active_series._read_testbed_period AS t
    INNER JOIN active_series.project AS p ON p.id OPERATOR(pg_catalog.=) t.project_id
    INNER JOIN active_series._read_shape AS u ON u.id OPERATOR(pg_catalog.=) t.shape_id
    INNER JOIN active_series._read_shape_seen AS s
        ON
            s.testbed_id OPERATOR(pg_catalog.=) t.testbed_id
            AND s.period_start OPERATOR(pg_catalog.=) t.period_start
    INNER JOIN active_series._read_shape AS h ON h.id OPERATOR(pg_catalog.=) s.shape_id
    WHERE
        t.organization_id OPERATOR(pg_catalog.=) p_organization_id
        AND t.period_start OPERATOR(pg_catalog.=) coalesce(
            p_period_start,
            (SELECT c.period_start FROM active_series.current_period(p_organization_id) AS c)
        )
        AND p.deleted_at IS NULL
),
-- each disjoint set with its variants as returned (variant 0: the benchmark's empty
-- variant, if any)
shapes AS MATERIALIZED (
    SELECT
        e.shape_id, pg_catalog.array_agg(e.benchmark_id) AS benchmark_ids,
        pg_catalog.array_agg(
            CASE WHEN e.variant_id OPERATOR(pg_catalog.=) 0 THEN v.id ELSE e.variant_id END
        ) AS variant_ids,
        pg_catalog.array_agg(e.measure_id) AS measure_ids
    FROM (
        SELECT
            h.id AS shape_id, pg_catalog.unnest(h.benchmark_ids) AS benchmark_id,
            pg_catalog.unnest(h.variant_ids) AS variant_id,
            pg_catalog.unnest(h.measure_ids) AS measure_id
        FROM active_series._read_shape AS h
        WHERE h.id OPERATOR(pg_catalog.=) ANY (SELECT w.shape_id FROM seen AS w WHERE w.disjoint)
    ) AS e
    LEFT JOIN active_series.variant AS v
        ON
            e.variant_id OPERATOR(pg_catalog.=) 0
            AND v.benchmark_id OPERATOR(pg_catalog.=) e.benchmark_id
            AND v.parameters OPERATOR(pg_catalog.=) '{}'::pg_catalog.jsonb
    GROUP BY e.shape_id
),
-- the distinct sets of the overlapping testbeds cut into parts: the series held by
-- exactly the same of those sets (each set unfolded once, however many testbeds share it)
parts AS MATERIALIZED (
    SELECT
        pg_catalog.row_number() OVER () AS part, m.shape_ids,
        pg_catalog.array_agg(m.benchmark_id) AS benchmark_ids,
        pg_catalog.array_agg(
            CASE WHEN m.variant_id OPERATOR(pg_catalog.=) 0 THEN v.id ELSE m.variant_id END
        ) AS variant_ids,
        pg_catalog.array_agg(m.measure_id) AS measure_ids
    FROM (
        SELECT
            e.benchmark_id, e.variant_id, e.measure_id,
            -- (the sets in scan order, unsorted: a part listed in two orders is two parts,
            -- with the same result)
            pg_catalog.array_agg(e.shape_id) AS shape_ids
        FROM (
            SELECT
                h.id AS shape_id, pg_catalog.unnest(h.benchmark_ids) AS benchmark_id,
                pg_catalog.unnest(h.variant_ids) AS variant_id,
                pg_catalog.unnest(h.measure_ids) AS measure_id
            FROM active_series._read_shape AS h
            WHERE
                h.id OPERATOR(pg_catalog.=) ANY (
                    SELECT w.shape_id FROM seen AS w WHERE NOT w.disjoint
                )
        ) AS e
        GROUP BY e.benchmark_id, e.variant_id, e.measure_id
    ) AS m
    LEFT JOIN active_series.variant AS v
        ON
            m.variant_id OPERATOR(pg_catalog.=) 0
            AND v.benchmark_id OPERATOR(pg_catalog.=) m.benchmark_id
            AND v.parameters OPERATOR(pg_catalog.=) '{}'::pg_catalog.jsonb
    GROUP BY m.shape_ids
)
-- (the arrays unfolded side by side in the select list: one pass, no tuplestore per row)
SELECT
    w.project_id, w.testbed_id, pg_catalog.unnest(h.benchmark_ids),
    pg_catalog.unnest(h.variant_ids), pg_catalog.unnest(h.measure_ids), w.first_seen,
    w.last_seen
FROM seen AS w
INNER JOIN shapes AS h ON h.shape_id OPERATOR(pg_catalog.=) w.shape_id
-- (the EXISTS has no variable: a one-time filter, evaluated before the first row is read; it
-- raises for a NULL or unknown organization, even where seen is known to be empty)
WHERE w.disjoint AND EXISTS (SELECT FROM active_series.current_period(p_organization_id))
UNION ALL
-- the overlapping testbeds: a part's series are in a testbed's rows whose set is one of
-- the part's sets, first and last seen at the earliest and latest of them
SELECT
    g.project_id, g.testbed_id, pg_catalog.unnest(a.benchmark_ids),
    pg_catalog.unnest(a.variant_ids), pg_catalog.unnest(a.measure_ids), g.first_seen,
    g.last_seen
FROM (
    SELECT
        w.project_id, w.testbed_id, a.part, pg_catalog.min(w.first_seen) AS first_seen,
        pg_catalog.max(w.last_seen) AS last_seen
    FROM parts AS a
    CROSS JOIN LATERAL pg_catalog.unnest(a.shape_ids) AS k (shape_id)
    INNER JOIN seen AS w ON w.shape_id OPERATOR(pg_catalog.=) k.shape_id
    WHERE NOT w.disjoint
    GROUP BY w.project_id, w.testbed_id, a.part
) AS g
INNER JOIN parts AS a ON a.part OPERATOR(pg_catalog.=) g.part
WHERE EXISTS (SELECT FROM active_series.current_period(p_organization_id));
$$;
COMMENT ON FUNCTION active_series.period_series(bigint, timestamptz) IS
'The series (testbed, benchmark, variant, measure) counted in a billing period (NULL: current) with their first and last activity in it: what the bill is made of.';
REVOKE EXECUTE ON FUNCTION active_series.period_series(bigint, timestamptz)
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series.period_series(bigint, timestamptz)
TO active_series_worker;
GRANT EXECUTE ON FUNCTION active_series.period_series(bigint, timestamptz)
TO active_series_admin;
GRANT EXECUTE ON FUNCTION active_series.period_series(bigint, timestamptz)
TO active_series_reader;
GRANT SELECT ON
active_series._read_testbed_period,
active_series._read_shape_seen,
active_series._read_shape
TO active_series_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON
active_series._read_testbed_period,
active_series._read_shape_seen,
active_series._read_shape
TO active_series_admin;
GRANT SELECT ON
active_series._read_testbed_period,
active_series._read_shape_seen,
active_series._read_shape
TO active_series_reader;
-- sql/functions/tenant.sql: tenant_period_series reads the organization before the query
-- that inlines period_series
CREATE OR REPLACE FUNCTION active_series.tenant_period_series(
    p_period_start timestamptz DEFAULT NULL
)
RETURNS TABLE (
    project_id bigint,
    testbed_id bigint,
    benchmark_id bigint,
    variant_id bigint,
    measure_id bigint,
    first_seen timestamptz,
    last_seen timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- period_series of the connection's organization.
-- SECURITY DEFINER: the read API of active_series_tenant, which may not call
-- period_series (any organization); it answers for the connection's organization only.
-- (The organization is read first: period_series is inlined into this query, and the
-- planner may evaluate a stable argument while it plans.)
DECLARE
    v_org bigint := active_series._tenant_organization();
BEGIN
    RETURN QUERY
    SELECT * FROM active_series.period_series(v_org, p_period_start);
END;
$$;
COMMENT ON FUNCTION active_series.tenant_period_series(timestamptz) IS
'Tenant: period_series of the connection''s organization (active_series.organization_id).';

-- the report_benchmark project check: a SQL function the planner inlines into its trigger's
-- query, each row's report and benchmark looked up by key
CREATE OR REPLACE FUNCTION active_series._benchmark_elsewhere(
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
-- ... and its trigger function, made by attach, plans it on index paths (as the recorder)
CREATE OR REPLACE FUNCTION active_series._attach_install(p_att jsonb)
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
DO $$
BEGIN
    IF pg_catalog.to_regprocedure('active_series._attached_report_benchmark_inserted()') IS NOT NULL
    THEN
        ALTER FUNCTION active_series._attached_report_benchmark_inserted() SET enable_seqscan = off;
        ALTER FUNCTION active_series._attached_report_benchmark_inserted()
        SET enable_bitmapscan = off;
    END IF;
END;
$$;

-- one metric's period probed inline (the call only to record a new period); the common
-- one-testbed case widens its row in one statement with the shape lookup
CREATE OR REPLACE FUNCTION active_series._record_activity(
    p_report_benchmark_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Records metrics, given as (report_benchmark, measure) pairs (the ingest trigger passes a
-- whole transaction's at commit, backfill a batch of reports'), in the history and the
-- per-period counts: each report_benchmark is looked up once (its report, project and
-- variant), the pairs become one set of series per (testbed, report.created), each in the
-- billing period containing that time, and _record_groups writes them. A variant_id that
-- is NULL, or names the benchmark's empty variant, is variant 0 in the sets.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
    v_group active_series._shape_group;
    v_shape_id bigint;
    v_series integer;
    v_organization_id bigint;
    v_project_id bigint;
    v_testbed_id bigint;
    v_created timestamptz;
    v_benchmark_id bigint;
    v_variant_id bigint;
    v_period_start timestamptz;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its one set, looked up directly, in
        -- plain statements (a function in the join would be a table function: a tuplestore
        -- per call)
        SELECT
            p.organization_id, r.project_id, r.testbed_id, r.created, rb.benchmark_id,
            CASE
                WHEN rb.variant_id IS NULL THEN 0
                ELSE active_series._variant_key(rb.variant_id)
            END
        INTO v_organization_id, v_project_id, v_testbed_id, v_created, v_benchmark_id,
            v_variant_id
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE rb.id = p_report_benchmark_ids[1];
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- its period: _period_for's probe of the recorded one written out (under the
        -- organization's period lock, as there), the call only to record a new one
        PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(v_organization_id));
        SELECT l.period_start INTO v_period_start
        FROM (
            SELECT p.period_start, p.period_end
            FROM active_series._period AS p
            WHERE p.organization_id = v_organization_id AND p.period_start <= v_created
            ORDER BY p.period_start DESC
            LIMIT 1
        ) AS l
        WHERE l.period_end > v_created;
        IF v_period_start IS NULL THEN
            v_period_start := (active_series._period_for(v_organization_id, v_created)).period_start;
        END IF;
        v_groups := ARRAY[
            row(
                v_organization_id, v_project_id, v_testbed_id, v_period_start,
                v_created, v_created, ARRAY[v_benchmark_id], ARRAY[v_variant_id], p_measure_ids,
                NULL
            )::active_series._shape_group
        ];
    ELSE
        -- (each report_benchmark, then each report, looked up once; OFFSET 0 keeps each
        -- LATERAL subquery a per-row index lookup, whatever the statistics said when this plan
        -- was cached)
        v_groups := ARRAY(
            WITH rbs AS MATERIALIZED (
                SELECT
                    rb.id, rb.report_id, rb.benchmark_id,
                    -- (without a variant_id, as most reports send, no call)
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END AS variant_id
                FROM active_series.report_benchmark AS rb
                WHERE rb.id = ANY(p_report_benchmark_ids)
            ),
            -- each report's set, sorted (one sort on four keys; the series come distinct and
            -- in set order, and each set's arrays are aggregated in that order; an order lost
            -- would only store a set twice)
            sets AS MATERIALIZED (
                SELECT
                    s.report_id, array_agg(s.benchmark_id) AS benchmark_ids,
                    array_agg(s.variant_id) AS variant_ids, array_agg(s.measure_id) AS measure_ids
                FROM (
                    SELECT DISTINCT b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                    INNER JOIN rbs AS b ON b.id = x.id
                    ORDER BY b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                ) AS s
                GROUP BY s.report_id
            ),
            -- (each report looked up once; OFFSET 0 keeps the LATERAL subquery a per-row
            -- index lookup, whatever the statistics said when this plan was cached)
            reports AS MATERIALIZED (
                SELECT d.benchmark_ids, d.variant_ids, d.measure_ids, k.*
                FROM sets AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM reports AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            ),
            keyed AS MATERIALIZED (
                SELECT
                    s.*, t.period_start,
                    count(*) OVER (PARTITION BY s.testbed_id, s.created) AS reports
                FROM reports AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
            )
            -- a testbed's one report at a time: its set as it is
            SELECT row(
                k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                k.created, k.benchmark_ids, k.variant_ids, k.measure_ids, NULL
            )::active_series._shape_group
            FROM keyed AS k
            WHERE k.reports = 1
            UNION ALL
            -- several reports of one testbed in one transaction (one time): their sets merged
            SELECT row(
                m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created,
                m.created, array_agg(m.b), array_agg(m.v), array_agg(m.m), NULL
            )::active_series._shape_group
            FROM (
                SELECT DISTINCT
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
                FROM keyed AS k
                CROSS JOIN LATERAL unnest(k.benchmark_ids, k.variant_ids, k.measure_ids)
                    AS e (b, v, m)
                WHERE k.reports > 1
                ORDER BY
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
            ) AS m
            GROUP BY m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same set of series as before in the period,
    -- later than before: one HOT update of that set's row per testbed (_widen). Anything
    -- else (a set or a period new to the testbed, older activity) goes on below, which finds
    -- what these updates already did and leaves it.
    IF cardinality(v_groups) = 1 THEN
        -- (one testbed at one time, nearly every transaction: the same steps written
        -- out, without the calls: _lock_testbeds, then _widen of the row of the stored
        -- shape (_find_shape) in one statement; the shape looked up alone only when that
        -- updated nothing)
        v_group := v_groups[1];
        PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), hashint8(v_group.testbed_id));
        UPDATE active_series._shape_seen AS s
        SET first_seen = least(s.first_seen, v_group.first_seen),
            last_seen = greatest(s.last_seen, v_group.last_seen)
        FROM (
            SELECT h.id
            FROM active_series._shape AS h
            WHERE h.project_id = v_group.project_id
                AND h.digest = hash_array_extended(
                    v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
                )
                AND h.benchmark_ids = v_group.benchmark_ids
                AND h.variant_ids = v_group.variant_ids
                AND h.measure_ids = v_group.measure_ids
            LIMIT 1
        ) AS h
        WHERE s.testbed_id = v_group.testbed_id
            AND s.period_start = v_group.period_start
            AND s.shape_id = h.id
            AND (v_group.first_seen < s.first_seen OR v_group.last_seen > s.last_seen);
        IF FOUND THEN
            RETURN;
        END IF;
        SELECT s.id, s.series INTO v_shape_id, v_series
        FROM active_series._shape AS s
        WHERE s.project_id = v_group.project_id
            AND s.digest = hash_array_extended(
                v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
            )
            AND s.benchmark_ids = v_group.benchmark_ids
            AND s.variant_ids = v_group.variant_ids
            AND s.measure_ids = v_group.measure_ids
        LIMIT 1;
        v_group.shape_id := v_shape_id;
        -- (the first report of the testbed in the period with a stored set, as below for
        -- several sets, written for one)
        IF v_shape_id IS NOT NULL AND NOT EXISTS (
            SELECT
            FROM active_series._testbed_period AS p
            WHERE p.testbed_id = v_group.testbed_id AND p.period_start = v_group.period_start
        ) THEN
            WITH sets AS (
                INSERT INTO active_series._testbed_period (
                    testbed_id, period_start, organization_id, project_id, shape_id
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_group.organization_id,
                    v_group.project_id, v_shape_id
                )
            ),
            seen AS (
                INSERT INTO active_series._shape_seen (
                    testbed_id, period_start, shape_id, first_seen, last_seen
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_shape_id, v_group.first_seen,
                    v_group.last_seen
                )
            )
            INSERT INTO active_series._period_usage AS u (
                organization_id, period_start, project_id, series_count
            )
            VALUES (v_group.organization_id, v_group.period_start, v_group.project_id, v_series)
            ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
            SET series_count = u.series_count + excluded.series_count;
            PERFORM active_series._changed(v_group.organization_id, v_group.period_start, 'ingest');
            RETURN;
        END IF;
        v_groups := ARRAY[v_group];
    ELSE
        PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
        v_groups := ARRAY(
            SELECT row(
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids,
                active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )::active_series._shape_group
            FROM unnest(v_groups) AS g
        );
        IF active_series._widen(v_groups) = cardinality(v_groups) THEN
            RETURN;
        END IF;
    END IF;

    -- The first report of a testbed in a period (a new testbed, or the first report after
    -- the period changed) of a set already stored: the set is the testbed's set for the
    -- period, so one statement writes what _record_groups would, in the same key order:
    -- the testbeds' sets for the period, their _shape_seen rows, the counts grown by the
    -- sets' sizes (_period_usage, key order); then the outbox. It holds when every group is
    -- of a stored set, no testbed has history in its period (under the history locks taken
    -- above: nothing else writes it meanwhile; so _widen did nothing) and no (testbed,
    -- period) has two groups. Else the general path.
    IF NOT EXISTS (
        SELECT
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
            OR (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
    )
    AND (
        SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(v_groups) AS g
    ) = cardinality(v_groups) THEN
        WITH g AS MATERIALIZED (
            SELECT
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.shape_id, s.series
            FROM unnest(v_groups) AS g
            CROSS JOIN LATERAL (
                SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
            ) AS s
        ),
        sets AS (
            INSERT INTO active_series._testbed_period (
                testbed_id, period_start, organization_id, project_id, shape_id
            )
            SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
            FROM g
            ORDER BY g.testbed_id, g.period_start
        ),
        seen AS (
            INSERT INTO active_series._shape_seen (
                testbed_id, period_start, shape_id, first_seen, last_seen
            )
            SELECT g.testbed_id, g.period_start, g.shape_id, g.first_seen, g.last_seen
            FROM g
            ORDER BY g.testbed_id, g.period_start, g.shape_id
        )
        INSERT INTO active_series._period_usage AS u (
            organization_id, period_start, project_id, series_count
        )
        SELECT g.organization_id, g.period_start, g.project_id, sum(g.series)
        FROM g
        GROUP BY g.organization_id, g.period_start, g.project_id
        ORDER BY g.organization_id, g.period_start, g.project_id
        ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
        SET series_count = u.series_count + excluded.series_count;
        PERFORM active_series._changed(c.organization_id, c.period_start, 'ingest')
        FROM (
            SELECT DISTINCT g.organization_id, g.period_start
            FROM unnest(v_groups) AS g
            ORDER BY g.organization_id, g.period_start
        ) AS c;
        RETURN;
    END IF;
    PERFORM active_series._record_groups(v_groups);
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';

-- _pending: one row per transaction, which its later ingest statements append to (an
-- upsert on txid); the commit deletes it with a plain DELETE ... RETURNING
DROP TRIGGER pending_flush ON active_series._pending;
DROP INDEX active_series.pending_txid_idx;
ALTER TABLE active_series._pending DROP COLUMN head;
CREATE UNIQUE INDEX pending_txid_key ON active_series._pending (txid);
COMMENT ON TABLE active_series._pending IS
'The (report_benchmark, measure) pairs a transaction''s ingest statements inserted metrics for (one row per transaction, each statement''s pairs appended from its transition table), recorded and deleted at its commit by a deferred trigger: never visible to other transactions.';
CREATE OR REPLACE FUNCTION active_series._flush_pending()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Deferred (fires at commit) for the transaction's _pending row, inserted by its first
-- ingest statement (the later ones append to it): records the activity of every metric
-- the transaction inserted, in one batch (_record_activity), and deletes the row. Still
-- inside the ingest transaction: a failure aborts the commit.
-- SECURITY DEFINER: it fires at commit as the ingesting role, which may neither write the
-- cache, history, counts and outbox nor call the internal functions that do; what it
-- records is derived from committed-to-be metric rows only, never from arguments.
-- A refusal found deep inside the recording (the series cap, _check_usage; a series with
-- another project's benchmark or measure, _resolve_shapes) is noted in the transaction
-- setting active_series._refusal instead of raised there, and raised here, at the top:
-- the client then sees its message, detail and hint with one line of context, not the
-- nested statements of the recorder. (No exception block: that would cost a
-- subtransaction at every commit.)
DECLARE
    v_report_benchmark_ids bigint [];
    v_measure_ids bigint [];
    v_refusal jsonb;
    v_defer text;
BEGIN
    -- (set_config assigned, here and below: a simple expression, where PERFORM would run a
    -- query)
    v_defer := pg_catalog.set_config('active_series._refusal', 'defer', true);
    -- (the row as the last statement left it: NEW is the first statement's version)
    DELETE FROM active_series._pending AS p
    WHERE p.txid = NEW.txid
    RETURNING p.report_benchmark_ids, p.measure_ids
    INTO v_report_benchmark_ids, v_measure_ids;
    PERFORM active_series._record_activity(v_report_benchmark_ids, v_measure_ids);
    v_refusal := nullif(pg_catalog.current_setting('active_series._refusal'), v_defer)::jsonb;
    v_defer := pg_catalog.set_config('active_series._refusal', '', true);
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._flush_pending() IS
'Trigger: at commit, record the activity of the metrics a transaction inserted.';

CREATE CONSTRAINT TRIGGER pending_flush
AFTER INSERT ON active_series._pending
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
EXECUTE FUNCTION active_series._flush_pending();

CREATE OR REPLACE FUNCTION active_series._attach_triggers()
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

-- the attached tables' triggers made again from the templates above: detach, then attach
-- the same tables and columns (what attach makes is the application's, not the extension's)
DO $$
DECLARE
    v_tables jsonb;
    v_columns jsonb;
    v_fn regprocedure;
BEGIN
    SELECT
        pg_catalog.jsonb_object_agg(
            a.role, pg_catalog.format('%I.%I', a.table_schema, a.table_name)::regclass::oid
        ),
        pg_catalog.jsonb_object_agg(a.role, a.columns)
    INTO v_tables, v_columns
    FROM active_series._attachment AS a;
    IF v_tables IS NULL THEN
        RETURN;
    END IF;
    PERFORM active_series.detach();
    PERFORM active_series._attach_install(active_series._attach_check(v_tables, v_columns));
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        FOR v_fn IN
            SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
            INNER JOIN pg_catalog.pg_depend AS d
                ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                AND d.deptype = 'e'
            WHERE p.pronamespace = 'active_series'::regnamespace
                AND p.proname LIKE '\_attached\_%'
        LOOP
            EXECUTE pg_catalog.format('ALTER EXTENSION active_series DROP FUNCTION %s', v_fn);
        END LOOP;
    END IF;
END;
$$;

-- the recorder's composite built by field name, through one constructor (inlined)
CREATE FUNCTION active_series._shape_group(
    p_organization_id bigint,
    p_project_id bigint,
    p_testbed_id bigint,
    p_period_start timestamptz,
    p_first_seen timestamptz DEFAULT NULL,
    p_last_seen timestamptz DEFAULT NULL,
    p_benchmark_ids bigint[] DEFAULT NULL,
    p_variant_ids bigint[] DEFAULT NULL,
    p_measure_ids bigint[] DEFAULT NULL,
    p_shape_id bigint DEFAULT NULL
)
RETURNS active_series._shape_group
LANGUAGE sql
IMMUTABLE
AS $$
SELECT ROW(
    p_organization_id, p_project_id, p_testbed_id, p_period_start, p_first_seen, p_last_seen,
    p_benchmark_ids, p_variant_ids, p_measure_ids, p_shape_id
)::active_series._shape_group;
$$;
COMMENT ON FUNCTION active_series._shape_group(
    bigint, bigint, bigint, timestamptz, timestamptz, timestamptz, bigint[], bigint[], bigint[],
    bigint
) IS
'Internal: a recorder''s activity (_shape_group), built by field name.';
REVOKE EXECUTE ON FUNCTION active_series._shape_group(
    bigint, bigint, bigint, timestamptz, timestamptz, timestamptz, bigint[], bigint[], bigint[],
    bigint
)
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series._shape_group(
    bigint, bigint, bigint, timestamptz, timestamptz, timestamptz, bigint[], bigint[], bigint[],
    bigint
)
TO active_series_admin;
CREATE OR REPLACE FUNCTION active_series._resolve_shapes(p_groups active_series._shape_group[])
RETURNS active_series._shape_group[]
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Fills in each group's shape_id: the stored shape with the same project and series, else
-- a new one. A new shape is checked first: its benchmarks and measures must be its
-- project's (a series never joins another project's catalog), and the empty variant of
-- each benchmark it reports without a variant is created. Shapes are never updated and
-- have no unique key (two transactions may store the same set; either serves), so
-- creating one waits for nobody.
-- Locks: the empty variants it creates (benchmark order), nothing else.
DECLARE
    v_groups active_series._shape_group [];
    v_foreign record;
    v_refusal jsonb;
BEGIN
    v_groups := ARRAY(
        SELECT active_series._shape_group(
            p_organization_id => g.organization_id,
            p_project_id => g.project_id,
            p_testbed_id => g.testbed_id,
            p_period_start => g.period_start,
            p_first_seen => g.first_seen,
            p_last_seen => g.last_seen,
            p_benchmark_ids => g.benchmark_ids,
            p_variant_ids => g.variant_ids,
            p_measure_ids => g.measure_ids,
            p_shape_id => coalesce(
                g.shape_id,
                active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
        )
        FROM unnest(p_groups) AS g
    );
    IF NOT EXISTS (SELECT FROM unnest(v_groups) AS g WHERE g.shape_id IS NULL) THEN
        RETURN v_groups;
    END IF;

    SELECT x.kind, x.id, x.project_id, x.report_project_id INTO v_foreign
    FROM (
        SELECT DISTINCT 'benchmark' AS kind, e.id, b.project_id, g.project_id AS report_project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids) AS e (id)
        INNER JOIN active_series.benchmark AS b ON b.id = e.id
        WHERE g.shape_id IS NULL
        UNION ALL
        SELECT DISTINCT 'measure', e.id, m.project_id, g.project_id
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.measure_ids) AS e (id)
        INNER JOIN active_series.measure AS m ON m.id = e.id
        WHERE g.shape_id IS NULL
    ) AS x
    WHERE x.project_id <> x.report_project_id
    ORDER BY x.kind, x.id
    LIMIT 1;
    IF FOUND THEN
        v_refusal := jsonb_build_object(
            'sqlstate', '23503',
            'message', format(
                'active_series: %s %s belongs to project %s, not to project %s of the report',
                v_foreign.kind, v_foreign.id, v_foreign.project_id, v_foreign.report_project_id
            ),
            'detail', format(
                'A series is a testbed, benchmark, variant and measure of one project; %s %s '
                'is in project %s.', v_foreign.kind, v_foreign.id, v_foreign.project_id
            ),
            'hint', format(
                'Nothing of this transaction was written. Use the %s of the same name in '
                'project %s (the report''s), creating it there if needed.',
                v_foreign.kind, v_foreign.report_project_id
            )
        );
        -- within the commit-time recording (a trigger), _flush_pending raises it at the top:
        -- the groups with a new shape are left out, so that the recording ends cleanly
        IF pg_trigger_depth() > 0
            AND (
                current_setting('active_series._refusal', true) = 'defer'
                OR current_setting('active_series._refusal', true) LIKE '{%'
            ) THEN
            IF current_setting('active_series._refusal', true) = 'defer' THEN
                PERFORM set_config('active_series._refusal', v_refusal::text, true);
            END IF;
            RETURN ARRAY(SELECT g FROM unnest(v_groups) AS g WHERE g.shape_id IS NOT NULL);
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
    END IF;

    -- (without a variant table, every report_benchmark reports the empty variant)
    IF EXISTS (SELECT FROM active_series._attachment AS a WHERE a.role = 'variant') THEN
        INSERT INTO active_series.variant (benchmark_id, parameters)
        SELECT DISTINCT e.benchmark_id, '{}'::jsonb
        FROM unnest(v_groups) AS g
        CROSS JOIN LATERAL unnest(g.benchmark_ids, g.variant_ids) AS e (benchmark_id, variant_id)
        WHERE g.shape_id IS NULL AND e.variant_id = 0
        ORDER BY e.benchmark_id
        ON CONFLICT (benchmark_id, parameters) DO NOTHING;
    END IF;

    WITH missing AS (
        SELECT DISTINCT g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
    ),
    created AS (
        INSERT INTO active_series._shape (
            project_id, benchmark_ids, variant_ids, measure_ids, series
        )
        SELECT
            m.project_id, m.benchmark_ids, m.variant_ids, m.measure_ids,
            cardinality(m.measure_ids)
        FROM missing AS m
        RETURNING id, project_id, benchmark_ids, variant_ids, measure_ids
    )
    SELECT array_agg(
        active_series._shape_group(
            p_organization_id => g.organization_id,
            p_project_id => g.project_id,
            p_testbed_id => g.testbed_id,
            p_period_start => g.period_start,
            p_first_seen => g.first_seen,
            p_last_seen => g.last_seen,
            p_benchmark_ids => g.benchmark_ids,
            p_variant_ids => g.variant_ids,
            p_measure_ids => g.measure_ids,
            p_shape_id => coalesce(g.shape_id, c.id)
        )
    )
    INTO v_groups
    FROM unnest(v_groups) AS g
    LEFT JOIN created AS c
        ON g.shape_id IS NULL
        AND c.project_id = g.project_id
        AND c.benchmark_ids = g.benchmark_ids
        AND c.variant_ids = g.variant_ids
        AND c.measure_ids = g.measure_ids;
    RETURN v_groups;
END;
$$;
COMMENT ON FUNCTION active_series._resolve_shapes(active_series._shape_group[]) IS
'Internal: the stored shape of each group''s set of series, created (after the project check) when new.';
CREATE OR REPLACE FUNCTION active_series._regroup(p_spans active_series._series_span[])
RETURNS active_series._shape_group[]
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Per-series history as sets: the series of one testbed and period that share their first
-- and last activity become one group (for re-bucketing, re-recording after a hard delete
-- and upgrades: the paths that start from per-series history).
SELECT coalesce(array_agg(
    active_series._shape_group(
        p_organization_id => g.organization_id,
        p_project_id => g.project_id,
        p_testbed_id => g.testbed_id,
        p_period_start => g.period_start,
        p_first_seen => g.first_seen,
        p_last_seen => g.last_seen,
        p_benchmark_ids => g.benchmark_ids,
        p_variant_ids => g.variant_ids,
        p_measure_ids => g.measure_ids
    )
), '{}')
FROM (
    SELECT
        s.organization_id, s.project_id, s.testbed_id, s.period_start, s.first_seen,
        s.last_seen,
        array_agg(s.benchmark_id ORDER BY s.benchmark_id, s.variant_id, s.measure_id)
            AS benchmark_ids,
        array_agg(s.variant_id ORDER BY s.benchmark_id, s.variant_id, s.measure_id)
            AS variant_ids,
        array_agg(s.measure_id ORDER BY s.benchmark_id, s.variant_id, s.measure_id)
            AS measure_ids
    FROM unnest(p_spans) AS s
    GROUP BY s.organization_id, s.project_id, s.testbed_id, s.period_start, s.first_seen,
        s.last_seen
) AS g;
$$;
COMMENT ON FUNCTION active_series._regroup(active_series._series_span[]) IS
'Internal: group per-series history into sets of series sharing testbed, period and first and last activity.';
CREATE OR REPLACE FUNCTION active_series._record_groups(
    p_groups active_series._shape_group[],
    p_reason text DEFAULT 'ingest'
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- (as _record_activity: generic plans on index paths, whatever the statistics were)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Writes activity into the history (the words: docs/DESIGN-NOTES.md): each element of
-- p_groups says that a testbed reported these series within one (recorded) period between
-- first_seen and last_seen. Row writes follow what changed, never the number of series:
-- * activity of a shape the testbed already has a sighting of in the period widens that
--   sighting (its _shape_seen row's first_seen/last_seen: one HOT update; nothing when
--   already inside);
-- * activity the history already holds (a late commit, backfill over recorded data) writes
--   nothing;
-- * a shape new to the testbed in the period adds a sighting; when it holds series the
--   testbed had not reported in the period, the period shape (_testbed_period, the union of
--   the sightings) is replaced, and _period_usage grows by the difference;
-- * the shapes themselves are stored once (_shape) and shared by testbeds and periods.
-- Then an outbox row for each (organization, period) whose count changed.
-- Locks, in this order, so that concurrent callers cannot deadlock: the testbeds' history
-- locks (_lock_testbeds: every write to a testbed's history happens under it); the
-- empty variants and shapes it creates (_resolve_shapes; nobody waits for a shape); last,
-- the _period_usage rows in key order. The caller holds the organizations' period locks.
DECLARE
    v_groups active_series._shape_group [];
    v_todo integer;
    v_new active_series._shape_group [];
    v_unions active_series._shape_group [];
BEGIN
    PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(p_groups) AS g));

    -- one group per (testbed, period, shape), in key order
    SELECT
        array_agg(
            active_series._shape_group(
                p_organization_id => a.organization_id,
                p_project_id => a.project_id,
                p_testbed_id => a.testbed_id,
                p_period_start => a.period_start,
                p_first_seen => a.first_seen,
                p_last_seen => a.last_seen,
                p_shape_id => a.shape_id
            )
            ORDER BY a.testbed_id, a.period_start, a.shape_id
        ),
        count(*)
    INTO v_groups, v_todo
    FROM (
        SELECT
            g.testbed_id, g.period_start, g.shape_id,
            min(g.organization_id) AS organization_id, min(g.project_id) AS project_id,
            min(g.first_seen) AS first_seen, max(g.last_seen) AS last_seen
        FROM unnest(active_series._resolve_shapes(ARRAY(
            SELECT g FROM unnest(p_groups) AS g WHERE NOT active_series._covered(g)
        ))) AS g
        GROUP BY g.testbed_id, g.period_start, g.shape_id
    ) AS a;
    IF v_todo = 0 THEN
        RETURN;
    END IF;

    -- Shapes the testbed has a sighting of in the period: widen it. The others are new.
    PERFORM active_series._widen(v_groups);
    SELECT array_agg(g) INTO v_new
    FROM unnest(v_groups) AS g
    WHERE NOT coalesce((
        SELECT true
        FROM active_series._shape_seen AS s
        WHERE s.testbed_id = g.testbed_id
            AND s.period_start = g.period_start
            AND s.shape_id = g.shape_id
        LIMIT 1
    ), false);
    IF v_new IS NULL THEN
        RETURN;
    END IF;

    -- The period shape with the new sightings' shapes added, where that adds series: the new
    -- shape itself when the testbed had none (no unfolding), else the union unfolded
    WITH t AS (
        SELECT
            n.testbed_id, n.period_start,
            min(n.organization_id) AS organization_id, min(n.project_id) AS project_id,
            array_agg(DISTINCT n.shape_id) AS shape_ids,
            (
                SELECT p.shape_id FROM active_series._testbed_period AS p
                WHERE p.testbed_id = n.testbed_id AND p.period_start = n.period_start
            ) AS old_shape_id
        FROM unnest(v_new) AS n
        GROUP BY n.testbed_id, n.period_start
    )
    SELECT array_agg(
        active_series._shape_group(
            p_organization_id => t.organization_id,
            p_project_id => t.project_id,
            p_testbed_id => t.testbed_id,
            p_period_start => t.period_start,
            p_benchmark_ids => e.benchmark_ids,
            p_variant_ids => e.variant_ids,
            p_measure_ids => e.measure_ids,
            p_shape_id => CASE
                WHEN t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1
                    THEN t.shape_ids[1]
            END
        )
        ORDER BY t.testbed_id, t.period_start
    )
    INTO v_unions
    FROM t
    LEFT JOIN LATERAL (
        SELECT
            array_agg(x.b ORDER BY x.b, x.v, x.m) AS benchmark_ids,
            array_agg(x.v ORDER BY x.b, x.v, x.m) AS variant_ids,
            array_agg(x.m ORDER BY x.b, x.v, x.m) AS measure_ids
        FROM (
            SELECT e.b, e.v, e.m
            FROM active_series._shape AS s
            CROSS JOIN LATERAL unnest(s.benchmark_ids, s.variant_ids, s.measure_ids)
                AS e (b, v, m)
            WHERE s.id = ANY(t.shape_ids || t.old_shape_id)
            GROUP BY e.b, e.v, e.m
        ) AS x
    ) AS e ON NOT (t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1)
    WHERE t.old_shape_id IS NULL
        OR cardinality(e.measure_ids) > (
            SELECT o.series FROM active_series._shape AS o WHERE o.id = t.old_shape_id
        );
    IF v_unions IS NULL THEN
        -- (every new shape was inside the period shape: no count changes)
        INSERT INTO active_series._shape_seen AS s (
            testbed_id, period_start, shape_id, first_seen, last_seen
        )
        SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
        FROM unnest(v_new) AS n
        ORDER BY n.testbed_id, n.period_start, n.shape_id;
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM unnest(v_unions) AS u WHERE u.shape_id IS NULL) THEN
        v_unions := active_series._resolve_shapes(v_unions);
    END IF;

    -- the period shapes, and the counts by what they gained
    WITH old AS (
        SELECT
            u.*,
            (SELECT s.series FROM active_series._shape AS s WHERE s.id = u.shape_id) AS series,
            coalesce((
                SELECT s.series FROM active_series._shape AS s
                WHERE s.id = (
                    SELECT p.shape_id FROM active_series._testbed_period AS p
                    WHERE p.testbed_id = u.testbed_id AND p.period_start = u.period_start
                )
            ), 0) AS old_series
        FROM unnest(v_unions) AS u
    ),
    written AS (
        INSERT INTO active_series._testbed_period AS p (
            testbed_id, period_start, organization_id, project_id, shape_id
        )
        SELECT o.testbed_id, o.period_start, o.organization_id, o.project_id, o.shape_id
        FROM old AS o
        ORDER BY o.testbed_id, o.period_start
        ON CONFLICT (testbed_id, period_start) DO UPDATE SET shape_id = excluded.shape_id
    )
    INSERT INTO active_series._period_usage AS u (
        organization_id, period_start, project_id, series_count
    )
    SELECT o.organization_id, o.period_start, o.project_id, sum(o.series - o.old_series)
    FROM old AS o
    GROUP BY o.organization_id, o.period_start, o.project_id
    ORDER BY o.organization_id, o.period_start, o.project_id
    ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
    SET series_count = u.series_count + excluded.series_count;

    INSERT INTO active_series._shape_seen AS s (
        testbed_id, period_start, shape_id, first_seen, last_seen
    )
    SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
    FROM unnest(v_new) AS n
    ORDER BY n.testbed_id, n.period_start, n.shape_id;

    PERFORM active_series._changed(c.organization_id, c.period_start, p_reason)
    FROM (
        SELECT DISTINCT u.organization_id, u.period_start
        FROM unnest(v_unions) AS u
        ORDER BY u.organization_id, u.period_start
    ) AS c;
END;
$$;
COMMENT ON FUNCTION active_series._record_groups(active_series._shape_group[], text) IS
'Internal: write sets of series reported by testbeds within periods into the history and the per-period counts (writes follow what changed, not the number of series).';
CREATE OR REPLACE FUNCTION active_series._record_activity(
    p_report_benchmark_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Records metrics, given as (report_benchmark, measure) pairs (the ingest trigger passes a
-- whole transaction's at commit, backfill a batch of reports'), in the history and the
-- per-period counts: each report_benchmark is looked up once (its report, project and
-- variant), the pairs become one activity per (testbed, report.created): its series, in
-- the billing period containing that time (the words: docs/DESIGN-NOTES.md), and
-- _record_groups writes them. A variant_id that is NULL, or names the benchmark's empty
-- variant, is variant 0.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
    v_group active_series._shape_group;
    v_shape_id bigint;
    v_series integer;
    v_organization_id bigint;
    v_project_id bigint;
    v_testbed_id bigint;
    v_created timestamptz;
    v_benchmark_id bigint;
    v_variant_id bigint;
    v_period_start timestamptz;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its activity, looked up directly, in
        -- plain statements (a function in the join would be a table function: a tuplestore
        -- per call)
        SELECT
            p.organization_id, r.project_id, r.testbed_id, r.created, rb.benchmark_id,
            CASE
                WHEN rb.variant_id IS NULL THEN 0
                ELSE active_series._variant_key(rb.variant_id)
            END
        INTO v_organization_id, v_project_id, v_testbed_id, v_created, v_benchmark_id,
            v_variant_id
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE rb.id = p_report_benchmark_ids[1];
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- its period: _period_for's probe of the recorded one written out (under the
        -- organization's period lock, as there), the call only to record a new one
        PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(v_organization_id));
        SELECT l.period_start INTO v_period_start
        FROM (
            SELECT p.period_start, p.period_end
            FROM active_series._period AS p
            WHERE p.organization_id = v_organization_id AND p.period_start <= v_created
            ORDER BY p.period_start DESC
            LIMIT 1
        ) AS l
        WHERE l.period_end > v_created;
        IF v_period_start IS NULL THEN
            v_period_start := (
                active_series._period_for(v_organization_id, v_created)
            ).period_start;
        END IF;
        v_groups := ARRAY[
            active_series._shape_group(
                p_organization_id => v_organization_id,
                p_project_id => v_project_id,
                p_testbed_id => v_testbed_id,
                p_period_start => v_period_start,
                p_first_seen => v_created,
                p_last_seen => v_created,
                p_benchmark_ids => ARRAY[v_benchmark_id],
                p_variant_ids => ARRAY[v_variant_id],
                p_measure_ids => p_measure_ids
            )
        ];
    ELSE
        -- (each report_benchmark, then each report, looked up once; OFFSET 0 keeps each
        -- LATERAL subquery a per-row index lookup, whatever the statistics said when this plan
        -- was cached)
        v_groups := ARRAY(
            WITH rbs AS MATERIALIZED (
                SELECT
                    rb.id, rb.report_id, rb.benchmark_id,
                    -- (without a variant_id, as most reports send, no call)
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END AS variant_id
                FROM active_series.report_benchmark AS rb
                WHERE rb.id = ANY(p_report_benchmark_ids)
            ),
            -- each report's series, sorted (one sort on four keys; the series come distinct
            -- and in shape order, and each report's arrays are aggregated in that order; an
            -- order lost would only store a shape twice)
            sets AS MATERIALIZED (
                SELECT
                    s.report_id, array_agg(s.benchmark_id) AS benchmark_ids,
                    array_agg(s.variant_id) AS variant_ids, array_agg(s.measure_id) AS measure_ids
                FROM (
                    SELECT DISTINCT b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                    INNER JOIN rbs AS b ON b.id = x.id
                    ORDER BY b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                ) AS s
                GROUP BY s.report_id
            ),
            -- (each report looked up once; OFFSET 0 keeps the LATERAL subquery a per-row
            -- index lookup, whatever the statistics said when this plan was cached)
            reports AS MATERIALIZED (
                SELECT d.benchmark_ids, d.variant_ids, d.measure_ids, k.*
                FROM sets AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM reports AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            ),
            keyed AS MATERIALIZED (
                SELECT
                    s.*, t.period_start,
                    count(*) OVER (PARTITION BY s.testbed_id, s.created) AS reports
                FROM reports AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
            )
            -- a testbed's one report at a time: its series as they are
            SELECT active_series._shape_group(
                p_organization_id => k.organization_id,
                p_project_id => k.project_id,
                p_testbed_id => k.testbed_id,
                p_period_start => k.period_start,
                p_first_seen => k.created,
                p_last_seen => k.created,
                p_benchmark_ids => k.benchmark_ids,
                p_variant_ids => k.variant_ids,
                p_measure_ids => k.measure_ids
            )
            FROM keyed AS k
            WHERE k.reports = 1
            UNION ALL
            -- several reports of one testbed in one transaction (one time): their series merged
            SELECT active_series._shape_group(
                p_organization_id => m.organization_id,
                p_project_id => m.project_id,
                p_testbed_id => m.testbed_id,
                p_period_start => m.period_start,
                p_first_seen => m.created,
                p_last_seen => m.created,
                p_benchmark_ids => array_agg(m.b),
                p_variant_ids => array_agg(m.v),
                p_measure_ids => array_agg(m.m)
            )
            FROM (
                SELECT DISTINCT
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
                FROM keyed AS k
                CROSS JOIN LATERAL unnest(k.benchmark_ids, k.variant_ids, k.measure_ids)
                    AS e (b, v, m)
                WHERE k.reports > 1
                ORDER BY
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
            ) AS m
            GROUP BY m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same shape as before in the period, later
    -- than before: one HOT update of that sighting per testbed (_widen). Anything else (a
    -- shape or a period new to the testbed, older activity) goes on below, which finds
    -- what these updates already did and leaves it.
    IF cardinality(v_groups) = 1 THEN
        -- (one testbed at one time, nearly every transaction: the same steps written
        -- out, without the calls: _lock_testbeds, then _widen of the row of the stored
        -- shape (_find_shape) in one statement; the shape looked up alone only when that
        -- updated nothing)
        v_group := v_groups[1];
        PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), hashint8(v_group.testbed_id));
        UPDATE active_series._shape_seen AS s
        SET first_seen = least(s.first_seen, v_group.first_seen),
            last_seen = greatest(s.last_seen, v_group.last_seen)
        FROM (
            SELECT h.id
            FROM active_series._shape AS h
            WHERE h.project_id = v_group.project_id
                AND h.digest = hash_array_extended(
                    v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
                )
                AND h.benchmark_ids = v_group.benchmark_ids
                AND h.variant_ids = v_group.variant_ids
                AND h.measure_ids = v_group.measure_ids
            LIMIT 1
        ) AS h
        WHERE s.testbed_id = v_group.testbed_id
            AND s.period_start = v_group.period_start
            AND s.shape_id = h.id
            AND (v_group.first_seen < s.first_seen OR v_group.last_seen > s.last_seen);
        IF FOUND THEN
            RETURN;
        END IF;
        SELECT s.id, s.series INTO v_shape_id, v_series
        FROM active_series._shape AS s
        WHERE s.project_id = v_group.project_id
            AND s.digest = hash_array_extended(
                v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
            )
            AND s.benchmark_ids = v_group.benchmark_ids
            AND s.variant_ids = v_group.variant_ids
            AND s.measure_ids = v_group.measure_ids
        LIMIT 1;
        v_group.shape_id := v_shape_id;
        -- (the first report of the testbed in the period, of a stored shape, as below for
        -- several testbeds, written for one)
        IF v_shape_id IS NOT NULL AND NOT EXISTS (
            SELECT
            FROM active_series._testbed_period AS p
            WHERE p.testbed_id = v_group.testbed_id AND p.period_start = v_group.period_start
        ) THEN
            WITH sets AS (
                INSERT INTO active_series._testbed_period (
                    testbed_id, period_start, organization_id, project_id, shape_id
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_group.organization_id,
                    v_group.project_id, v_shape_id
                )
            ),
            seen AS (
                INSERT INTO active_series._shape_seen (
                    testbed_id, period_start, shape_id, first_seen, last_seen
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_shape_id, v_group.first_seen,
                    v_group.last_seen
                )
            )
            INSERT INTO active_series._period_usage AS u (
                organization_id, period_start, project_id, series_count
            )
            VALUES (v_group.organization_id, v_group.period_start, v_group.project_id, v_series)
            ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
            SET series_count = u.series_count + excluded.series_count;
            PERFORM active_series._changed(v_group.organization_id, v_group.period_start, 'ingest');
            RETURN;
        END IF;
        v_groups := ARRAY[v_group];
    ELSE
        PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
        v_groups := ARRAY(
            SELECT active_series._shape_group(
                p_organization_id => g.organization_id,
                p_project_id => g.project_id,
                p_testbed_id => g.testbed_id,
                p_period_start => g.period_start,
                p_first_seen => g.first_seen,
                p_last_seen => g.last_seen,
                p_benchmark_ids => g.benchmark_ids,
                p_variant_ids => g.variant_ids,
                p_measure_ids => g.measure_ids,
                p_shape_id => active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
            FROM unnest(v_groups) AS g
        );
        IF active_series._widen(v_groups) = cardinality(v_groups) THEN
            RETURN;
        END IF;
    END IF;

    -- The first report of a testbed in a period (a new testbed, or the first report after
    -- the period changed) of a shape already stored: the shape is the testbed's period
    -- shape, so one statement writes what _record_groups would, in the same key order: the
    -- period shapes, the sightings, the counts grown by the shapes' sizes (_period_usage,
    -- key order); then the outbox. It holds when every activity is of a stored shape, no
    -- testbed has history in its period (under the history locks taken above: nothing else
    -- writes it meanwhile; so _widen did nothing) and no (testbed, period) has two
    -- activities. Else the general path.
    IF NOT EXISTS (
        SELECT
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
            OR (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
    )
    AND (
        SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(v_groups) AS g
    ) = cardinality(v_groups) THEN
        WITH g AS MATERIALIZED (
            SELECT
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.shape_id, s.series
            FROM unnest(v_groups) AS g
            CROSS JOIN LATERAL (
                SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
            ) AS s
        ),
        sets AS (
            INSERT INTO active_series._testbed_period (
                testbed_id, period_start, organization_id, project_id, shape_id
            )
            SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
            FROM g
            ORDER BY g.testbed_id, g.period_start
        ),
        seen AS (
            INSERT INTO active_series._shape_seen (
                testbed_id, period_start, shape_id, first_seen, last_seen
            )
            SELECT g.testbed_id, g.period_start, g.shape_id, g.first_seen, g.last_seen
            FROM g
            ORDER BY g.testbed_id, g.period_start, g.shape_id
        )
        INSERT INTO active_series._period_usage AS u (
            organization_id, period_start, project_id, series_count
        )
        SELECT g.organization_id, g.period_start, g.project_id, sum(g.series)
        FROM g
        GROUP BY g.organization_id, g.period_start, g.project_id
        ORDER BY g.organization_id, g.period_start, g.project_id
        ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
        SET series_count = u.series_count + excluded.series_count;
        PERFORM active_series._changed(c.organization_id, c.period_start, 'ingest')
        FROM (
            SELECT DISTINCT g.organization_id, g.period_start
            FROM unnest(v_groups) AS g
            ORDER BY g.organization_id, g.period_start
        ) AS c;
        RETURN;
    END IF;
    PERFORM active_series._record_groups(v_groups);
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';

-- ================================================================ what Stripe holds, read from its summaries
-- ---------------------------------------------------------------- sql/tables/relay_confirmation.sql
CREATE TABLE active_series._relay_confirmation (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    stripe_customer_id text NOT NULL,
    -- when the meter's event summary is to be read next (NULL: nothing to read)
    due_at timestamptz,
    -- the last read: the period's last post when read (its timestamp, per the ledger), the
    -- value the ledger expects in the window read, what the summary held, the window
    -- (minute-aligned Unix seconds) and when
    event_timestamp bigint,
    ledger_value bigint,
    stripe_value bigint,
    window_start bigint,
    window_end bigint,
    read_at timestamptz,
    -- posts made again since the last read that agreed, and why the last read failed
    reposts integer NOT NULL DEFAULT 0,
    last_error text,
    PRIMARY KEY (organization_id, period_start),
    CHECK ((read_at IS NULL) = (stripe_value IS NULL))
);
CREATE INDEX relay_confirmation_due_idx ON active_series._relay_confirmation (due_at)
WHERE due_at IS NOT NULL;
COMMENT ON TABLE active_series._relay_confirmation IS
'What Stripe held for a billing period, read from the meter''s event summary (not inferred from the ledger): the relay reads it once its posts have settled (--confirm-after) and again before the invoice grace ends; relay_status and relay_periods say in_sync only when the read agrees with the ledger''s last post.';
COMMENT ON COLUMN active_series._relay_confirmation.event_timestamp IS
'The timestamp of the period''s last post (per the ledger) when the summary was read: the read confirms that post only (a later post needs a read of its own).';
COMMENT ON COLUMN active_series._relay_confirmation.ledger_value IS
'What the summary should hold per the ledger: the value of the ledger''s last event in the window read.';
COMMENT ON COLUMN active_series._relay_confirmation.stripe_value IS
'The aggregated_value of the meter''s event summary for the customer over [window_start, window_end) at read_at: with last aggregation, the value Stripe bills.';
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        PERFORM pg_catalog.pg_extension_config_dump(
            'active_series._relay_confirmation', ''
        );
    END IF;
END;
$$;
GRANT SELECT, INSERT, UPDATE ON active_series._relay_confirmation TO active_series_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON active_series._relay_confirmation TO active_series_admin;
-- ---------------------------------------------------------------- sql/functions/_relay_work.sql
CREATE OR REPLACE FUNCTION active_series._relay_work(
    p_grace interval, p_invoice_grace interval
)
RETURNS TABLE (organization_id bigint)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The organizations the relay has work for now: outbox rows, a pending ledger row
-- (a post whose outcome is unknown), an unclosed period whose end plus p_grace has
-- passed, an unfinalized one whose end plus p_invoice_grace has, or a period whose
-- Stripe event summary is due to be read (_relay_confirmation); not parked, and
-- not backing off. Drops outbox rows of organizations that no longer exist and creates
-- missing _relay_state rows (ON CONFLICT DO NOTHING: never waits for a worker holding
-- one). Locks nothing beyond the rows it writes.
DECLARE
    v_candidates bigint[];
BEGIN
    DELETE FROM active_series._outbox AS x
    WHERE NOT EXISTS (
        SELECT FROM active_series.organization AS o WHERE o.id = x.organization_id
    );

    v_candidates := ARRAY(
        SELECT x.organization_id FROM active_series._outbox AS x
        UNION
        SELECT l.organization_id FROM active_series._ledger AS l WHERE l.status = 'pending'
        UNION
        SELECT p.organization_id FROM active_series._period AS p
        WHERE
            p.finalized_at IS NULL
            AND (
                p.closed_at IS NULL AND p.period_end + p_grace <= now()
                OR p.period_end + p_invoice_grace <= now()
            )
        UNION
        SELECT c.organization_id FROM active_series._relay_confirmation AS c
        WHERE c.due_at <= now()
    );

    INSERT INTO active_series._relay_state (organization_id)
    SELECT c.id FROM unnest(v_candidates) AS c (id)
    ON CONFLICT ON CONSTRAINT _relay_state_pkey DO NOTHING;

    RETURN QUERY
    SELECT c.organization_id
    FROM unnest(v_candidates) AS c (organization_id)
    INNER JOIN active_series._relay_state AS s ON c.organization_id = s.organization_id
    WHERE s.parked_at IS NULL AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now())
    ORDER BY s.next_attempt_at NULLS FIRST, c.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_work(interval, interval) IS
'Internal (relay): organizations with work due now (outbox rows, pending posts, periods to close after the grace or to finalize after the invoice grace, Stripe summaries to read), not parked or backing off.';
-- ---------------------------------------------------------------- sql/functions/_relay_next_wakeup.sql
CREATE OR REPLACE FUNCTION active_series._relay_next_wakeup(
    p_grace interval, p_invoice_grace interval
)
RETURNS timestamptz
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- When the relay next has work that no notification will announce: the earliest retry
-- of an organization backing off, the earliest end plus grace of an unclosed period, the
-- earliest end plus invoice grace of an unfinalized one, or the earliest read of a Stripe
-- event summary (_relay_confirmation). Only future times: what is
-- due now is found by _relay_work. NULL: nothing scheduled. Takes no locks.
SELECT least(
    (
        SELECT min(s.next_attempt_at)
        FROM active_series._relay_state AS s
        WHERE s.parked_at IS NULL AND s.next_attempt_at > now()
    ),
    (
        SELECT min(p.period_end) + p_grace
        FROM active_series._period AS p
        WHERE p.closed_at IS NULL AND p.period_end + p_grace > now()
    ),
    (
        SELECT min(p.period_end) + p_invoice_grace
        FROM active_series._period AS p
        WHERE p.finalized_at IS NULL AND p.period_end + p_invoice_grace > now()
    ),
    (
        SELECT min(c.due_at)
        FROM active_series._relay_confirmation AS c
        WHERE c.due_at > now()
    )
);
$$;
COMMENT ON FUNCTION active_series._relay_next_wakeup(interval, interval) IS
'Internal (relay): the next time the relay has scheduled work (a retry, a period to close or to finalize, a Stripe summary to read), NULL if none.';
-- ---------------------------------------------------------------- sql/views/relay_status.sql
CREATE OR REPLACE VIEW active_series.relay_status AS
SELECT
    b.organization_id,
    b.stripe_customer_id,
    b.plan,
    cp.period_start,
    cp.period_end,
    u.period_usage,
    h.value AS stripe_value,
    h.status AS stripe_value_status,
    -- in sync: the ledger's last post is sent and equals the usage, and the meter's event
    -- summary, read after that post, held the same (nothing posted: nothing to confirm)
    coalesce(h.value, 0) = u.period_usage AND coalesce(h.status, 'sent') = 'sent'
    AND (
        h.value IS NULL
        OR coalesce(
            rc.event_timestamp = h.event_timestamp AND rc.stripe_value = rc.ledger_value, FALSE
        )
    )
        AS in_sync,
    coalesce(x.depth, 0) AS outbox_depth,
    now() - x.oldest AS oldest_unposted_change_age,
    s.parked_at IS NOT NULL AS parked,
    s.parked_reason,
    s.next_attempt_at,
    s.attempts,
    s.last_event_timestamp,
    -- the ledger agrees, Stripe's event summary has not confirmed it (yet)
    coalesce(
        h.value = u.period_usage AND h.status = 'sent'
        AND rc.event_timestamp IS DISTINCT FROM h.event_timestamp,
        FALSE
    ) AS confirming,
    rc.stripe_value AS stripe_summary,
    rc.read_at AS stripe_summary_at
FROM active_series.billing_account AS b
-- current_period and period_usage written out as one probe each: the view is polled over
-- every billed organization, and their calls cost ~20 µs each per row. The recorded period
-- containing now(), else current_period (an organization with no activity yet in it).
CROSS JOIN
    LATERAL (
        (
            SELECT
                r.period_start,
                r.period_end
            FROM active_series._period AS r
            WHERE
                r.organization_id = b.organization_id
                AND r.period_start <= now()
                AND r.period_end > now()
            ORDER BY r.period_start DESC
            LIMIT 1
        )
        UNION ALL
        SELECT
            c.period_start,
            c.period_end
        FROM active_series.current_period(b.organization_id) AS c
        LIMIT 1
    ) AS cp
CROSS JOIN
    LATERAL (
        SELECT coalesce(sum(bu.series_count), 0)::bigint AS period_usage
        FROM active_series._billed_usage AS bu
        WHERE bu.organization_id = b.organization_id AND bu.period_start = cp.period_start
    ) AS u
-- _relay_held's rule, written out: the view is read by roles that may not call the relay's
-- internal functions (a view reads its tables with its owner's rights, but calls
-- functions with its reader's)
LEFT JOIN LATERAL (
    SELECT
        l.value,
        l.status,
        l.event_timestamp
    FROM active_series._ledger AS l
    WHERE
        l.stripe_customer_id = b.stripe_customer_id
        AND l.status <> 'failed'
        AND l.event_timestamp
        BETWEEN ceil(extract(EPOCH FROM cp.period_start))::bigint
        AND ceil(extract(EPOCH FROM cp.period_end))::bigint - 1
    ORDER BY l.event_timestamp DESC
    LIMIT 1
) AS h ON TRUE
LEFT JOIN LATERAL (
    SELECT
        count(*) AS depth,
        min(o.created) AS oldest
    FROM active_series._outbox AS o
    WHERE o.organization_id = b.organization_id
) AS x ON TRUE
LEFT JOIN active_series._relay_state AS s ON b.organization_id = s.organization_id
LEFT JOIN active_series._relay_confirmation AS rc
    ON b.organization_id = rc.organization_id AND cp.period_start = rc.period_start
WHERE b.plan <> 'free' AND b.stripe_customer_id IS NOT NULL;
COMMENT ON VIEW active_series.relay_status IS
'Per billed organization: current period, its exact usage, the value Stripe holds per the ledger, whether they agree and Stripe''s event summary confirmed it (in_sync; confirming: not yet read), outbox depth, age of the oldest unposted change, whether the relay is parked, and what the meter''s event summary held when last read.';
-- ---------------------------------------------------------------- sql/views/relay_periods.sql
CREATE OR REPLACE VIEW active_series.relay_periods AS
SELECT
    b.organization_id,
    b.stripe_customer_id,
    p.period_start,
    p.period_end,
    p.closed_at,
    u.period_usage,
    h.value AS stripe_value,
    h.status AS stripe_value_status,
    coalesce(h.value, 0) = u.period_usage AND coalesce(h.status, 'sent') = 'sent'
    AND (
        h.value IS NULL
        OR coalesce(
            rc.event_timestamp = h.event_timestamp AND rc.stripe_value = rc.ledger_value, FALSE
        )
    )
        AS in_sync,
    coalesce(
        h.value = u.period_usage AND h.status = 'sent'
        AND rc.event_timestamp IS DISTINCT FROM h.event_timestamp,
        FALSE
    ) AS confirming,
    rc.stripe_value AS stripe_summary,
    rc.read_at AS stripe_summary_at
FROM active_series.billing_account AS b
INNER JOIN active_series._period AS p ON b.organization_id = p.organization_id
CROSS JOIN
    LATERAL (
        SELECT coalesce(sum(bu.series_count), 0)::bigint AS period_usage
        FROM active_series._billed_usage AS bu
        WHERE bu.organization_id = b.organization_id AND bu.period_start = p.period_start
    ) AS u
LEFT JOIN LATERAL active_series._relay_held(
    b.stripe_customer_id, p.period_start, p.period_end
) AS h ON TRUE
LEFT JOIN active_series._relay_confirmation AS rc
    ON p.organization_id = rc.organization_id AND p.period_start = rc.period_start
WHERE b.stripe_customer_id IS NOT NULL;
COMMENT ON VIEW active_series.relay_periods IS
'Per organization with a Stripe customer and recorded billing period: the exact usage, the value Stripe holds for that period per the ledger, whether they agree and Stripe''s event summary confirmed it (in_sync; confirming: not yet read), what the summary held when last read, and when the period was closed.';
-- ---------------------------------------------------------------- triggers/owners_deleted.sql (an organization's subscription edges and summary reads go with it)
CREATE OR REPLACE FUNCTION active_series._owners_deleted(p_role text, p_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Organizations, projects or testbeds the application deleted (attach's AFTER DELETE
-- triggers active_series_<role>_deleted): the extension's rows of them go too. A testbed's
-- histories (whose deletion lowers the counts, _testbed_period_deleted); a project's sets
-- and counts; an organization's periods (their counts with them), billing account, prices,
-- alerts, ledger and relay state (the subscription edges and summary reads included). (A project's or organization's testbeds go by their own
-- trigger: the application deletes them with it, its foreign keys see to that.)
-- Locks: the rows it deletes.
BEGIN
    IF p_ids IS NULL THEN
        RETURN;
    END IF;
    CASE p_role
        WHEN 'testbed' THEN
            DELETE FROM active_series._testbed_period AS t WHERE t.testbed_id = ANY(p_ids);
        WHEN 'project' THEN
            DELETE FROM active_series._period_usage AS u WHERE u.project_id = ANY(p_ids);
            DELETE FROM active_series._shape AS s WHERE s.project_id = ANY(p_ids);
        WHEN 'organization' THEN
            DELETE FROM active_series._period AS p WHERE p.organization_id = ANY(p_ids);
            DELETE FROM active_series.billing_account AS b WHERE b.organization_id = ANY(p_ids);
            DELETE FROM active_series._price AS p WHERE p.organization_id = ANY(p_ids);
            DELETE FROM active_series._alert AS a WHERE a.organization_id = ANY(p_ids);
            DELETE FROM active_series._alert_threshold AS a WHERE a.organization_id = ANY(p_ids);
            DELETE FROM active_series._period_watch AS w WHERE w.organization_id = ANY(p_ids);
            DELETE FROM active_series._ledger AS l WHERE l.organization_id = ANY(p_ids);
            DELETE FROM active_series._relay_state AS r WHERE r.organization_id = ANY(p_ids);
            DELETE FROM active_series._relay_subscription AS r WHERE r.organization_id = ANY(p_ids);
            DELETE FROM active_series._relay_confirmation AS r WHERE r.organization_id = ANY(p_ids);
    END CASE;
END;
$$;
COMMENT ON FUNCTION active_series._owners_deleted(text, bigint[]) IS
'Internal: the extension''s rows of deleted organizations, projects or testbeds go with them.';

-- ================================================================ the relay's period state, in a table of its own
-- ---------------------------------------------------------------- sql/tables/relay_period.sql
CREATE TABLE active_series._relay_period (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    closed_at timestamptz,
    finalized_at timestamptz,
    billed_value bigint,
    drift_since timestamptz,
    PRIMARY KEY (organization_id, period_start),
    -- the relay's row goes with its period: removed when set_billing_period merges the
    -- period into another or drops it, kept (same start) when it is split or its end moves
    FOREIGN KEY (organization_id, period_start)
    REFERENCES active_series._period (organization_id, period_start)
    ON DELETE CASCADE ON UPDATE CASCADE,
    CHECK (finalized_at IS NOT NULL OR (billed_value IS NULL AND drift_since IS NULL))
);
COMMENT ON TABLE active_series._relay_period IS
'Relay bookkeeping per recorded billing period (_period): when it was closed and finalized, what Stripe billed for it and since when its usage differs. Written only by the relay''s rule functions (_relay_close_period, _relay_finalize_period, _relay_finalize_unbilled, _relay_note_drift); a period without a row is neither closed nor finalized.';
COMMENT ON COLUMN active_series._relay_period.closed_at IS
'When the relay posted the period''s final value (its end plus the worker''s --grace); changes are still posted after it, until finalized_at.';
COMMENT ON COLUMN active_series._relay_period.finalized_at IS
'When the relay stopped posting the period (its end plus the worker''s --invoice-grace: Stripe has finalized the invoice); later differences show in billing_drift.';
COMMENT ON COLUMN active_series._relay_period.billed_value IS
'The value Stripe held for the period when it was finalized (NULL: the organization was not billed then).';
COMMENT ON COLUMN active_series._relay_period.drift_since IS
'Since when period_usage differs from billed_value (set by the relay at finalization or when it sees a later change).';
-- what the relay recorded in the columns of _period moves to its own rows
INSERT INTO active_series._relay_period (
    organization_id, period_start, closed_at, finalized_at, billed_value, drift_since
)
SELECT
    p.organization_id,
    p.period_start,
    p.closed_at,
    p.finalized_at,
    p.billed_value,
    p.drift_since
FROM active_series._period AS p
WHERE
    p.closed_at IS NOT NULL OR p.finalized_at IS NOT NULL
    OR p.billed_value IS NOT NULL OR p.drift_since IS NOT NULL;
-- ---------------------------------------------------------------- sql/views/billing_drift.sql
CREATE OR REPLACE VIEW active_series.billing_drift AS
WITH finalized AS (
    SELECT
        p.organization_id,
        p.period_start,
        p.period_end,
        r.billed_value,
        coalesce(r.drift_since, r.finalized_at) AS since,
        (
            SELECT coalesce(sum(u.series_count), 0)::bigint
            FROM active_series._billed_usage AS u
            WHERE u.organization_id = p.organization_id AND u.period_start = p.period_start
        ) AS period_usage
    FROM active_series._relay_period AS r
    INNER JOIN active_series._period AS p
        ON r.organization_id = p.organization_id AND r.period_start = p.period_start
    WHERE r.finalized_at IS NOT NULL AND r.billed_value IS NOT NULL
)

SELECT
    f.organization_id,
    f.period_start,
    f.period_end,
    f.billed_value AS billed,
    f.period_usage,
    f.period_usage - f.billed_value AS difference,
    f.since
FROM finalized AS f
WHERE f.period_usage <> f.billed_value;
COMMENT ON VIEW active_series.billing_drift IS
'Finalized billing periods (their invoice grace is over: Stripe bills what it held then) whose exact usage now differs from what was billed: the difference to credit or charge by hand, and since when it exists.';
-- ---------------------------------------------------------------- sql/views/relay_periods.sql
CREATE OR REPLACE VIEW active_series.relay_periods AS
SELECT
    b.organization_id,
    b.stripe_customer_id,
    p.period_start,
    p.period_end,
    rp.closed_at,
    u.period_usage,
    h.value AS stripe_value,
    h.status AS stripe_value_status,
    coalesce(h.value, 0) = u.period_usage AND coalesce(h.status, 'sent') = 'sent'
    AND (
        h.value IS NULL
        OR coalesce(
            rc.event_timestamp = h.event_timestamp AND rc.stripe_value = rc.ledger_value, FALSE
        )
    )
        AS in_sync,
    coalesce(
        h.value = u.period_usage AND h.status = 'sent'
        AND rc.event_timestamp IS DISTINCT FROM h.event_timestamp,
        FALSE
    ) AS confirming,
    rc.stripe_value AS stripe_summary,
    rc.read_at AS stripe_summary_at
FROM active_series.billing_account AS b
INNER JOIN active_series._period AS p ON b.organization_id = p.organization_id
CROSS JOIN
    LATERAL (
        SELECT coalesce(sum(bu.series_count), 0)::bigint AS period_usage
        FROM active_series._billed_usage AS bu
        WHERE bu.organization_id = b.organization_id AND bu.period_start = p.period_start
    ) AS u
LEFT JOIN LATERAL active_series._relay_held(
    b.stripe_customer_id, p.period_start, p.period_end
) AS h ON TRUE
LEFT JOIN active_series._relay_confirmation AS rc
    ON p.organization_id = rc.organization_id AND p.period_start = rc.period_start
LEFT JOIN active_series._relay_period AS rp
    ON p.organization_id = rp.organization_id AND p.period_start = rp.period_start
WHERE b.stripe_customer_id IS NOT NULL;
COMMENT ON VIEW active_series.relay_periods IS
'Per organization with a Stripe customer and recorded billing period: the exact usage, the value Stripe holds for that period per the ledger, whether they agree and Stripe''s event summary confirmed it (in_sync; confirming: not yet read), what the summary held when last read, and when the period was closed.';
-- ---------------------------------------------------------------- sql/functions/_relay_work.sql
CREATE OR REPLACE FUNCTION active_series._relay_work(
    p_grace interval, p_invoice_grace interval
)
RETURNS TABLE (organization_id bigint)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The organizations the relay has work for now: outbox rows, a pending ledger row
-- (a post whose outcome is unknown), an unclosed period whose end plus p_grace has
-- passed, an unfinalized one whose end plus p_invoice_grace has, or a period whose
-- Stripe event summary is due to be read (_relay_confirmation); not parked, and
-- not backing off. Drops outbox rows of organizations that no longer exist and creates
-- missing _relay_state rows (ON CONFLICT DO NOTHING: never waits for a worker holding
-- one). Locks nothing beyond the rows it writes.
DECLARE
    v_candidates bigint[];
BEGIN
    DELETE FROM active_series._outbox AS x
    WHERE NOT EXISTS (
        SELECT FROM active_series.organization AS o WHERE o.id = x.organization_id
    );

    v_candidates := ARRAY(
        SELECT x.organization_id FROM active_series._outbox AS x
        UNION
        SELECT l.organization_id FROM active_series._ledger AS l WHERE l.status = 'pending'
        UNION
        SELECT p.organization_id FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE
            r.finalized_at IS NULL
            AND (
                r.closed_at IS NULL AND p.period_end + p_grace <= now()
                OR p.period_end + p_invoice_grace <= now()
            )
        UNION
        SELECT c.organization_id FROM active_series._relay_confirmation AS c
        WHERE c.due_at <= now()
    );

    INSERT INTO active_series._relay_state (organization_id)
    SELECT c.id FROM unnest(v_candidates) AS c (id)
    ON CONFLICT ON CONSTRAINT _relay_state_pkey DO NOTHING;

    RETURN QUERY
    SELECT c.organization_id
    FROM unnest(v_candidates) AS c (organization_id)
    INNER JOIN active_series._relay_state AS s ON c.organization_id = s.organization_id
    WHERE s.parked_at IS NULL AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now())
    ORDER BY s.next_attempt_at NULLS FIRST, c.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_work(interval, interval) IS
'Internal (relay): organizations with work due now (outbox rows, pending posts, periods to close after the grace or to finalize after the invoice grace, Stripe summaries to read), not parked or backing off.';
-- ---------------------------------------------------------------- sql/functions/_relay_plan.sql
CREATE OR REPLACE FUNCTION active_series._relay_plan(
    p_organization_ids bigint[],
    p_grace interval,
    p_invoice_grace interval
)
RETURNS TABLE (
    organization_id bigint,
    period_start timestamptz,
    period_end timestamptz,
    phase text,
    usage bigint,
    held_value bigint,
    held_status text,
    next_timestamp bigint,
    due_second bigint,
    first_second bigint,
    last_second bigint
)
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What the relay has to look at for each organization (claimed by the caller): every
-- unfinalized period that has begun, and the current one, oldest first, with its exact
-- usage, the value Stripe holds for it per the ledger, and the timestamp its next post
-- would carry with the second it is due (_relay_timestamp). phase: open (running), ended
-- (within the grace), closing (grace over, not yet closed), closed (final value posted,
-- corrections still billed), final (the invoice grace is over: to be finalized, never
-- posted again).
-- The rules of period_usage, _relay_window and _relay_held are written out here: one
-- statement for a whole batch rather than three function calls per period (their pinned
-- search_path keeps them from being inlined); PL/pgSQL for its cached plan (a worker
-- calls it at every claim). Writes nothing, takes no locks (VOLATILE: it reads the clock).
BEGIN
    RETURN QUERY
    WITH periods AS (
        SELECT p.organization_id, p.period_start, p.period_end, r.closed_at
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE
            p.organization_id = ANY(p_organization_ids)
            AND r.finalized_at IS NULL
            AND p.period_start <= clock_timestamp()
        UNION
        SELECT o.id, c.period_start, c.period_end, NULL::timestamptz
        FROM (
            -- (only where no recorded period contains now is _period_at called, ~20 µs
            -- each; OFFSET 0 keeps this filter ahead of the calls)
            SELECT u.id
            FROM unnest(p_organization_ids) AS u (id)
            WHERE NOT EXISTS (
                SELECT FROM active_series._period AS q
                WHERE
                    q.organization_id = u.id
                    AND q.period_start <= clock_timestamp()
                    AND q.period_end > clock_timestamp()
            )
            OFFSET 0
        ) AS o
        CROSS JOIN LATERAL active_series._period_at(o.id, clock_timestamp()) AS c
        WHERE NOT EXISTS (
            SELECT FROM active_series._period AS q
            WHERE q.organization_id = o.id AND q.period_start = c.period_start
        )
    ),

    windows AS (
        SELECT
            p.*,
            ceil(extract(EPOCH FROM p.period_start))::bigint AS first_second,
            ceil(extract(EPOCH FROM p.period_end))::bigint - 1 AS last_second
        FROM periods AS p
    )

    SELECT
        w.organization_id,
        w.period_start,
        w.period_end,
        CASE
            WHEN clock_timestamp() < w.period_end THEN 'open'
            WHEN w.period_end + p_invoice_grace <= clock_timestamp() THEN 'final'
            WHEN w.closed_at IS NOT NULL THEN 'closed'
            WHEN w.period_end + p_grace <= clock_timestamp() THEN 'closing'
            ELSE 'ended'
        END,
        (
            SELECT coalesce(sum(u.series_count), 0)::bigint
            FROM active_series._billed_usage AS u
            WHERE u.organization_id = w.organization_id AND u.period_start = w.period_start
        ),
        h.value,
        h.status,
        t.event_timestamp,
        t.due_second,
        w.first_second,
        w.last_second
    FROM windows AS w
    LEFT JOIN active_series.billing_account AS b ON w.organization_id = b.organization_id
    LEFT JOIN LATERAL (
        SELECT
            l.value,
            l.status,
            l.event_timestamp
        FROM active_series._ledger AS l
        WHERE
            l.stripe_customer_id = b.stripe_customer_id
            AND l.status <> 'failed'
            AND l.event_timestamp BETWEEN w.first_second AND w.last_second
        ORDER BY l.event_timestamp DESC
        LIMIT 1
    ) AS h ON TRUE
    CROSS JOIN LATERAL active_series._relay_timestamp(
        h.event_timestamp, w.first_second, w.last_second,
        floor(extract(EPOCH FROM clock_timestamp()))::bigint
    ) AS t
    ORDER BY w.organization_id, w.period_start;
END;
$$;
COMMENT ON FUNCTION active_series._relay_plan(bigint[], interval, interval) IS
'Internal (relay): per organization, every unfinalized period begun so far with its phase, exact usage, the value Stripe holds and the next post''s timestamp.';
-- ---------------------------------------------------------------- sql/functions/_relay_next_wakeup.sql
CREATE OR REPLACE FUNCTION active_series._relay_next_wakeup(
    p_grace interval, p_invoice_grace interval
)
RETURNS timestamptz
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- When the relay next has work that no notification will announce: the earliest retry
-- of an organization backing off, the earliest end plus grace of an unclosed period, the
-- earliest end plus invoice grace of an unfinalized one, or the earliest read of a Stripe
-- event summary (_relay_confirmation). Only future times: what is
-- due now is found by _relay_work. NULL: nothing scheduled. Takes no locks.
SELECT least(
    (
        SELECT min(s.next_attempt_at)
        FROM active_series._relay_state AS s
        WHERE s.parked_at IS NULL AND s.next_attempt_at > now()
    ),
    (
        SELECT min(p.period_end) + p_grace
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE r.closed_at IS NULL AND p.period_end + p_grace > now()
    ),
    (
        SELECT min(p.period_end) + p_invoice_grace
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS r
            ON p.organization_id = r.organization_id AND p.period_start = r.period_start
        WHERE r.finalized_at IS NULL AND p.period_end + p_invoice_grace > now()
    ),
    (
        SELECT min(c.due_at)
        FROM active_series._relay_confirmation AS c
        WHERE c.due_at > now()
    )
);
$$;
COMMENT ON FUNCTION active_series._relay_next_wakeup(interval, interval) IS
'Internal (relay): the next time the relay has scheduled work (a retry, a period to close or to finalize, a Stripe summary to read), NULL if none.';
-- ---------------------------------------------------------------- sql/tables/period.sql
-- (the CHECK on finalized_at, billed_value and drift_since goes with them; _relay_period has it)
ALTER TABLE active_series._period
DROP COLUMN closed_at,
DROP COLUMN finalized_at,
DROP COLUMN billed_value,
DROP COLUMN drift_since;
COMMENT ON TABLE active_series._period IS
'Every billing period an organization has had (with activity, or set by set_billing_period); periods of one organization never overlap. What the relay did with a period is the relay''s (_relay_period).';
-- ---------------------------------------------------------------- sql/functions/_relay_close_period.sql
CREATE FUNCTION active_series._relay_close_period(
    p_organization_id bigint,
    p_period_start timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a period is closed once its final value is posted (or cannot be) after its end
-- plus the worker's --grace; it is closed once, and a closed period's changes are still
-- posted until it is finalized. A period no longer recorded (set_billing_period merged or
-- dropped it meanwhile) is left alone.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._relay_period AS r (organization_id, period_start, closed_at)
    SELECT p.organization_id, p.period_start, clock_timestamp()
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start = p_period_start
    ON CONFLICT ON CONSTRAINT _relay_period_pkey DO UPDATE
    SET closed_at = excluded.closed_at
    WHERE r.closed_at IS NULL;
END;
$$;
COMMENT ON FUNCTION active_series._relay_close_period(bigint, timestamptz) IS
'Internal (relay): close a recorded period (its final value is posted); once.';
-- ---------------------------------------------------------------- sql/functions/_relay_finalize_period.sql
CREATE FUNCTION active_series._relay_finalize_period(
    p_organization_id bigint,
    p_period_start timestamptz,
    p_billed bigint
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: once the invoice is final (the period's end plus the worker's --invoice-grace,
-- or the subscription ended within it) the period is finalized, closed too if it was not,
-- and nothing is posted for it again. p_billed is what Stripe held for it (NULL: the
-- organization was not billed); a difference from the period's usage is drift from now on
-- (billing_drift). Once; a period no longer recorded is left alone.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._relay_period AS r (
        organization_id, period_start, closed_at, finalized_at, billed_value, drift_since
    )
    SELECT
        p.organization_id,
        p.period_start,
        clock_timestamp(),
        clock_timestamp(),
        p_billed,
        CASE
            WHEN p_billed <> active_series.period_usage(p.organization_id, p.period_start)
                THEN clock_timestamp()
        END
    FROM active_series._period AS p
    WHERE p.organization_id = p_organization_id AND p.period_start = p_period_start
    ON CONFLICT ON CONSTRAINT _relay_period_pkey DO UPDATE
    SET
        closed_at = coalesce(r.closed_at, excluded.closed_at),
        finalized_at = excluded.finalized_at,
        billed_value = excluded.billed_value,
        drift_since = excluded.drift_since
    WHERE r.finalized_at IS NULL;
END;
$$;
COMMENT ON FUNCTION active_series._relay_finalize_period(bigint, timestamptz, bigint) IS
'Internal (relay): finalize a recorded period with what Stripe billed for it (NULL: not billed); once, never posted again.';
-- ---------------------------------------------------------------- sql/functions/_relay_finalize_unbilled.sql
CREATE FUNCTION active_series._relay_finalize_unbilled(
    p_organization_id bigint,
    p_before timestamptz,
    p_after timestamptz
)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, usage bigint)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: no invoice bills a period that ended at or before p_before (a subscription's
-- start, or the end of its trial) and began at or after p_after (the end of an earlier
-- subscription, or the trial's start; NULL: no bound): each unfinalized one is finalized
-- unbilled (billed_value NULL, no drift) without a post. Returns those periods with their
-- usage.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT p.organization_id, p.period_start, p.period_end
        FROM active_series._period AS p
        LEFT JOIN active_series._relay_period AS q
            ON p.organization_id = q.organization_id AND p.period_start = q.period_start
        WHERE
            p.organization_id = p_organization_id
            AND q.finalized_at IS NULL
            AND p.period_end <= p_before
            AND p.period_start >= coalesce(p_after, '-infinity')
    ),

    done AS (
        INSERT INTO active_series._relay_period AS r (
            organization_id, period_start, closed_at, finalized_at
        )
        SELECT d.organization_id, d.period_start, clock_timestamp(), clock_timestamp()
        FROM due AS d
        ON CONFLICT ON CONSTRAINT _relay_period_pkey DO UPDATE
        SET
            closed_at = coalesce(r.closed_at, excluded.closed_at),
            finalized_at = excluded.finalized_at,
            billed_value = NULL,
            drift_since = NULL
        WHERE r.finalized_at IS NULL
        RETURNING r.organization_id, r.period_start
    )

    SELECT
        d.period_start,
        d.period_end,
        active_series.period_usage(d.organization_id, d.period_start)
    FROM done AS f
    INNER JOIN due AS d
        ON f.organization_id = d.organization_id AND f.period_start = d.period_start
    ORDER BY d.period_start;
END;
$$;
COMMENT ON FUNCTION active_series._relay_finalize_unbilled(bigint, timestamptz, timestamptz) IS
'Internal (relay): finalize unbilled, without a post, the periods no invoice bills (ended by a subscription''s start or its trial''s end, begun after the previous bound); returns them with their usage.';
-- ---------------------------------------------------------------- sql/functions/_relay_note_drift.sql
CREATE FUNCTION active_series._relay_note_drift(p_organization_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a change (an outbox row) to a billed, finalized period is not posted; the
-- period drifts from the first change after which its usage differs from what was billed
-- (drift_since, kept while it differs), and stops drifting when its usage is back to it.
-- Called by the claim before it deletes the outbox rows it relayed, for its organizations.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the relay's period state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_period AS r
    SET drift_since = CASE
        WHEN active_series.period_usage(r.organization_id, r.period_start) <> r.billed_value
            THEN coalesce(r.drift_since, x.first_change)
    END
    FROM (
        SELECT o.organization_id, o.period_start, min(o.created) AS first_change
        FROM active_series._outbox AS o
        WHERE o.organization_id = ANY(p_organization_ids)
        GROUP BY o.organization_id, o.period_start
    ) AS x
    WHERE
        r.organization_id = x.organization_id AND r.period_start = x.period_start
        AND r.finalized_at IS NOT NULL AND r.billed_value IS NOT NULL;
END;
$$;
COMMENT ON FUNCTION active_series._relay_note_drift(bigint[]) IS
'Internal (relay): note since when each finalized, billed period of the organizations given differs from what was billed, after changes in the outbox.';
-- ---------------------------------------------------------------- sql/grants.sql
-- (the worker's UPDATE of _period's columns went with them)
GRANT SELECT ON active_series._relay_period TO active_series_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON active_series._relay_period TO active_series_admin;
REVOKE EXECUTE ON FUNCTION
active_series._relay_close_period(bigint, timestamptz),
active_series._relay_finalize_period(bigint, timestamptz, bigint),
active_series._relay_finalize_unbilled(bigint, timestamptz, timestamptz),
active_series._relay_note_drift(bigint[])
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION
active_series._relay_close_period(bigint, timestamptz),
active_series._relay_finalize_period(bigint, timestamptz, bigint),
active_series._relay_finalize_unbilled(bigint, timestamptz, timestamptz),
active_series._relay_note_drift(bigint[])
TO active_series_worker, active_series_admin;
-- ---------------------------------------------------------------- sql/config_dump.sql
-- the relay's period state (sql/tables/relay_period.sql)
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        PERFORM pg_catalog.pg_extension_config_dump('active_series._relay_period', '');
    END IF;
END;
$$;

-- the single-report first sighting: the shape and the period probe in one statement; the
-- outbox rows written in the same statement as the counts
CREATE OR REPLACE FUNCTION active_series._record_activity(
    p_report_benchmark_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Records metrics, given as (report_benchmark, measure) pairs (the ingest trigger passes a
-- whole transaction's at commit, backfill a batch of reports'), in the history and the
-- per-period counts: each report_benchmark is looked up once (its report, project and
-- variant), the pairs become one activity per (testbed, report.created): its series, in
-- the billing period containing that time (the words: docs/DESIGN-NOTES.md), and
-- _record_groups writes them. A variant_id that is NULL, or names the benchmark's empty
-- variant, is variant 0.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
    v_group active_series._shape_group;
    v_shape_id bigint;
    v_series integer;
    v_known boolean;
    v_organization_id bigint;
    v_project_id bigint;
    v_testbed_id bigint;
    v_created timestamptz;
    v_benchmark_id bigint;
    v_variant_id bigint;
    v_period_start timestamptz;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its activity, looked up directly, in
        -- plain statements (a function in the join would be a table function: a tuplestore
        -- per call)
        SELECT
            p.organization_id, r.project_id, r.testbed_id, r.created, rb.benchmark_id,
            CASE
                WHEN rb.variant_id IS NULL THEN 0
                ELSE active_series._variant_key(rb.variant_id)
            END
        INTO v_organization_id, v_project_id, v_testbed_id, v_created, v_benchmark_id,
            v_variant_id
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE rb.id = p_report_benchmark_ids[1];
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- its period: _period_for's probe of the recorded one written out (under the
        -- organization's period lock, as there), the call only to record a new one
        PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(v_organization_id));
        SELECT l.period_start INTO v_period_start
        FROM (
            SELECT p.period_start, p.period_end
            FROM active_series._period AS p
            WHERE p.organization_id = v_organization_id AND p.period_start <= v_created
            ORDER BY p.period_start DESC
            LIMIT 1
        ) AS l
        WHERE l.period_end > v_created;
        IF v_period_start IS NULL THEN
            v_period_start := (
                active_series._period_for(v_organization_id, v_created)
            ).period_start;
        END IF;
        v_groups := ARRAY[
            active_series._shape_group(
                p_organization_id => v_organization_id,
                p_project_id => v_project_id,
                p_testbed_id => v_testbed_id,
                p_period_start => v_period_start,
                p_first_seen => v_created,
                p_last_seen => v_created,
                p_benchmark_ids => ARRAY[v_benchmark_id],
                p_variant_ids => ARRAY[v_variant_id],
                p_measure_ids => p_measure_ids
            )
        ];
    ELSE
        -- (each report_benchmark, then each report, looked up once; OFFSET 0 keeps each
        -- LATERAL subquery a per-row index lookup, whatever the statistics said when this plan
        -- was cached)
        v_groups := ARRAY(
            WITH rbs AS MATERIALIZED (
                SELECT
                    rb.id, rb.report_id, rb.benchmark_id,
                    -- (without a variant_id, as most reports send, no call)
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END AS variant_id
                FROM active_series.report_benchmark AS rb
                WHERE rb.id = ANY(p_report_benchmark_ids)
            ),
            -- each report's series, sorted (one sort on four keys; the series come distinct
            -- and in shape order, and each report's arrays are aggregated in that order; an
            -- order lost would only store a shape twice)
            sets AS MATERIALIZED (
                SELECT
                    s.report_id, array_agg(s.benchmark_id) AS benchmark_ids,
                    array_agg(s.variant_id) AS variant_ids, array_agg(s.measure_id) AS measure_ids
                FROM (
                    SELECT DISTINCT b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                    INNER JOIN rbs AS b ON b.id = x.id
                    ORDER BY b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                ) AS s
                GROUP BY s.report_id
            ),
            -- (each report looked up once; OFFSET 0 keeps the LATERAL subquery a per-row
            -- index lookup, whatever the statistics said when this plan was cached)
            reports AS MATERIALIZED (
                SELECT d.benchmark_ids, d.variant_ids, d.measure_ids, k.*
                FROM sets AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM reports AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            ),
            keyed AS MATERIALIZED (
                SELECT
                    s.*, t.period_start,
                    count(*) OVER (PARTITION BY s.testbed_id, s.created) AS reports
                FROM reports AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
            )
            -- a testbed's one report at a time: its series as they are
            SELECT active_series._shape_group(
                p_organization_id => k.organization_id,
                p_project_id => k.project_id,
                p_testbed_id => k.testbed_id,
                p_period_start => k.period_start,
                p_first_seen => k.created,
                p_last_seen => k.created,
                p_benchmark_ids => k.benchmark_ids,
                p_variant_ids => k.variant_ids,
                p_measure_ids => k.measure_ids
            )
            FROM keyed AS k
            WHERE k.reports = 1
            UNION ALL
            -- several reports of one testbed in one transaction (one time): their series merged
            SELECT active_series._shape_group(
                p_organization_id => m.organization_id,
                p_project_id => m.project_id,
                p_testbed_id => m.testbed_id,
                p_period_start => m.period_start,
                p_first_seen => m.created,
                p_last_seen => m.created,
                p_benchmark_ids => array_agg(m.b),
                p_variant_ids => array_agg(m.v),
                p_measure_ids => array_agg(m.m)
            )
            FROM (
                SELECT DISTINCT
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
                FROM keyed AS k
                CROSS JOIN LATERAL unnest(k.benchmark_ids, k.variant_ids, k.measure_ids)
                    AS e (b, v, m)
                WHERE k.reports > 1
                ORDER BY
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
            ) AS m
            GROUP BY m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same shape as before in the period, later
    -- than before: one HOT update of that sighting per testbed (_widen). Anything else (a
    -- shape or a period new to the testbed, older activity) goes on below, which finds
    -- what these updates already did and leaves it.
    IF cardinality(v_groups) = 1 THEN
        -- (one testbed at one time, nearly every transaction: the same steps written
        -- out, without the calls: _lock_testbeds, then _widen of the row of the stored
        -- shape (_find_shape) in one statement; only when that updated nothing, the shape
        -- and whether the testbed has history in the period, in one statement)
        v_group := v_groups[1];
        PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), hashint8(v_group.testbed_id));
        UPDATE active_series._shape_seen AS s
        SET first_seen = least(s.first_seen, v_group.first_seen),
            last_seen = greatest(s.last_seen, v_group.last_seen)
        FROM (
            SELECT h.id
            FROM active_series._shape AS h
            WHERE h.project_id = v_group.project_id
                AND h.digest = hash_array_extended(
                    v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
                )
                AND h.benchmark_ids = v_group.benchmark_ids
                AND h.variant_ids = v_group.variant_ids
                AND h.measure_ids = v_group.measure_ids
            LIMIT 1
        ) AS h
        WHERE s.testbed_id = v_group.testbed_id
            AND s.period_start = v_group.period_start
            AND s.shape_id = h.id
            AND (v_group.first_seen < s.first_seen OR v_group.last_seen > s.last_seen);
        IF FOUND THEN
            RETURN;
        END IF;
        -- the stored shape, and whether the testbed has history in the period (one
        -- statement: a first report asks both)
        SELECT
            s.id, s.series,
            EXISTS (
                SELECT
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = v_group.testbed_id AND p.period_start = v_group.period_start
            )
        INTO v_shape_id, v_series, v_known
        FROM active_series._shape AS s
        WHERE s.project_id = v_group.project_id
            AND s.digest = hash_array_extended(
                v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
            )
            AND s.benchmark_ids = v_group.benchmark_ids
            AND s.variant_ids = v_group.variant_ids
            AND s.measure_ids = v_group.measure_ids
        LIMIT 1;
        v_group.shape_id := v_shape_id;
        -- (the first report of the testbed in the period, of a stored shape, as below for
        -- several testbeds, written for one)
        IF v_shape_id IS NOT NULL AND NOT v_known THEN
            WITH sets AS (
                INSERT INTO active_series._testbed_period (
                    testbed_id, period_start, organization_id, project_id, shape_id
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_group.organization_id,
                    v_group.project_id, v_shape_id
                )
            ),
            seen AS (
                INSERT INTO active_series._shape_seen (
                    testbed_id, period_start, shape_id, first_seen, last_seen
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_shape_id, v_group.first_seen,
                    v_group.last_seen
                )
            ),
            counted AS (
                INSERT INTO active_series._period_usage AS u (
                    organization_id, period_start, project_id, series_count
                )
                VALUES (v_group.organization_id, v_group.period_start, v_group.project_id, v_series)
                ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
                SET series_count = u.series_count + excluded.series_count
            )
            -- (the outbox row of _changed, in the same statement)
            INSERT INTO active_series._outbox (organization_id, period_start, reason)
            VALUES (v_group.organization_id, v_group.period_start, 'ingest');
            RETURN;
        END IF;
        v_groups := ARRAY[v_group];
    ELSE
        PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
        v_groups := ARRAY(
            SELECT active_series._shape_group(
                p_organization_id => g.organization_id,
                p_project_id => g.project_id,
                p_testbed_id => g.testbed_id,
                p_period_start => g.period_start,
                p_first_seen => g.first_seen,
                p_last_seen => g.last_seen,
                p_benchmark_ids => g.benchmark_ids,
                p_variant_ids => g.variant_ids,
                p_measure_ids => g.measure_ids,
                p_shape_id => active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
            FROM unnest(v_groups) AS g
        );
        IF active_series._widen(v_groups) = cardinality(v_groups) THEN
            RETURN;
        END IF;
    END IF;

    -- The first report of a testbed in a period (a new testbed, or the first report after
    -- the period changed) of a shape already stored: the shape is the testbed's period
    -- shape, so one statement writes what _record_groups would, in the same key order: the
    -- period shapes, the sightings, the counts grown by the shapes' sizes (_period_usage,
    -- key order) and the outbox rows. It holds when every activity is of a stored shape, no
    -- testbed has history in its period (under the history locks taken above: nothing else
    -- writes it meanwhile; so _widen did nothing) and no (testbed, period) has two
    -- activities. Else the general path.
    IF NOT EXISTS (
        SELECT
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
            OR (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
    )
    AND (
        SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(v_groups) AS g
    ) = cardinality(v_groups) THEN
        WITH g AS MATERIALIZED (
            SELECT
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.shape_id, s.series
            FROM unnest(v_groups) AS g
            CROSS JOIN LATERAL (
                SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
            ) AS s
        ),
        sets AS (
            INSERT INTO active_series._testbed_period (
                testbed_id, period_start, organization_id, project_id, shape_id
            )
            SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
            FROM g
            ORDER BY g.testbed_id, g.period_start
        ),
        seen AS (
            INSERT INTO active_series._shape_seen (
                testbed_id, period_start, shape_id, first_seen, last_seen
            )
            SELECT g.testbed_id, g.period_start, g.shape_id, g.first_seen, g.last_seen
            FROM g
            ORDER BY g.testbed_id, g.period_start, g.shape_id
        ),
        counted AS (
            INSERT INTO active_series._period_usage AS u (
                organization_id, period_start, project_id, series_count
            )
            SELECT g.organization_id, g.period_start, g.project_id, sum(g.series)
            FROM g
            GROUP BY g.organization_id, g.period_start, g.project_id
            ORDER BY g.organization_id, g.period_start, g.project_id
            ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
            SET series_count = u.series_count + excluded.series_count
        )
        -- (the outbox rows of _changed, one per (organization, period), in the same
        -- statement)
        INSERT INTO active_series._outbox (organization_id, period_start, reason)
        SELECT DISTINCT g.organization_id, g.period_start, 'ingest'
        FROM g
        ORDER BY g.organization_id, g.period_start;
        RETURN;
    END IF;
    PERFORM active_series._record_groups(v_groups);
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';

-- ================================================================ the cap and alert check in the recorder
-- (the row triggers on _period_usage go: the recorder checks the counts it raised)
DROP TRIGGER period_usage_inserted ON active_series._period_usage;
DROP TRIGGER period_usage_grew ON active_series._period_usage;
DROP FUNCTION active_series._period_usage_grew();

CREATE FUNCTION active_series._check_rises(p_groups active_series._shape_group[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The recorder grew the counts of p_groups' (organization, period, project)s: check the cap
-- and the alerts (_check_usage) of each (organization, period), in key order (so the watch
-- rows lock in key order), when the rise comes from the ingest path, i.e. from within the
-- commit-time trigger (trigger depth above 0): re-bucketing by set_billing_period and CALL
-- backfill record from a top-level statement and are administrative (they never refuse and
-- never alert). A rise in a soft-deleted project changes no billed count. Most
-- organizations have neither a cap nor a threshold nor a bounded price tier: the same query
-- answers that, without calling _check_usage (whose threshold list is a SQL function,
-- planned at each call); a tier bound that set_alert disabled still calls it, it decides
-- exactly. The rises of a re-recording after a hard delete (_rerecording) only undo its
-- falls. (_record_activity writes the same test out for one group.)
BEGIN
    IF pg_trigger_depth() < 1 THEN
        RETURN;
    END IF;
    PERFORM active_series._check_usage(c.organization_id, c.period_start)
    FROM (
        SELECT DISTINCT g.organization_id, g.period_start
        FROM unnest(p_groups) AS g
        WHERE EXISTS (
            SELECT FROM active_series.project AS p
            WHERE p.id = g.project_id AND p.deleted_at IS NULL
        )
        AND (
            EXISTS (
                SELECT FROM active_series.billing_account AS b
                WHERE b.organization_id = g.organization_id AND b.series_cap IS NOT NULL
            )
            OR EXISTS (
                SELECT FROM active_series._alert_threshold AS a
                WHERE a.organization_id = g.organization_id AND a.enabled
            )
            OR EXISTS (
                SELECT FROM active_series._price_tier AS t
                WHERE t.organization_id = g.organization_id AND t.up_to IS NOT NULL
            )
        )
        ORDER BY g.organization_id, g.period_start
    ) AS c
    WHERE NOT EXISTS (
        SELECT FROM active_series._rerecording AS r WHERE r.txid = txid_current()
    );
END;
$$;
COMMENT ON FUNCTION active_series._check_rises(active_series._shape_group[]) IS
'Internal: an ingest commit raised these periods'' counts; enforce the series cap and write alerts.';
REVOKE EXECUTE ON FUNCTION active_series._check_rises(active_series._shape_group[])
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series._check_rises(active_series._shape_group[])
TO active_series_admin;

CREATE OR REPLACE FUNCTION active_series._record_groups(
    p_groups active_series._shape_group[],
    p_reason text DEFAULT 'ingest'
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- (as _record_activity: generic plans on index paths, whatever the statistics were)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Writes activity into the history (the words: docs/DESIGN-NOTES.md): each element of
-- p_groups says that a testbed reported these series within one (recorded) period between
-- first_seen and last_seen. Row writes follow what changed, never the number of series:
-- * activity of a shape the testbed already has a sighting of in the period widens that
--   sighting (its _shape_seen row's first_seen/last_seen: one HOT update; nothing when
--   already inside);
-- * activity the history already holds (a late commit, backfill over recorded data) writes
--   nothing;
-- * a shape new to the testbed in the period adds a sighting; when it holds series the
--   testbed had not reported in the period, the period shape (_testbed_period, the union of
--   the sightings) is replaced, and _period_usage grows by the difference;
-- * the shapes themselves are stored once (_shape) and shared by testbeds and periods.
-- Then an outbox row for each (organization, period) whose count changed.
-- Locks, in this order, so that concurrent callers cannot deadlock: the testbeds' history
-- locks (_lock_testbeds: every write to a testbed's history happens under it); the
-- empty variants and shapes it creates (_resolve_shapes; nobody waits for a shape); last,
-- the _period_usage rows in key order, and then the _period_watch rows (_check_rises) in
-- key order. The caller holds the organizations' period locks.
DECLARE
    v_groups active_series._shape_group [];
    v_todo integer;
    v_new active_series._shape_group [];
    v_unions active_series._shape_group [];
BEGIN
    PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(p_groups) AS g));

    -- one group per (testbed, period, shape), in key order
    SELECT
        array_agg(
            active_series._shape_group(
                p_organization_id => a.organization_id,
                p_project_id => a.project_id,
                p_testbed_id => a.testbed_id,
                p_period_start => a.period_start,
                p_first_seen => a.first_seen,
                p_last_seen => a.last_seen,
                p_shape_id => a.shape_id
            )
            ORDER BY a.testbed_id, a.period_start, a.shape_id
        ),
        count(*)
    INTO v_groups, v_todo
    FROM (
        SELECT
            g.testbed_id, g.period_start, g.shape_id,
            min(g.organization_id) AS organization_id, min(g.project_id) AS project_id,
            min(g.first_seen) AS first_seen, max(g.last_seen) AS last_seen
        FROM unnest(active_series._resolve_shapes(ARRAY(
            SELECT g FROM unnest(p_groups) AS g WHERE NOT active_series._covered(g)
        ))) AS g
        GROUP BY g.testbed_id, g.period_start, g.shape_id
    ) AS a;
    IF v_todo = 0 THEN
        RETURN;
    END IF;

    -- Shapes the testbed has a sighting of in the period: widen it. The others are new.
    PERFORM active_series._widen(v_groups);
    SELECT array_agg(g) INTO v_new
    FROM unnest(v_groups) AS g
    WHERE NOT coalesce((
        SELECT true
        FROM active_series._shape_seen AS s
        WHERE s.testbed_id = g.testbed_id
            AND s.period_start = g.period_start
            AND s.shape_id = g.shape_id
        LIMIT 1
    ), false);
    IF v_new IS NULL THEN
        RETURN;
    END IF;

    -- The period shape with the new sightings' shapes added, where that adds series: the new
    -- shape itself when the testbed had none (no unfolding), else the union unfolded
    WITH t AS (
        SELECT
            n.testbed_id, n.period_start,
            min(n.organization_id) AS organization_id, min(n.project_id) AS project_id,
            array_agg(DISTINCT n.shape_id) AS shape_ids,
            (
                SELECT p.shape_id FROM active_series._testbed_period AS p
                WHERE p.testbed_id = n.testbed_id AND p.period_start = n.period_start
            ) AS old_shape_id
        FROM unnest(v_new) AS n
        GROUP BY n.testbed_id, n.period_start
    )
    SELECT array_agg(
        active_series._shape_group(
            p_organization_id => t.organization_id,
            p_project_id => t.project_id,
            p_testbed_id => t.testbed_id,
            p_period_start => t.period_start,
            p_benchmark_ids => e.benchmark_ids,
            p_variant_ids => e.variant_ids,
            p_measure_ids => e.measure_ids,
            p_shape_id => CASE
                WHEN t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1
                    THEN t.shape_ids[1]
            END
        )
        ORDER BY t.testbed_id, t.period_start
    )
    INTO v_unions
    FROM t
    LEFT JOIN LATERAL (
        SELECT
            array_agg(x.b ORDER BY x.b, x.v, x.m) AS benchmark_ids,
            array_agg(x.v ORDER BY x.b, x.v, x.m) AS variant_ids,
            array_agg(x.m ORDER BY x.b, x.v, x.m) AS measure_ids
        FROM (
            SELECT e.b, e.v, e.m
            FROM active_series._shape AS s
            CROSS JOIN LATERAL unnest(s.benchmark_ids, s.variant_ids, s.measure_ids)
                AS e (b, v, m)
            WHERE s.id = ANY(t.shape_ids || t.old_shape_id)
            GROUP BY e.b, e.v, e.m
        ) AS x
    ) AS e ON NOT (t.old_shape_id IS NULL AND cardinality(t.shape_ids) = 1)
    WHERE t.old_shape_id IS NULL
        OR cardinality(e.measure_ids) > (
            SELECT o.series FROM active_series._shape AS o WHERE o.id = t.old_shape_id
        );
    IF v_unions IS NULL THEN
        -- (every new shape was inside the period shape: no count changes)
        INSERT INTO active_series._shape_seen AS s (
            testbed_id, period_start, shape_id, first_seen, last_seen
        )
        SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
        FROM unnest(v_new) AS n
        ORDER BY n.testbed_id, n.period_start, n.shape_id;
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM unnest(v_unions) AS u WHERE u.shape_id IS NULL) THEN
        v_unions := active_series._resolve_shapes(v_unions);
    END IF;

    -- the period shapes, and the counts by what they gained
    WITH old AS (
        SELECT
            u.*,
            (SELECT s.series FROM active_series._shape AS s WHERE s.id = u.shape_id) AS series,
            coalesce((
                SELECT s.series FROM active_series._shape AS s
                WHERE s.id = (
                    SELECT p.shape_id FROM active_series._testbed_period AS p
                    WHERE p.testbed_id = u.testbed_id AND p.period_start = u.period_start
                )
            ), 0) AS old_series
        FROM unnest(v_unions) AS u
    ),
    written AS (
        INSERT INTO active_series._testbed_period AS p (
            testbed_id, period_start, organization_id, project_id, shape_id
        )
        SELECT o.testbed_id, o.period_start, o.organization_id, o.project_id, o.shape_id
        FROM old AS o
        ORDER BY o.testbed_id, o.period_start
        ON CONFLICT (testbed_id, period_start) DO UPDATE SET shape_id = excluded.shape_id
    )
    INSERT INTO active_series._period_usage AS u (
        organization_id, period_start, project_id, series_count
    )
    SELECT o.organization_id, o.period_start, o.project_id, sum(o.series - o.old_series)
    FROM old AS o
    GROUP BY o.organization_id, o.period_start, o.project_id
    ORDER BY o.organization_id, o.period_start, o.project_id
    ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
    SET series_count = u.series_count + excluded.series_count;
    -- (each of those counts rose: the cap and the alerts)
    PERFORM active_series._check_rises(v_unions);

    INSERT INTO active_series._shape_seen AS s (
        testbed_id, period_start, shape_id, first_seen, last_seen
    )
    SELECT n.testbed_id, n.period_start, n.shape_id, n.first_seen, n.last_seen
    FROM unnest(v_new) AS n
    ORDER BY n.testbed_id, n.period_start, n.shape_id;

    PERFORM active_series._changed(c.organization_id, c.period_start, p_reason)
    FROM (
        SELECT DISTINCT u.organization_id, u.period_start
        FROM unnest(v_unions) AS u
        ORDER BY u.organization_id, u.period_start
    ) AS c;
END;
$$;
COMMENT ON FUNCTION active_series._record_groups(active_series._shape_group[], text) IS
'Internal: write sets of series reported by testbeds within periods into the history and the per-period counts (writes follow what changed, not the number of series).';

CREATE OR REPLACE FUNCTION active_series._record_activity(
    p_report_benchmark_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Records metrics, given as (report_benchmark, measure) pairs (the ingest trigger passes a
-- whole transaction's at commit, backfill a batch of reports'), in the history and the
-- per-period counts: each report_benchmark is looked up once (its report, project and
-- variant), the pairs become one activity per (testbed, report.created): its series, in
-- the billing period containing that time (the words: docs/DESIGN-NOTES.md), and
-- _record_groups writes them. A variant_id that is NULL, or names the benchmark's empty
-- variant, is variant 0.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
    v_group active_series._shape_group;
    v_shape_id bigint;
    v_series integer;
    v_known boolean;
    v_organization_id bigint;
    v_project_id bigint;
    v_testbed_id bigint;
    v_created timestamptz;
    v_benchmark_id bigint;
    v_variant_id bigint;
    v_period_start timestamptz;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its activity, looked up directly, in
        -- plain statements (a function in the join would be a table function: a tuplestore
        -- per call)
        SELECT
            p.organization_id, r.project_id, r.testbed_id, r.created, rb.benchmark_id,
            CASE
                WHEN rb.variant_id IS NULL THEN 0
                ELSE active_series._variant_key(rb.variant_id)
            END
        INTO v_organization_id, v_project_id, v_testbed_id, v_created, v_benchmark_id,
            v_variant_id
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE rb.id = p_report_benchmark_ids[1];
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- its period: _period_for's probe of the recorded one written out (under the
        -- organization's period lock, as there), the call only to record a new one
        PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(v_organization_id));
        SELECT l.period_start INTO v_period_start
        FROM (
            SELECT p.period_start, p.period_end
            FROM active_series._period AS p
            WHERE p.organization_id = v_organization_id AND p.period_start <= v_created
            ORDER BY p.period_start DESC
            LIMIT 1
        ) AS l
        WHERE l.period_end > v_created;
        IF v_period_start IS NULL THEN
            v_period_start := (
                active_series._period_for(v_organization_id, v_created)
            ).period_start;
        END IF;
        v_groups := ARRAY[
            active_series._shape_group(
                p_organization_id => v_organization_id,
                p_project_id => v_project_id,
                p_testbed_id => v_testbed_id,
                p_period_start => v_period_start,
                p_first_seen => v_created,
                p_last_seen => v_created,
                p_benchmark_ids => ARRAY[v_benchmark_id],
                p_variant_ids => ARRAY[v_variant_id],
                p_measure_ids => p_measure_ids
            )
        ];
    ELSE
        -- (each report_benchmark, then each report, looked up once; OFFSET 0 keeps each
        -- LATERAL subquery a per-row index lookup, whatever the statistics said when this plan
        -- was cached)
        v_groups := ARRAY(
            WITH rbs AS MATERIALIZED (
                SELECT
                    rb.id, rb.report_id, rb.benchmark_id,
                    -- (without a variant_id, as most reports send, no call)
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END AS variant_id
                FROM active_series.report_benchmark AS rb
                WHERE rb.id = ANY(p_report_benchmark_ids)
            ),
            -- each report's series, sorted (one sort on four keys; the series come distinct
            -- and in shape order, and each report's arrays are aggregated in that order; an
            -- order lost would only store a shape twice)
            sets AS MATERIALIZED (
                SELECT
                    s.report_id, array_agg(s.benchmark_id) AS benchmark_ids,
                    array_agg(s.variant_id) AS variant_ids, array_agg(s.measure_id) AS measure_ids
                FROM (
                    SELECT DISTINCT b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                    INNER JOIN rbs AS b ON b.id = x.id
                    ORDER BY b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                ) AS s
                GROUP BY s.report_id
            ),
            -- (each report looked up once; OFFSET 0 keeps the LATERAL subquery a per-row
            -- index lookup, whatever the statistics said when this plan was cached)
            reports AS MATERIALIZED (
                SELECT d.benchmark_ids, d.variant_ids, d.measure_ids, k.*
                FROM sets AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM reports AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            ),
            keyed AS MATERIALIZED (
                SELECT
                    s.*, t.period_start,
                    count(*) OVER (PARTITION BY s.testbed_id, s.created) AS reports
                FROM reports AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
            )
            -- a testbed's one report at a time: its series as they are
            SELECT active_series._shape_group(
                p_organization_id => k.organization_id,
                p_project_id => k.project_id,
                p_testbed_id => k.testbed_id,
                p_period_start => k.period_start,
                p_first_seen => k.created,
                p_last_seen => k.created,
                p_benchmark_ids => k.benchmark_ids,
                p_variant_ids => k.variant_ids,
                p_measure_ids => k.measure_ids
            )
            FROM keyed AS k
            WHERE k.reports = 1
            UNION ALL
            -- several reports of one testbed in one transaction (one time): their series merged
            SELECT active_series._shape_group(
                p_organization_id => m.organization_id,
                p_project_id => m.project_id,
                p_testbed_id => m.testbed_id,
                p_period_start => m.period_start,
                p_first_seen => m.created,
                p_last_seen => m.created,
                p_benchmark_ids => array_agg(m.b),
                p_variant_ids => array_agg(m.v),
                p_measure_ids => array_agg(m.m)
            )
            FROM (
                SELECT DISTINCT
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
                FROM keyed AS k
                CROSS JOIN LATERAL unnest(k.benchmark_ids, k.variant_ids, k.measure_ids)
                    AS e (b, v, m)
                WHERE k.reports > 1
                ORDER BY
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
            ) AS m
            GROUP BY m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same shape as before in the period, later
    -- than before: one HOT update of that sighting per testbed (_widen). Anything else (a
    -- shape or a period new to the testbed, older activity) goes on below, which finds
    -- what these updates already did and leaves it.
    IF cardinality(v_groups) = 1 THEN
        -- (one testbed at one time, nearly every transaction: the same steps written
        -- out, without the calls: _lock_testbeds, then _widen of the row of the stored
        -- shape (_find_shape) in one statement; only when that updated nothing, the shape
        -- and whether the testbed has history in the period, in one statement)
        v_group := v_groups[1];
        PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), hashint8(v_group.testbed_id));
        UPDATE active_series._shape_seen AS s
        SET first_seen = least(s.first_seen, v_group.first_seen),
            last_seen = greatest(s.last_seen, v_group.last_seen)
        FROM (
            SELECT h.id
            FROM active_series._shape AS h
            WHERE h.project_id = v_group.project_id
                AND h.digest = hash_array_extended(
                    v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
                )
                AND h.benchmark_ids = v_group.benchmark_ids
                AND h.variant_ids = v_group.variant_ids
                AND h.measure_ids = v_group.measure_ids
            LIMIT 1
        ) AS h
        WHERE s.testbed_id = v_group.testbed_id
            AND s.period_start = v_group.period_start
            AND s.shape_id = h.id
            AND (v_group.first_seen < s.first_seen OR v_group.last_seen > s.last_seen);
        IF FOUND THEN
            RETURN;
        END IF;
        -- the stored shape, and whether the testbed has history in the period (one
        -- statement: a first report asks both)
        SELECT
            s.id, s.series,
            EXISTS (
                SELECT
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = v_group.testbed_id AND p.period_start = v_group.period_start
            )
        INTO v_shape_id, v_series, v_known
        FROM active_series._shape AS s
        WHERE s.project_id = v_group.project_id
            AND s.digest = hash_array_extended(
                v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
            )
            AND s.benchmark_ids = v_group.benchmark_ids
            AND s.variant_ids = v_group.variant_ids
            AND s.measure_ids = v_group.measure_ids
        LIMIT 1;
        v_group.shape_id := v_shape_id;
        -- (the first report of the testbed in the period, of a stored shape, as below for
        -- several testbeds, written for one)
        IF v_shape_id IS NOT NULL AND NOT v_known THEN
            WITH sets AS (
                INSERT INTO active_series._testbed_period (
                    testbed_id, period_start, organization_id, project_id, shape_id
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_group.organization_id,
                    v_group.project_id, v_shape_id
                )
            ),
            seen AS (
                INSERT INTO active_series._shape_seen (
                    testbed_id, period_start, shape_id, first_seen, last_seen
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_shape_id, v_group.first_seen,
                    v_group.last_seen
                )
            ),
            counted AS (
                INSERT INTO active_series._period_usage AS u (
                    organization_id, period_start, project_id, series_count
                )
                VALUES (v_group.organization_id, v_group.period_start, v_group.project_id, v_series)
                ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
                SET series_count = u.series_count + excluded.series_count
            )
            -- (the outbox row of _changed, in the same statement)
            INSERT INTO active_series._outbox (organization_id, period_start, reason)
            VALUES (v_group.organization_id, v_group.period_start, 'ingest');
            -- the count rose: _check_rises written out for one group (no call, a cached
            -- plan; a re-recording never comes this way)
            IF pg_trigger_depth() > 0 THEN
                PERFORM
                FROM active_series.project AS p
                WHERE p.id = v_group.project_id AND p.deleted_at IS NULL
                    AND (
                        EXISTS (
                            SELECT FROM active_series.billing_account AS b
                            WHERE b.organization_id = v_group.organization_id
                                AND b.series_cap IS NOT NULL
                        )
                        OR EXISTS (
                            SELECT FROM active_series._alert_threshold AS a
                            WHERE a.organization_id = v_group.organization_id AND a.enabled
                        )
                        OR EXISTS (
                            SELECT FROM active_series._price_tier AS t
                            WHERE t.organization_id = v_group.organization_id
                                AND t.up_to IS NOT NULL
                        )
                    );
                IF FOUND THEN
                    PERFORM active_series._check_usage(
                        v_group.organization_id, v_group.period_start
                    );
                END IF;
            END IF;
            RETURN;
        END IF;
        v_groups := ARRAY[v_group];
    ELSE
        PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
        v_groups := ARRAY(
            SELECT active_series._shape_group(
                p_organization_id => g.organization_id,
                p_project_id => g.project_id,
                p_testbed_id => g.testbed_id,
                p_period_start => g.period_start,
                p_first_seen => g.first_seen,
                p_last_seen => g.last_seen,
                p_benchmark_ids => g.benchmark_ids,
                p_variant_ids => g.variant_ids,
                p_measure_ids => g.measure_ids,
                p_shape_id => active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
            FROM unnest(v_groups) AS g
        );
        IF active_series._widen(v_groups) = cardinality(v_groups) THEN
            RETURN;
        END IF;
    END IF;

    -- The first report of a testbed in a period (a new testbed, or the first report after
    -- the period changed) of a shape already stored: the shape is the testbed's period
    -- shape, so one statement writes what _record_groups would, in the same key order: the
    -- period shapes, the sightings, the counts grown by the shapes' sizes (_period_usage,
    -- key order) and the outbox rows. It holds when every activity is of a stored shape, no
    -- testbed has history in its period (under the history locks taken above: nothing else
    -- writes it meanwhile; so _widen did nothing) and no (testbed, period) has two
    -- activities. Else the general path.
    IF NOT EXISTS (
        SELECT
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
            OR (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
    )
    AND (
        SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(v_groups) AS g
    ) = cardinality(v_groups) THEN
        WITH g AS MATERIALIZED (
            SELECT
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.shape_id, s.series
            FROM unnest(v_groups) AS g
            CROSS JOIN LATERAL (
                SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
            ) AS s
        ),
        sets AS (
            INSERT INTO active_series._testbed_period (
                testbed_id, period_start, organization_id, project_id, shape_id
            )
            SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
            FROM g
            ORDER BY g.testbed_id, g.period_start
        ),
        seen AS (
            INSERT INTO active_series._shape_seen (
                testbed_id, period_start, shape_id, first_seen, last_seen
            )
            SELECT g.testbed_id, g.period_start, g.shape_id, g.first_seen, g.last_seen
            FROM g
            ORDER BY g.testbed_id, g.period_start, g.shape_id
        ),
        counted AS (
            INSERT INTO active_series._period_usage AS u (
                organization_id, period_start, project_id, series_count
            )
            SELECT g.organization_id, g.period_start, g.project_id, sum(g.series)
            FROM g
            GROUP BY g.organization_id, g.period_start, g.project_id
            ORDER BY g.organization_id, g.period_start, g.project_id
            ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
            SET series_count = u.series_count + excluded.series_count
        )
        -- (the outbox rows of _changed, one per (organization, period), in the same
        -- statement)
        INSERT INTO active_series._outbox (organization_id, period_start, reason)
        SELECT DISTINCT g.organization_id, g.period_start, 'ingest'
        FROM g
        ORDER BY g.organization_id, g.period_start;
        -- (each of those counts rose: the cap and the alerts)
        PERFORM active_series._check_rises(v_groups);
        RETURN;
    END IF;
    PERFORM active_series._record_groups(v_groups);
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';

CREATE OR REPLACE FUNCTION active_series._forget_series(
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

COMMENT ON TABLE active_series._rerecording IS
'The transactions re-recording history after a hard delete (_forget_series), for as long as they do: the counts they raise on the way back never exceed what they were, so the cap and alert check (_check_rises) leaves them alone. Only the extension''s own functions write it.';

-- ================================================================ sightings go with their testbed history, without a foreign key
ALTER TABLE active_series._shape_seen
DROP CONSTRAINT _shape_seen_testbed_id_period_start_fkey;

CREATE OR REPLACE FUNCTION active_series._testbed_period_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Statement-level AFTER DELETE on _testbed_period (a testbed or project hard-deleted
-- cascades its history away; re-bucketing and re-recording delete and rewrite it): delete
-- the sightings of the histories deleted (no foreign key cascades them: see _shape_seen),
-- lower the counts by the sets deleted and tell the relay.
-- SECURITY DEFINER: the hard delete that cascades here may be an ingest client's
-- (active_series_ingest), which may not write _period_usage or _outbox.
BEGIN
    DELETE FROM active_series._shape_seen AS s
    USING old_testbed_period AS o
    WHERE s.testbed_id = o.testbed_id AND s.period_start = o.period_start;
    UPDATE active_series._period_usage AS u
    SET series_count = u.series_count - d.n
    FROM (
        SELECT o.organization_id, o.period_start, o.project_id, sum(s.series) AS n
        FROM old_testbed_period AS o
        INNER JOIN active_series._shape AS s ON s.id = o.shape_id
        GROUP BY o.organization_id, o.period_start, o.project_id
    ) AS d
    WHERE u.organization_id = d.organization_id
        AND u.period_start = d.period_start
        AND u.project_id = d.project_id;
    PERFORM active_series._changed(c.organization_id, c.period_start, 'delete')
    FROM (
        SELECT DISTINCT o.organization_id, o.period_start FROM old_testbed_period AS o
    ) AS c;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._testbed_period_deleted() IS
'Trigger: keep per-period counts right when a testbed''s history of a period is deleted.';

CREATE OR REPLACE FUNCTION active_series.verify(p_organization_id bigint DEFAULT NULL)
RETURNS TABLE (organization_id bigint, problem text, detail text)
LANGUAGE plpgsql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Compares the cache and history with a from-scratch recomputation over the metrics (of
-- one organization, or all): no rows means healthy. Problems:
--   count      a per-project period count differs from the series in its history
--   last_seen  a series' last_seen is missing or older than its newest metric
--   history    a series' activity in a period is missing from, or outside, its history
--   period     activity falls in no recorded period
--   set        a testbed's set of series for a period is not the union of what it reported
--   sighting   a _shape_seen row without its testbed history (_testbed_period row)
-- Activity of deleted reports is legitimately in history without metrics: not a problem.
-- Reads everything of the organization; takes no locks.
BEGIN
    IF p_organization_id IS NOT NULL THEN
        PERFORM active_series._require_organization(p_organization_id);
    END IF;

    RETURN QUERY
    SELECT d.organization_id, 'count'::text,
        format('period %s project %s: count %s, history rows %s',
            d.period_start, d.project_id, d.actual, d.expected)
    FROM active_series._count_drift AS d
    WHERE p_organization_id IS NULL OR d.organization_id = p_organization_id;

    RETURN QUERY
    WITH activity AS (
        SELECT p.organization_id, r.project_id, r.testbed_id, rb.benchmark_id,
            active_series._variant_key(rb.variant_id) AS variant_id, m.measure_id, r.created
        FROM active_series.metric AS m
        INNER JOIN active_series.report_benchmark AS rb ON rb.id = m.report_benchmark_id
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE p_organization_id IS NULL OR p.organization_id = p_organization_id
    ),
    history AS (
        SELECT h.*
        FROM active_series._series_history AS h
        WHERE p_organization_id IS NULL OR h.organization_id = p_organization_id
    ),
    per_series AS (
        SELECT a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id,
            max(a.created) AS last_seen
        FROM activity AS a
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id
    ),
    per_period AS (
        SELECT a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id,
            q.period_start, min(a.created) AS first_seen, max(a.created) AS last_seen
        FROM activity AS a
        LEFT JOIN active_series._period AS q
            ON q.organization_id = a.organization_id
            AND q.period_start <= a.created
            AND q.period_end > a.created
        GROUP BY a.organization_id, a.testbed_id, a.benchmark_id, a.variant_id, a.measure_id,
            q.period_start
    )
    SELECT x.organization_id, 'last_seen'::text,
        format('series (%s, %s, %s, %s): last_seen %s, newest metric %s',
            x.testbed_id, x.benchmark_id, x.variant_id, x.measure_id,
            coalesce(s.last_seen::text, 'missing'), x.last_seen)
    FROM per_series AS x
    LEFT JOIN (
        SELECT h.testbed_id, h.benchmark_id, h.variant_id, h.measure_id,
            max(h.last_seen) AS last_seen
        FROM history AS h
        GROUP BY h.testbed_id, h.benchmark_id, h.variant_id, h.measure_id
    ) AS s
        ON s.testbed_id = x.testbed_id
        AND s.benchmark_id = x.benchmark_id
        AND s.variant_id = x.variant_id
        AND s.measure_id = x.measure_id
    WHERE s.last_seen IS NULL OR s.last_seen < x.last_seen
    UNION ALL
    SELECT y.organization_id,
        CASE WHEN y.period_start IS NULL THEN 'period' ELSE 'history' END,
        format('series (%s, %s, %s, %s) period %s: active %s .. %s, history %s .. %s',
            y.testbed_id, y.benchmark_id, y.variant_id, y.measure_id,
            coalesce(y.period_start::text, 'none'), y.first_seen, y.last_seen,
            coalesce(h.first_seen::text, 'missing'), coalesce(h.last_seen::text, 'missing'))
    FROM per_period AS y
    LEFT JOIN history AS h
        ON h.period_start = y.period_start
        AND h.testbed_id = y.testbed_id
        AND h.benchmark_id = y.benchmark_id
        AND h.variant_id = y.variant_id
        AND h.measure_id = y.measure_id
    WHERE h.first_seen IS NULL
        OR h.first_seen > y.first_seen
        OR h.last_seen < y.last_seen;

    RETURN QUERY
    SELECT t.organization_id, 'set'::text,
        format('testbed %s period %s: set of %s series, %s reported',
            t.testbed_id, t.period_start, u.series, coalesce(n.series, 0))
    FROM active_series._testbed_period AS t
    INNER JOIN active_series._shape AS u ON u.id = t.shape_id
    LEFT JOIN LATERAL (
        SELECT count(*) AS series, bool_and(x.in_set) AS all_in_set
        FROM (
            SELECT DISTINCT e.b, e.v, e.m,
                (e.b, e.v, e.m) IN (
                    SELECT f.b, f.v, f.m
                    FROM unnest(u.benchmark_ids, u.variant_ids, u.measure_ids) AS f (b, v, m)
                ) AS in_set
            FROM active_series._shape_seen AS s
            INNER JOIN active_series._shape AS h ON h.id = s.shape_id
            CROSS JOIN LATERAL unnest(h.benchmark_ids, h.variant_ids, h.measure_ids)
                AS e (b, v, m)
            WHERE s.testbed_id = t.testbed_id AND s.period_start = t.period_start
        ) AS x
    ) AS n ON true
    WHERE (p_organization_id IS NULL OR t.organization_id = p_organization_id)
        AND (n.series IS DISTINCT FROM u.series::bigint OR NOT n.all_in_set);

    -- (the organization of a sighting without its history: its shape's project's)
    RETURN QUERY
    SELECT p.organization_id, 'sighting'::text,
        format('testbed %s period %s shape %s: a sighting without its testbed history',
            s.testbed_id, s.period_start, s.shape_id)
    FROM active_series._shape_seen AS s
    LEFT JOIN active_series._shape AS h ON h.id = s.shape_id
    LEFT JOIN active_series.project AS p ON p.id = h.project_id
    WHERE (p_organization_id IS NULL OR p.organization_id = p_organization_id)
        AND NOT EXISTS (
            SELECT FROM active_series._testbed_period AS t
            WHERE t.testbed_id = s.testbed_id AND t.period_start = s.period_start
        );
END;
$$;
COMMENT ON FUNCTION active_series.verify(bigint) IS
'Rows where cached counts, last_seen or period history disagree with a from-scratch recomputation over the metrics (one organization or all); no rows means healthy.';
-- ---------------------------------------------------------------- sql/functions/_relay_ledger.sql
CREATE FUNCTION active_series._relay_ledger_pending(
    p_organization_ids bigint[],
    p_customers text[],
    p_period_starts timestamptz[],
    p_period_ends timestamptz[],
    p_values bigint[],
    p_timestamps bigint[],
    p_leases float8[]
)
RETURNS SETOF text
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a post's ledger row is written pending, and committed, before its Stripe call,
-- so that a worker killed mid-call resends exactly the same identifier, value and
-- timestamp. Each row carries the deadline by which its call ends (now plus its lease, in
-- seconds) and the server instance the worker holds its claim on; a post already failed is
-- made pending again, one pending or sent is left as it is. Every post of a batch in one
-- call (the instance read once); returns the posts' identifiers in the order given.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    RETURN QUERY
    WITH i AS MATERIALIZED (SELECT active_series._relay_instance() AS instance),
    p AS MATERIALIZED (
        SELECT
            x.*,
            active_series._relay_identifier(x.customer, x.ts, x.value) AS identifier
        FROM unnest(
            p_organization_ids, p_customers, p_period_starts, p_period_ends, p_values,
            p_timestamps, p_leases
        ) WITH ORDINALITY
            AS x (organization_id, customer, period_start, period_end, value, ts, lease, n)
    ),
    w AS (
        INSERT INTO active_series._ledger AS l (
            organization_id, stripe_customer_id, period_start, period_end, value,
            event_timestamp, identifier, in_flight_until, in_flight_on
        )
        SELECT
            p.organization_id, p.customer, p.period_start, p.period_end, p.value, p.ts,
            p.identifier, clock_timestamp() + make_interval(secs => p.lease), i.instance
        FROM p CROSS JOIN i
        ON CONFLICT (identifier) DO UPDATE
        SET status = 'pending', updated = clock_timestamp(),
            in_flight_until = excluded.in_flight_until, in_flight_on = excluded.in_flight_on
        WHERE l.status = 'failed'
    )
    SELECT p.identifier FROM p ORDER BY p.n;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_pending(
    bigint[], text[], timestamptz[], timestamptz[], bigint[], bigint[], float8[]
) IS
'Internal (relay): write a batch of posts pending before their Stripe calls, each with its call''s deadline; returns their identifiers in the order given.';

CREATE FUNCTION active_series._relay_ledger_in_flight(
    p_identifiers text[],
    p_leases float8[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a pending post about to be sent again is marked in flight first (committed
-- before the call): the deadline by which its call ends (now plus its lease, in seconds)
-- and the server instance the worker holds its claim on. A claim on another instance
-- leaves its organization alone until then.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    UPDATE active_series._ledger AS l
    SET
        in_flight_until = clock_timestamp() + make_interval(secs => x.lease),
        in_flight_on = i.instance
    FROM unnest(p_identifiers, p_leases) AS x (identifier, lease)
    CROSS JOIN (SELECT active_series._relay_instance() AS instance) AS i
    WHERE l.identifier = x.identifier;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_in_flight(text[], float8[]) IS
'Internal (relay): mark pending posts in flight (their calls'' deadlines and the server instance) before they are sent again.';

CREATE FUNCTION active_series._relay_ledger_outcomes(
    p_identifiers text[],
    p_made boolean[],
    p_statuses text[],
    p_errors text[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: the outcome of each call of a round is recorded on its post: sent (Stripe
-- accepted it), failed (refused for good), or pending again (no answer, or the call was
-- not made: a later claim resends it). A call made counts as an attempt and its error, if
-- any, is kept; no call of the round is in flight any more.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    UPDATE active_series._ledger AS l
    SET
        status = o.status,
        attempts = l.attempts + o.made::integer,
        last_error = CASE WHEN o.made THEN o.error ELSE l.last_error END,
        updated = clock_timestamp(),
        in_flight_until = NULL,
        in_flight_on = NULL
    FROM unnest(p_identifiers, p_made, p_statuses, p_errors)
        AS o (identifier, made, status, error)
    WHERE l.identifier = o.identifier;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_outcomes(text[], boolean[], text[], text[]) IS
'Internal (relay): record the outcomes of a round of calls (sent, failed, or pending again); none is in flight any more.';

CREATE FUNCTION active_series._relay_ledger_failed(
    p_organization_id bigint,
    p_customer text,
    p_period_start timestamptz,
    p_period_end timestamptz,
    p_value bigint,
    p_timestamp bigint,
    p_error text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a value that cannot be posted (no timestamp inside its period is left within
-- Stripe's limits) is recorded failed, with the reason, under the identifier its post would
-- have had; a post already recorded under that identifier is left as it is.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._ledger (
        organization_id, stripe_customer_id, period_start, period_end, value,
        event_timestamp, identifier, status, last_error
    )
    VALUES (
        p_organization_id, p_customer, p_period_start, p_period_end, p_value, p_timestamp,
        active_series._relay_identifier(p_customer, p_timestamp, p_value), 'failed', p_error
    )
    ON CONFLICT (identifier) DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_failed(
    bigint, text, timestamptz, timestamptz, bigint, bigint, text
) IS
'Internal (relay): record a value that cannot be posted as a failed post, with the reason.';

CREATE FUNCTION active_series._relay_ledger_refused(
    p_identifiers text[],
    p_errors text[]
)
RETURNS TABLE (org bigint, identifier text, reason text)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a post Stripe accepted and refused later (its error reports, v1 and v2) failed
-- after all: it is marked failed with the reason. Returns the posts so marked (those not
-- failed already): their organizations, identifiers and reasons.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the ledger through these rules only, never the table itself.
BEGIN
    RETURN QUERY
    UPDATE active_series._ledger AS l
    SET status = 'failed', last_error = o.error, updated = clock_timestamp()
    FROM unnest(p_identifiers, p_errors) AS o (identifier, error)
    WHERE l.identifier = o.identifier AND l.status <> 'failed'
    RETURNING l.organization_id, l.identifier, o.error;
END;
$$;
COMMENT ON FUNCTION active_series._relay_ledger_refused(text[], text[]) IS
'Internal (relay): mark failed the posts Stripe refused after accepting them; returns those marked.';
-- ---------------------------------------------------------------- sql/grants.sql
-- the worker writes the ledger through the rules above only
REVOKE INSERT, UPDATE ON active_series._ledger FROM active_series_worker;
REVOKE EXECUTE ON FUNCTION
active_series._relay_ledger_pending(
    bigint[], text[], timestamptz[], timestamptz[], bigint[], bigint[], float8[]
),
active_series._relay_ledger_in_flight(text[], float8[]),
active_series._relay_ledger_outcomes(text[], boolean[], text[], text[]),
active_series._relay_ledger_failed(bigint, text, timestamptz, timestamptz, bigint, bigint, text),
active_series._relay_ledger_refused(text[], text[])
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION
active_series._relay_ledger_pending(
    bigint[], text[], timestamptz[], timestamptz[], bigint[], bigint[], float8[]
),
active_series._relay_ledger_in_flight(text[], float8[]),
active_series._relay_ledger_outcomes(text[], boolean[], text[], text[]),
active_series._relay_ledger_failed(bigint, text, timestamptz, timestamptz, bigint, bigint, text),
active_series._relay_ledger_refused(text[], text[])
TO active_series_worker, active_series_admin;
-- ---------------------------------------------------------------- sql/functions/_relay_organization_state.sql
CREATE FUNCTION active_series._relay_done(
    p_organization_ids bigint[],
    p_timestamps bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: an organization whose claim relayed what it had (its posts accepted, or
-- nothing to post) starts afresh: no failed attempt counted, no backoff; it remembers the
-- newest event timestamp Stripe accepted (never an older one). Given as (organization,
-- event timestamp) pairs.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_state AS s
    SET
        attempts = 0,
        next_attempt_at = NULL,
        updated_at = now(),
        last_event_timestamp = greatest(s.last_event_timestamp, d.ts)
    FROM unnest(p_organization_ids, p_timestamps) AS d (organization_id, ts)
    WHERE s.organization_id = d.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_done(bigint[], bigint[]) IS
'Internal (relay): organizations relayed: no attempt counted, no backoff; the newest event timestamp Stripe accepted.';

CREATE FUNCTION active_series._relay_defer(
    p_organization_ids bigint[],
    p_until float8[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: an organization backs off until a moment (Unix seconds): a failed call's
-- backoff, a pause that Stripe's rate limit or an outage imposes, the second its next post
-- must wait for, or the deadline of a call still in flight elsewhere. No claim takes it
-- before then. Given as (organization, moment) pairs.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_state AS s
    SET next_attempt_at = to_timestamp(d.until), updated_at = now()
    FROM unnest(p_organization_ids, p_until) AS d (organization_id, until)
    WHERE s.organization_id = d.organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_defer(bigint[], float8[]) IS
'Internal (relay): organizations backing off until the given moments (Unix seconds).';

CREATE FUNCTION active_series._relay_count_attempt(p_organization_id bigint)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a call that failed for a reason that may pass (no answer, a server error) is
-- counted on its organization; the count sets its backoff (_relay_defer) and is cleared
-- when the organization is relayed (_relay_done). Returns the count, NULL for an
-- organization without relay state.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
DECLARE
    v_attempts integer;
BEGIN
    UPDATE active_series._relay_state AS s
    SET attempts = s.attempts + 1, updated_at = now()
    WHERE s.organization_id = p_organization_id
    RETURNING s.attempts INTO v_attempts;
    RETURN v_attempts;
END;
$$;
COMMENT ON FUNCTION active_series._relay_count_attempt(bigint) IS
'Internal (relay): count a failed attempt of the organization; returns the count.';

CREATE FUNCTION active_series._relay_park(p_organization_id bigint, p_reason text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a refusal that posting again cannot mend (an unknown customer, a meter that
-- does not fit, a post refused later) parks the organization, with the reason: no claim
-- takes it (its backoff cleared) until an operator resumes it (relay_resume).
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes the organizations' relay state through these rules only, never the table itself.
BEGIN
    UPDATE active_series._relay_state AS s
    SET
        parked_at = now(),
        parked_reason = p_reason,
        next_attempt_at = NULL,
        updated_at = now()
    WHERE s.organization_id = p_organization_id;
END;
$$;
COMMENT ON FUNCTION active_series._relay_park(bigint, text) IS
'Internal (relay): park the organization with the reason, until relay_resume.';
-- ---------------------------------------------------------------- sql/grants.sql
-- the worker writes the organizations' relay state through the rules above only: it keeps
-- INSERT of organization_id (_relay_work adds the missing rows) and UPDATE of updated_at
-- (_relay_claim's FOR UPDATE needs the UPDATE right of some column); revoking the table's
-- INSERT and UPDATE takes its column rights with them
REVOKE INSERT, UPDATE ON active_series._relay_state FROM active_series_worker;
GRANT INSERT (organization_id) ON active_series._relay_state TO active_series_worker;
GRANT UPDATE (updated_at) ON active_series._relay_state TO active_series_worker;
REVOKE EXECUTE ON FUNCTION
active_series._relay_done(bigint[], bigint[]),
active_series._relay_defer(bigint[], float8[]),
active_series._relay_count_attempt(bigint),
active_series._relay_park(bigint, text)
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION
active_series._relay_done(bigint[], bigint[]),
active_series._relay_defer(bigint[], float8[]),
active_series._relay_count_attempt(bigint),
active_series._relay_park(bigint, text)
TO active_series_worker, active_series_admin;
-- ---------------------------------------------------------------- sql/functions/_relay_attempts.sql
CREATE FUNCTION active_series._relay_note_attempts(
    p_idempotency_keys text[],
    p_identifiers text[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: before a request is made, the posts it carries are recorded under its
-- idempotency key (committed before the request), since Stripe's error reports name a
-- refused event by its request's key. Given as (key, identifier) pairs; a pair recorded
-- already is left as it is.
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes _post_attempt through these rules only, never the table itself.
BEGIN
    INSERT INTO active_series._post_attempt (idempotency_key, identifier)
    SELECT x.idempotency_key, x.identifier
    FROM unnest(p_idempotency_keys, p_identifiers) AS x (idempotency_key, identifier)
    ON CONFLICT ON CONSTRAINT _post_attempt_pkey DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._relay_note_attempts(text[], text[]) IS
'Internal (relay): record the posts each request about to be made carries, by its idempotency key.';

CREATE FUNCTION active_series._relay_prune_attempts()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The rule: a request's posts are kept 31 days: no error report names a request older than
-- that (Stripe keeps events 30 days).
-- SECURITY DEFINER (EXECUTE: active_series_worker and active_series_admin only): the worker
-- writes _post_attempt through these rules only, never the table itself.
BEGIN
    DELETE FROM active_series._post_attempt AS a
    WHERE a.created < clock_timestamp() - interval '31 days';
END;
$$;
COMMENT ON FUNCTION active_series._relay_prune_attempts() IS
'Internal (relay): forget the requests made more than 31 days ago.';
-- ---------------------------------------------------------------- sql/grants.sql
-- the worker writes _post_attempt through the rules above only
REVOKE INSERT, DELETE ON active_series._post_attempt FROM active_series_worker;
REVOKE EXECUTE ON FUNCTION
active_series._relay_note_attempts(text[], text[]),
active_series._relay_prune_attempts()
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION
active_series._relay_note_attempts(text[], text[]),
active_series._relay_prune_attempts()
TO active_series_worker, active_series_admin;
-- ---------------------------------------------------------------- sql/functions/_relay_expected.sql
CREATE FUNCTION active_series._relay_expected(
    p_stripe_customer_id text,
    p_period_start timestamptz,
    p_period_end timestamptz
)
RETURNS TABLE (
    event_timestamp bigint,
    value bigint,
    status text,
    sent float8,
    window_start bigint,
    window_end bigint,
    expected bigint,
    shared boolean
)
LANGUAGE sql
STABLE
ROWS 1
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- What a read of the meter's event summary must find to confirm a period's last post: that
-- post (_relay_held: its timestamp, value, status, and when its status was last written,
-- in Unix seconds), the summary window that holds exactly the period's events up to it
-- (minute-aligned: from the minute of the period's first second to the minute after the
-- post), the value the ledger expects Stripe to hold over that window (its last post in
-- the window, failed ones left out), and whether a later post shares the window (after
-- the post, in its minute: a later period's, so the summary cannot tell the period's
-- value then). One row: without a post, all NULL but window_start. Takes no locks.
SELECT
    h.event_timestamp,
    h.value,
    h.status,
    extract(EPOCH FROM l.updated)::float8,
    w.window_start,
    w.window_end,
    e.value,
    EXISTS (
        SELECT FROM active_series._ledger AS s
        WHERE
            s.stripe_customer_id = p_stripe_customer_id
            AND s.status <> 'failed'
            AND s.event_timestamp > h.event_timestamp AND s.event_timestamp < w.window_end
    )
FROM active_series._relay_window(p_period_start, p_period_end) AS r
LEFT JOIN active_series._relay_held(p_stripe_customer_id, p_period_start, p_period_end) AS h
    ON TRUE
LEFT JOIN active_series._ledger AS l ON h.ledger_id = l.id
CROSS JOIN LATERAL (
    SELECT
        r.first_second - r.first_second % 60 AS window_start,
        h.event_timestamp - h.event_timestamp % 60 + 60 AS window_end
) AS w
LEFT JOIN LATERAL (
    SELECT x.value
    FROM active_series._ledger AS x
    WHERE
        x.stripe_customer_id = p_stripe_customer_id
        AND x.status <> 'failed'
        AND x.event_timestamp >= w.window_start AND x.event_timestamp < w.window_end
    ORDER BY x.event_timestamp DESC
    LIMIT 1
) AS e ON TRUE;
$$;
COMMENT ON FUNCTION active_series._relay_expected(text, timestamptz, timestamptz) IS
'Internal (relay): a period''s last post, the event-summary window that confirms it, and the value the ledger expects Stripe to hold over it.';
-- ---------------------------------------------------------------- sql/grants.sql
REVOKE EXECUTE ON FUNCTION active_series._relay_expected(text, timestamptz, timestamptz)
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION active_series._relay_expected(text, timestamptz, timestamptz)
TO active_series_worker, active_series_admin;
-- ---------------------------------------------------------------- sql/tables/period.sql
-- (the organization's watched flag on every period, kept by triggers/watch.sql)
ALTER TABLE active_series._period ADD COLUMN watched boolean NOT NULL DEFAULT false;
-- ---------------------------------------------------------------- sql/functions/_watched.sql
CREATE FUNCTION active_series._watched(p_organization_id bigint)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Whether an ingest commit that raises the organization's count must check it
-- (_check_usage): it has a series cap, an enabled alert threshold, or a price tier with an
-- upper bound (a bound that set_alert disabled still counts: _check_usage decides exactly).
-- The one definition; _period.watched holds its value for every period (triggers/watch.sql).
SELECT
    EXISTS (
        SELECT FROM active_series.billing_account AS b
        WHERE b.organization_id = p_organization_id AND b.series_cap IS NOT NULL
    )
    OR EXISTS (
        SELECT FROM active_series._alert_threshold AS a
        WHERE a.organization_id = p_organization_id AND a.enabled
    )
    OR EXISTS (
        SELECT FROM active_series._price_tier AS t
        WHERE t.organization_id = p_organization_id AND t.up_to IS NOT NULL
    );
$$;
COMMENT ON FUNCTION active_series._watched(bigint) IS
'Internal: whether the organization has a series cap, an enabled alert threshold or a bounded price tier.';
-- ---------------------------------------------------------------- triggers/watch.sql
CREATE FUNCTION active_series._period_inserted()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE INSERT on _period (a new period, a split or a merge; once per organization and
-- period): the period starts with the organization's watched flag (_watched).
BEGIN
    NEW.watched := active_series._watched(NEW.organization_id);
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION active_series._period_inserted() IS
'Trigger: a new period carries the organization''s watched flag.';

CREATE TRIGGER period_inserted
BEFORE INSERT ON active_series._period
FOR EACH ROW
EXECUTE FUNCTION active_series._period_inserted();

CREATE FUNCTION active_series._watch_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- AFTER INSERT, UPDATE or DELETE of a row of billing_account, _alert_threshold or
-- _price_tier (settings, written rarely): the organization's periods take its watched flag
-- again (_watched), the rows that change only.
-- SECURITY DEFINER: the relay writes the price tiers and an operator the cap and the
-- alerts; neither may write _period.
DECLARE
    v_organization_id bigint;
BEGIN
    FOREACH v_organization_id IN ARRAY ARRAY[OLD.organization_id, NEW.organization_id] LOOP
        UPDATE active_series._period AS p
        SET watched = w.watched
        FROM (SELECT active_series._watched(v_organization_id) AS watched) AS w
        WHERE p.organization_id = v_organization_id AND p.watched <> w.watched;
    END LOOP;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._watch_changed() IS
'Trigger: keep the periods'' watched flag when a cap, an alert threshold or a price tier changes.';

CREATE TRIGGER watch_changed
AFTER INSERT OR UPDATE OR DELETE ON active_series.billing_account
FOR EACH ROW
EXECUTE FUNCTION active_series._watch_changed();

CREATE TRIGGER watch_changed
AFTER INSERT OR UPDATE OR DELETE ON active_series._alert_threshold
FOR EACH ROW
EXECUTE FUNCTION active_series._watch_changed();

CREATE TRIGGER watch_changed
AFTER INSERT OR UPDATE OR DELETE ON active_series._price_tier
FOR EACH ROW
EXECUTE FUNCTION active_series._watch_changed();
-- (the flag of the periods recorded before)
UPDATE active_series._period AS p
SET watched = true
WHERE active_series._watched(p.organization_id);
-- ---------------------------------------------------------------- sql/grants.sql
REVOKE EXECUTE ON FUNCTION
active_series._watched(bigint),
active_series._period_inserted(),
active_series._watch_changed()
FROM PUBLIC; -- noqa: CP02
GRANT EXECUTE ON FUNCTION
active_series._watched(bigint),
active_series._period_inserted(),
active_series._watch_changed()
TO active_series_admin;
-- ---------------------------------------------------------------- sql/functions/_record_activity.sql
CREATE OR REPLACE FUNCTION active_series._record_activity(
    p_report_benchmark_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Records metrics, given as (report_benchmark, measure) pairs (the ingest trigger passes a
-- whole transaction's at commit, backfill a batch of reports'), in the history and the
-- per-period counts: each report_benchmark is looked up once (its report, project and
-- variant), the pairs become one activity per (testbed, report.created): its series, in
-- the billing period containing that time (the words: docs/DESIGN-NOTES.md), and
-- _record_groups writes them. A variant_id that is NULL, or names the benchmark's empty
-- variant, is variant 0.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
    v_group active_series._shape_group;
    v_shape_id bigint;
    v_series integer;
    v_known boolean;
    v_set_id bigint;
    v_watched boolean;
    v_organization_id bigint;
    v_project_id bigint;
    v_testbed_id bigint;
    v_created timestamptz;
    v_benchmark_id bigint;
    v_variant_id bigint;
    v_period_start timestamptz;
    v_period_end timestamptz;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its activity, looked up directly, in
        -- plain statements (a function in the join would be a table function: a tuplestore
        -- per call)
        SELECT
            p.organization_id, r.project_id, r.testbed_id, r.created, rb.benchmark_id,
            CASE
                WHEN rb.variant_id IS NULL THEN 0
                ELSE active_series._variant_key(rb.variant_id)
            END
        INTO v_organization_id, v_project_id, v_testbed_id, v_created, v_benchmark_id,
            v_variant_id
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE rb.id = p_report_benchmark_ids[1];
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- its period: _period_for's probe of the recorded one written out (under the
        -- organization's period lock, as there), the call only to record a new one; with
        -- it, whether the organization watches its count (for a first report, below)
        PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(v_organization_id));
        -- (the latest that began by then, which holds that time unless it ended before)
        SELECT p.period_start, p.period_end, p.watched
        INTO v_period_start, v_period_end, v_watched
        FROM active_series._period AS p
        WHERE p.organization_id = v_organization_id AND p.period_start <= v_created
        ORDER BY p.period_start DESC
        LIMIT 1;
        IF v_period_end <= v_created THEN
            v_period_start := NULL;
        END IF;
        IF v_period_start IS NULL THEN
            v_period_start := (
                active_series._period_for(v_organization_id, v_created)
            ).period_start;
            v_watched := active_series._watched(v_organization_id);
        END IF;
        v_groups := ARRAY[
            active_series._shape_group(
                p_organization_id => v_organization_id,
                p_project_id => v_project_id,
                p_testbed_id => v_testbed_id,
                p_period_start => v_period_start,
                p_first_seen => v_created,
                p_last_seen => v_created,
                p_benchmark_ids => ARRAY[v_benchmark_id],
                p_variant_ids => ARRAY[v_variant_id],
                p_measure_ids => p_measure_ids
            )
        ];
    ELSE
        -- (each report_benchmark, then each report, looked up once; OFFSET 0 keeps each
        -- LATERAL subquery a per-row index lookup, whatever the statistics said when this plan
        -- was cached)
        v_groups := ARRAY(
            WITH rbs AS MATERIALIZED (
                SELECT
                    rb.id, rb.report_id, rb.benchmark_id,
                    -- (without a variant_id, as most reports send, no call)
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END AS variant_id
                FROM active_series.report_benchmark AS rb
                WHERE rb.id = ANY(p_report_benchmark_ids)
            ),
            -- each report's series, sorted (one sort on four keys; the series come distinct
            -- and in shape order, and each report's arrays are aggregated in that order; an
            -- order lost would only store a shape twice)
            sets AS MATERIALIZED (
                SELECT
                    s.report_id, array_agg(s.benchmark_id) AS benchmark_ids,
                    array_agg(s.variant_id) AS variant_ids, array_agg(s.measure_id) AS measure_ids
                FROM (
                    SELECT DISTINCT b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                    INNER JOIN rbs AS b ON b.id = x.id
                    ORDER BY b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                ) AS s
                GROUP BY s.report_id
            ),
            -- (each report looked up once; OFFSET 0 keeps the LATERAL subquery a per-row
            -- index lookup, whatever the statistics said when this plan was cached)
            reports AS MATERIALIZED (
                SELECT d.benchmark_ids, d.variant_ids, d.measure_ids, k.*
                FROM sets AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM reports AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            ),
            keyed AS MATERIALIZED (
                SELECT
                    s.*, t.period_start,
                    count(*) OVER (PARTITION BY s.testbed_id, s.created) AS reports
                FROM reports AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
            )
            -- a testbed's one report at a time: its series as they are
            SELECT active_series._shape_group(
                p_organization_id => k.organization_id,
                p_project_id => k.project_id,
                p_testbed_id => k.testbed_id,
                p_period_start => k.period_start,
                p_first_seen => k.created,
                p_last_seen => k.created,
                p_benchmark_ids => k.benchmark_ids,
                p_variant_ids => k.variant_ids,
                p_measure_ids => k.measure_ids
            )
            FROM keyed AS k
            WHERE k.reports = 1
            UNION ALL
            -- several reports of one testbed in one transaction (one time): their series merged
            SELECT active_series._shape_group(
                p_organization_id => m.organization_id,
                p_project_id => m.project_id,
                p_testbed_id => m.testbed_id,
                p_period_start => m.period_start,
                p_first_seen => m.created,
                p_last_seen => m.created,
                p_benchmark_ids => array_agg(m.b),
                p_variant_ids => array_agg(m.v),
                p_measure_ids => array_agg(m.m)
            )
            FROM (
                SELECT DISTINCT
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
                FROM keyed AS k
                CROSS JOIN LATERAL unnest(k.benchmark_ids, k.variant_ids, k.measure_ids)
                    AS e (b, v, m)
                WHERE k.reports > 1
                ORDER BY
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
            ) AS m
            GROUP BY m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same shape as before in the period, later
    -- than before: one HOT update of that sighting per testbed (_widen). Anything else (a
    -- shape or a period new to the testbed, older activity) goes on below, which finds
    -- what these updates already did and leaves it.
    IF cardinality(v_groups) = 1 THEN
        -- (one testbed at one time, nearly every transaction: the same steps written
        -- out, without the calls: _lock_testbeds; the stored shape (_find_shape) and the
        -- testbed's set in the period, in one statement; with a set, _widen of the shape's
        -- sighting by its key. A first report then writes its rows without an UPDATE that
        -- finds nothing: 67,000 fewer backend instructions for a first report, 31,000
        -- more for a steady one, which costs the least of the three.)
        v_group := v_groups[1];
        PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), hashint8(v_group.testbed_id));
        -- the stored shape, and the testbed's set in the period (NULL: no history there)
        SELECT s.id, s.series, p.shape_id
        INTO v_shape_id, v_series, v_set_id
        FROM active_series._shape AS s
        LEFT JOIN active_series._testbed_period AS p
            ON p.testbed_id = v_group.testbed_id AND p.period_start = v_group.period_start
        WHERE s.project_id = v_group.project_id
            AND s.digest = hash_array_extended(
                v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
            )
            AND s.benchmark_ids = v_group.benchmark_ids
            AND s.variant_ids = v_group.variant_ids
            AND s.measure_ids = v_group.measure_ids
        LIMIT 1;
        v_group.shape_id := v_shape_id;
        v_known := v_set_id IS NOT NULL;
        IF v_known THEN
            -- (a testbed reporting again in the period: the sighting of the shape widened,
            -- a HOT update, when it is there and this is later or earlier than it)
            UPDATE active_series._shape_seen AS s
            SET first_seen = least(s.first_seen, v_group.first_seen),
                last_seen = greatest(s.last_seen, v_group.last_seen)
            WHERE s.testbed_id = v_group.testbed_id
                AND s.period_start = v_group.period_start
                AND s.shape_id = v_shape_id
                AND (v_group.first_seen < s.first_seen OR v_group.last_seen > s.last_seen);
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
        -- (the first report of the testbed in the period, of a stored shape, as below for
        -- several testbeds, written for one)
        IF v_shape_id IS NOT NULL AND NOT v_known THEN
            WITH sets AS (
                INSERT INTO active_series._testbed_period (
                    testbed_id, period_start, organization_id, project_id, shape_id
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_group.organization_id,
                    v_group.project_id, v_shape_id
                )
            ),
            seen AS (
                INSERT INTO active_series._shape_seen (
                    testbed_id, period_start, shape_id, first_seen, last_seen
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_shape_id, v_group.first_seen,
                    v_group.last_seen
                )
            ),
            counted AS (
                INSERT INTO active_series._period_usage AS u (
                    organization_id, period_start, project_id, series_count
                )
                VALUES (v_group.organization_id, v_group.period_start, v_group.project_id, v_series)
                ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
                SET series_count = u.series_count + excluded.series_count
            )
            -- (the outbox row of _changed, in the same statement)
            INSERT INTO active_series._outbox (organization_id, period_start, reason)
            VALUES (v_group.organization_id, v_group.period_start, 'ingest');
            -- the count rose: _check_rises for one group, its watched flag read with the
            -- period (a re-recording never comes this way)
            IF v_watched IS NULL THEN
                -- (several metrics of one testbed: the period came from _period_for)
                SELECT w.watched INTO v_watched
                FROM active_series._period AS w
                WHERE w.organization_id = v_group.organization_id
                    AND w.period_start = v_group.period_start;
            END IF;
            IF v_watched AND pg_trigger_depth() > 0 THEN
                PERFORM
                FROM active_series.project AS p
                WHERE p.id = v_group.project_id AND p.deleted_at IS NULL;
                IF FOUND THEN
                    PERFORM active_series._check_usage(
                        v_group.organization_id, v_group.period_start
                    );
                END IF;
            END IF;
            RETURN;
        END IF;
        v_groups := ARRAY[v_group];
    ELSE
        PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
        v_groups := ARRAY(
            SELECT active_series._shape_group(
                p_organization_id => g.organization_id,
                p_project_id => g.project_id,
                p_testbed_id => g.testbed_id,
                p_period_start => g.period_start,
                p_first_seen => g.first_seen,
                p_last_seen => g.last_seen,
                p_benchmark_ids => g.benchmark_ids,
                p_variant_ids => g.variant_ids,
                p_measure_ids => g.measure_ids,
                p_shape_id => active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
            FROM unnest(v_groups) AS g
        );
        IF active_series._widen(v_groups) = cardinality(v_groups) THEN
            RETURN;
        END IF;
    END IF;

    -- The first report of a testbed in a period (a new testbed, or the first report after
    -- the period changed) of a shape already stored: the shape is the testbed's period
    -- shape, so one statement writes what _record_groups would, in the same key order: the
    -- period shapes, the sightings, the counts grown by the shapes' sizes (_period_usage,
    -- key order) and the outbox rows. It holds when every activity is of a stored shape, no
    -- testbed has history in its period (under the history locks taken above: nothing else
    -- writes it meanwhile; so _widen did nothing) and no (testbed, period) has two
    -- activities. Else the general path.
    IF NOT EXISTS (
        SELECT
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
            OR (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
    )
    AND (
        SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(v_groups) AS g
    ) = cardinality(v_groups) THEN
        WITH g AS MATERIALIZED (
            SELECT
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.shape_id, s.series
            FROM unnest(v_groups) AS g
            CROSS JOIN LATERAL (
                SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
            ) AS s
        ),
        sets AS (
            INSERT INTO active_series._testbed_period (
                testbed_id, period_start, organization_id, project_id, shape_id
            )
            SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
            FROM g
            ORDER BY g.testbed_id, g.period_start
        ),
        seen AS (
            INSERT INTO active_series._shape_seen (
                testbed_id, period_start, shape_id, first_seen, last_seen
            )
            SELECT g.testbed_id, g.period_start, g.shape_id, g.first_seen, g.last_seen
            FROM g
            ORDER BY g.testbed_id, g.period_start, g.shape_id
        ),
        counted AS (
            INSERT INTO active_series._period_usage AS u (
                organization_id, period_start, project_id, series_count
            )
            SELECT g.organization_id, g.period_start, g.project_id, sum(g.series)
            FROM g
            GROUP BY g.organization_id, g.period_start, g.project_id
            ORDER BY g.organization_id, g.period_start, g.project_id
            ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
            SET series_count = u.series_count + excluded.series_count
        )
        -- (the outbox rows of _changed, one per (organization, period), in the same
        -- statement)
        INSERT INTO active_series._outbox (organization_id, period_start, reason)
        SELECT DISTINCT g.organization_id, g.period_start, 'ingest'
        FROM g
        ORDER BY g.organization_id, g.period_start;
        -- (each of those counts rose: the cap and the alerts)
        PERFORM active_series._check_rises(v_groups);
        RETURN;
    END IF;
    PERFORM active_series._record_groups(v_groups);
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';
-- ---------------------------------------------------------------- sql/functions/_check_rises.sql
CREATE OR REPLACE FUNCTION active_series._check_rises(p_groups active_series._shape_group[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- The recorder grew the counts of p_groups' (organization, period, project)s: check the cap
-- and the alerts (_check_usage) of each (organization, period), in key order (so the watch
-- rows lock in key order), when the rise comes from the ingest path, i.e. from within the
-- commit-time trigger (trigger depth above 0): re-bucketing by set_billing_period and CALL
-- backfill record from a top-level statement and are administrative (they never refuse and
-- never alert). A rise in a soft-deleted project changes no billed count. Most
-- organizations have neither a cap nor a threshold nor a bounded price tier: the period's
-- watched flag (_watched, kept by triggers/watch.sql) answers that in the same query,
-- without calling _check_usage (whose threshold list is a SQL function, planned at each
-- call); a tier bound that set_alert disabled still calls it, it decides exactly. The rises
-- of a re-recording after a hard delete (_rerecording) only undo its falls.
-- (_record_activity reads the flag with the period for one group.)
BEGIN
    IF pg_trigger_depth() < 1 THEN
        RETURN;
    END IF;
    PERFORM active_series._check_usage(c.organization_id, c.period_start)
    FROM (
        SELECT DISTINCT g.organization_id, g.period_start
        FROM unnest(p_groups) AS g
        WHERE EXISTS (
            SELECT FROM active_series.project AS p
            WHERE p.id = g.project_id AND p.deleted_at IS NULL
        )
        AND EXISTS (
            SELECT FROM active_series._period AS w
            WHERE w.organization_id = g.organization_id
                AND w.period_start = g.period_start
                AND w.watched
        )
        ORDER BY g.organization_id, g.period_start
    ) AS c
    WHERE NOT EXISTS (
        SELECT FROM active_series._rerecording AS r WHERE r.txid = txid_current()
    );
END;
$$;
COMMENT ON FUNCTION active_series._check_rises(active_series._shape_group[]) IS
'Internal: an ingest commit raised these periods'' counts; enforce the series cap and write alerts.';

-- ================================================================ no CHECK on the tables every report writes
-- (compiled at every statement that writes them; the invariants hold by construction and
-- verify() checks them: sql/tables/shape_seen.sql)
ALTER TABLE active_series._shape_seen DROP CONSTRAINT _shape_seen_check;
ALTER TABLE active_series._period_usage DROP CONSTRAINT _period_usage_series_count_check;
