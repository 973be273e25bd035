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
            'active_series._period_watch',
            'active_series._relay_confirmation',
            'active_series._post_attempt'
        ]::regclass [] LOOP
            PERFORM pg_catalog.pg_extension_config_dump(v_rel, '');
        END LOOP;
    END IF;
END;
$$;
-- the relay's record of the subscriptions' edges (sql/tables/relay_subscription.sql)
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        PERFORM pg_catalog.pg_extension_config_dump('active_series._relay_subscription', '');
    END IF;
END;
$$;
-- the relay's period state (sql/tables/relay_period.sql)
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'active_series') THEN
        PERFORM pg_catalog.pg_extension_config_dump('active_series._relay_period', '');
    END IF;
END;
$$;
