-- The public SQL API: signatures, comments, pinned search_path, indexes behind foreign keys,
-- the usage view, and one ingest counted end to end. Runs in a transaction that rolls back.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
-- ingest activity is recorded at commit; this file rolls back, so record it per statement
SET CONSTRAINTS active_series.pending_flush IMMEDIATE;
SELECT plan(46);

-- ---------------------------------------------------------------- signatures
SELECT has_function(
    'active_series', 'count_active',
    ARRAY['bigint', 'timestamp with time zone', 'timestamp with time zone', 'text'],
    'count_active(org, from, to, visibility)'
);
SELECT function_returns(
    'active_series', 'count_active',
    ARRAY['bigint', 'timestamp with time zone', 'timestamp with time zone', 'text'], 'bigint'
);
SELECT matches(
    pg_get_function_arguments('active_series.count_active(bigint, timestamptz, timestamptz, text)'
        ::regprocedure),
    '^p_organization_id bigint, p_from timestamp with time zone, '
    'p_to timestamp with time zone, p_visibility text DEFAULT NULL',
    'count_active: parameter names, visibility defaults to NULL'
);

SELECT has_function(
    'active_series', 'period_usage', ARRAY['bigint', 'timestamp with time zone'],
    'period_usage(org, period_start)'
);
SELECT function_returns(
    'active_series', 'period_usage', ARRAY['bigint', 'timestamp with time zone'], 'bigint'
);
SELECT matches(
    pg_get_function_arguments('active_series.period_usage(bigint, timestamptz)'::regprocedure),
    '^p_organization_id bigint, p_period_start timestamp with time zone DEFAULT NULL',
    'period_usage: period_start defaults to NULL (the current period)'
);

SELECT has_function(
    'active_series', 'period_series', ARRAY['bigint', 'timestamp with time zone'],
    'period_series(org, period_start)'
);
SELECT is(
    pg_get_function_result('active_series.period_series(bigint, timestamptz)'::regprocedure),
    'TABLE(project_id bigint, testbed_id bigint, benchmark_id bigint, variant_id bigint, '
    'measure_id bigint, first_seen timestamp with time zone, last_seen timestamp with time zone)',
    'period_series returns the series with their bounds in the period'
);
SELECT matches(
    pg_get_function_arguments('active_series.period_series(bigint, timestamptz)'::regprocedure),
    '^p_organization_id bigint, p_period_start timestamp with time zone DEFAULT NULL',
    'period_series: period_start defaults to NULL (the current period)'
);

SELECT has_function('active_series', 'periods', ARRAY['bigint'], 'periods(org)');

SELECT has_function('active_series', 'current_period', ARRAY['bigint'], 'current_period(org)');
SELECT is(
    pg_get_function_result('active_series.current_period(bigint)'::regprocedure),
    'TABLE(period_start timestamp with time zone, period_end timestamp with time zone)',
    'current_period returns (period_start, period_end)'
);

SELECT has_function(
    'active_series', 'set_billing_period',
    ARRAY['bigint', 'timestamp with time zone', 'timestamp with time zone'],
    'set_billing_period(org, start, end)'
);
SELECT is(
    pg_get_function_arguments(
        'active_series.set_billing_period(bigint, timestamptz, timestamptz)'::regprocedure),
    'p_organization_id bigint, p_period_start timestamp with time zone, '
    'p_period_end timestamp with time zone',
    'set_billing_period: parameter names'
);

SELECT has_function(
    'active_series', 'set_stripe_customer', ARRAY['bigint', 'text', 'text'],
    'set_stripe_customer(org, customer, plan)'
);
SELECT matches(
    pg_get_function_arguments('active_series.set_stripe_customer(bigint, text, text)'
        ::regprocedure),
    '^p_organization_id bigint, p_stripe_customer_id text, p_plan text DEFAULT ''pro''',
    'set_stripe_customer: plan defaults to pro'
);

SELECT has_function(
    'active_series', 'backfill', ARRAY['integer'], 'backfill(batch_size), callable as backfill()'
);
SELECT matches(
    pg_get_function_arguments('active_series.backfill(integer)'::regprocedure),
    'DEFAULT ',
    'backfill: the batch size has a default'
);
SELECT is(
    (SELECT prokind FROM pg_proc WHERE oid = 'active_series.backfill(integer)'::regprocedure),
    'p'::"char",
    'backfill is a procedure (it commits between batches)'
);

SELECT has_function('active_series', 'verify', ARRAY['bigint'], 'verify(org)');
SELECT is(
    pg_get_function_result('active_series.verify(bigint)'::regprocedure),
    'TABLE(organization_id bigint, problem text, detail text)',
    'verify returns (organization_id, problem, detail)'
);
SELECT matches(
    pg_get_function_arguments('active_series.verify(bigint)'::regprocedure),
    'DEFAULT NULL',
    'verify: organization defaults to NULL (all organizations)'
);

SELECT has_view('active_series', 'usage', 'the usage view for psql');

-- ---------------------------------------------------------------- conventions
SELECT is_empty(
    $$ SELECT p.oid::regprocedure::text FROM pg_proc AS p
       WHERE p.pronamespace = 'active_series'::regnamespace
         AND obj_description(p.oid, 'pg_proc') IS NULL $$,
    'every function and procedure in the schema has a comment'
);
-- (A procedure that commits cannot carry a SET clause: procedures are exempt. So are the
-- row readers of sql/functions/_model_rows.sql and period_series: the planner inlines a SQL
-- function only without SET options; they run as their caller, name everything
-- schema-qualified, and the next test keeps them from being SECURITY DEFINER; nor the
-- report_benchmark project check, _benchmark_elsewhere, inlined into its trigger's query for
-- the same reason; nor the constructor _shape_group, inlined into the expressions that build
-- the composite.)
SELECT is_empty(
    $$ SELECT p.oid::regprocedure::text FROM pg_proc AS p
       WHERE p.pronamespace = 'active_series'::regnamespace AND p.prokind <> 'p'
         AND p.proname NOT IN (
             '_organization_rows', '_project_rows', '_variant_rows', 'period_series',
             '_benchmark_elsewhere', '_shape_group'
         )
         AND NOT EXISTS (
             SELECT 1 FROM unnest(p.proconfig) AS c(setting)
             WHERE c.setting LIKE 'search\_path=%') $$,
    'every function in the schema pins search_path'
);
SELECT is_empty(
    $$ SELECT p.oid::regprocedure::text FROM pg_proc AS p
       WHERE p.pronamespace = 'active_series'::regnamespace AND p.prosecdef
         AND NOT EXISTS (
             SELECT 1 FROM unnest(p.proconfig) AS c(setting)
             WHERE c.setting LIKE 'search\_path=%pg\_temp') $$,
    'every SECURITY DEFINER function puts pg_temp last in its search_path'
);
SELECT isnt_empty(
    $$ SELECT 1 FROM pg_constraint
       WHERE contype = 'f' AND connamespace = 'active_series'::regnamespace $$,
    'the schema has foreign keys'
);
SELECT is_empty(
    $$ SELECT c.conrelid::regclass::text || ' ' || c.conname FROM pg_constraint AS c
       WHERE c.contype = 'f' AND c.connamespace = 'active_series'::regnamespace
         AND NOT EXISTS (
             SELECT 1 FROM pg_index AS i
             WHERE i.indrelid = c.conrelid AND i.indpred IS NULL
               AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
               AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey) $$,
    'an index leads with the columns of every foreign key'
);
SELECT has_trigger('active_series', 'metric', 'active_series_metric_inserted', 'the ingest trigger');
SELECT is(
    (SELECT tgtype & 1 = 0 AND tgtype & 4 = 4 AND tgtype & 2 = 0 FROM pg_trigger
     WHERE tgrelid = 'active_series.metric'::regclass AND tgname = 'active_series_metric_inserted'),
    true,
    'active_series_metric_inserted is a statement-level AFTER INSERT trigger'
);

-- ---------------------------------------------------------------- behaviour
INSERT INTO active_series.organization (name) VALUES ('pgtap-org');
INSERT INTO active_series.project (organization_id, name, visibility)
SELECT id, 'p', 'private' FROM active_series.organization WHERE name = 'pgtap-org';
INSERT INTO active_series.testbed (project_id, name)
SELECT id, 'linux' FROM active_series.project WHERE name = 'p';
INSERT INTO active_series.benchmark (project_id, name)
SELECT id, 'bm' FROM active_series.project WHERE name = 'p';
INSERT INTO active_series.measure (project_id, name)
SELECT id, 'latency' FROM active_series.project WHERE name = 'p';
INSERT INTO active_series.report (project_id, testbed_id, start_time, end_time)
SELECT p.id, t.id, now(), now()
FROM active_series.project AS p JOIN active_series.testbed AS t ON t.project_id = p.id
WHERE p.name = 'p';
INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
SELECT r.id, b.id, i
FROM active_series.report AS r JOIN active_series.benchmark AS b ON b.project_id = r.project_id,
    generate_series(0, 1) AS i;
-- Two metrics of one series in one statement, then the same series again.
INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
SELECT rb.id, m.id, 1.5
FROM active_series.report_benchmark AS rb
JOIN active_series.benchmark AS b ON b.id = rb.benchmark_id
JOIN active_series.measure AS m ON m.project_id = b.project_id;
INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
SELECT rb.id, m.id, 2.5
FROM active_series.report_benchmark AS rb
JOIN active_series.benchmark AS b ON b.id = rb.benchmark_id
JOIN active_series.measure AS m ON m.project_id = b.project_id
WHERE rb.iteration = 0;

CREATE TEMP TABLE pgtap_org ON COMMIT DROP AS
SELECT id FROM active_series.organization WHERE name = 'pgtap-org';

SELECT is(
    active_series.period_usage((SELECT id FROM pgtap_org)), 1::bigint,
    'one series ingested three times: period_usage = 1'
);
SELECT is(
    active_series.count_active(
        (SELECT id FROM pgtap_org), now() - interval '1 hour', now() + interval '1 hour'),
    1::bigint,
    'count_active sees the series'
);
SELECT is(
    active_series.count_active(
        (SELECT id FROM pgtap_org), now() - interval '1 hour', now() + interval '1 hour',
        'public'),
    0::bigint,
    'count_active of public projects does not see a private series'
);
SELECT is(
    (SELECT count(*) FROM active_series.period_series((SELECT id FROM pgtap_org))),
    1::bigint,
    'period_series lists the series'
);
SELECT is(
    (SELECT first_seen = now() AND last_seen = now()
     FROM active_series.period_series((SELECT id FROM pgtap_org))),
    true,
    'the series was first and last seen at the transaction time'
);
SELECT is(
    (SELECT count(*) FROM active_series._outbox
     WHERE organization_id = (SELECT id FROM pgtap_org)),
    1::bigint,
    'one outbox row: only the first statement changed the count'
);
SELECT is_empty(
    $$ SELECT * FROM active_series.verify((SELECT id FROM pgtap_org)) $$,
    'verify finds nothing wrong'
);
SELECT ok(
    (SELECT period_start <= now() AND now() < period_end
     FROM active_series.current_period((SELECT id FROM pgtap_org))),
    'the current period contains now()'
);
SELECT is(
    (SELECT organization_id FROM active_series.usage
     WHERE organization_id = (SELECT id FROM pgtap_org)),
    (SELECT id FROM pgtap_org),
    'the usage view has a row for the organization'
);

UPDATE active_series.project SET deleted_at = now() WHERE name = 'p';
SELECT is(
    active_series.period_usage((SELECT id FROM pgtap_org)), 0::bigint,
    'a soft-deleted project is not counted'
);
UPDATE active_series.project SET deleted_at = NULL WHERE name = 'p';
SELECT is(
    active_series.period_usage((SELECT id FROM pgtap_org)), 1::bigint,
    'restoring the project counts it again'
);

SELECT throws_ok(
    $$ SELECT active_series.period_usage(-42) $$,
    'P0002', NULL,
    'an unknown organization raises no_data_found'
);
INSERT INTO active_series.project (organization_id, name, visibility)
SELECT id, 'pgtap_other', 'private' FROM pgtap_org;
INSERT INTO active_series.benchmark (project_id, name)
SELECT id, 'elsewhere' FROM active_series.project WHERE name = 'pgtap_other';
SELECT throws_ok(
    $$ INSERT INTO active_series.report_benchmark (report_id, benchmark_id, iteration)
       SELECT r.id, b.id, 0 FROM active_series.report AS r, active_series.benchmark AS b
       WHERE b.name = 'elsewhere' LIMIT 1 $$,
    '23503', NULL,
    'a report_benchmark of another project''s benchmark is refused when inserted'
);
SELECT throws_ok(
    $$ INSERT INTO active_series.metric (report_benchmark_id, measure_id, value)
       SELECT rb.id, m.id, 'NaN' FROM active_series.report_benchmark AS rb,
           active_series.measure AS m LIMIT 1 $$,
    NULL, NULL,
    'a NaN metric value is rejected'
);

-- ---------------------------------------------------------------- relay timestamps
-- a period of seconds 0..9999 (tail 6400..9999, its second half from 8200 kept for the posts
-- after the end), a 2-minute period (a one-minute tail, halved) and the tails under a minute
-- of test periods of 2 and 4 seconds, kept whole
SELECT results_eq(
    $$ SELECT c.what, t.event_timestamp, t.due_second
       FROM (VALUES
           ('running: now', NULL, 0, 9999, 100),
           ('running: after the held second, deferred', 100, 0, 9999, 100),
           ('tail: half-speed time', 6000, 0, 9999, 7400),
           ('tail: after the held second, due at twice its distance', 6900, 0, 9999, 7400),
           ('tail: its last second', 8000, 0, 9999, 9999),
           ('ended: the second half', 8199, 0, 9999, 10000),
           ('ended: the second half, whatever was held', 5000, 0, 9999, 12000),
           ('ended: after the held second', 8200, 0, 9999, 12000),
           ('one-second tail: the change waits', 0, 0, 1, 1),
           ('one-second tail: ended', 0, 0, 1, 2),
           ('one-minute tail: half-speed time', 50, 0, 119, 70),
           ('one-minute tail: ended', 70, 0, 119, 121),
           ('two-second tail: the change waits', 1, 0, 3, 2),
           ('two-second tail: full', 2, 0, 3, 3),
           ('two-second tail: ended', 2, 0, 3, 4)
       ) AS c (what, held, first_second, last_second, now)
       CROSS JOIN LATERAL active_series._relay_timestamp(
           c.held::bigint, c.first_second::bigint, c.last_second::bigint, c.now::bigint
       ) AS t $$,
    $$ VALUES
       ('running: now', 100::bigint, 100::bigint),
       ('running: after the held second, deferred', 101, 101),
       ('tail: half-speed time', 6900, 7400),
       ('tail: after the held second, due at twice its distance', 6901, 7402),
       ('tail: its last second', 8199, 9998),
       ('ended: the second half', 8200, 8200),
       ('ended: the second half, whatever was held', 8200, 8200),
       ('ended: after the held second', 8201, 8201),
       ('one-second tail: the change waits', NULL, NULL),
       ('one-second tail: ended', 1, 1),
       ('one-minute tail: half-speed time', 65, 70),
       ('one-minute tail: ended', 90, 90),
       ('two-second tail: the change waits', NULL, NULL),
       ('two-second tail: full', NULL, NULL),
       ('two-second tail: ended', 3, 3) $$,
    '_relay_timestamp: now while the period runs, half-speed time in its tail, the tail''s second half after its end (all of a tail under a minute)'
);

SELECT is_empty(
    $$ SELECT p.oid::regprocedure::text FROM pg_proc AS p
       WHERE p.pronamespace = 'active_series'::regnamespace
         AND p.proname <> '_shape_group'
         AND p.prosrc ~* '::\s*active_series\._shape_group\M' $$,
    'the recorder''s composite is built by field name, through its constructor only'
);
SELECT * FROM finish();
ROLLBACK;
