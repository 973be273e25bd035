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
