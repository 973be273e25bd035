-- The schema is installed and records its version.
-- Every file in tests/sql runs in its own transaction and rolls it back.
BEGIN;
SELECT plan(2);

SELECT has_schema('active_series', 'the active_series schema exists');
SELECT has_column(
    'active_series', '_meta', 'version',
    'the installed version is recorded in active_series._meta'
);

SELECT * FROM finish();
ROLLBACK;
