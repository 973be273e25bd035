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
GRANT USAGE ON SCHEMA active_series TO active_series_tenant;

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
active_series._read_testbed_period,
active_series._read_shape_seen,
active_series._read_shape,
active_series.series_last_seen,
active_series.usage,
active_series.relay_status,
active_series.relay_failures,
active_series.relay_periods,
active_series.billing_drift
TO active_series_worker;
GRANT SELECT, DELETE ON active_series._outbox TO active_series_worker;
-- the ledger: read here, written only through the relay's ledger rules (SECURITY DEFINER)
GRANT SELECT ON active_series._ledger TO active_series_worker;
GRANT SELECT, INSERT, UPDATE ON active_series._relay_confirmation TO active_series_worker;
-- the posts each request carried: written through the relay's rules only (SECURITY DEFINER)
GRANT SELECT ON active_series._post_attempt TO active_series_worker;
-- the organizations' relay state: written through the relay's rules only (SECURITY
-- DEFINER); _relay_work (caller's rights) adds the missing rows, with defaults only, and
-- _relay_claim locks rows FOR UPDATE, which takes the UPDATE right of some column: of
-- updated_at, the one bookkeeping column nothing decides on
GRANT SELECT ON active_series._relay_state TO active_series_worker;
GRANT INSERT (organization_id) ON active_series._relay_state TO active_series_worker;
GRANT UPDATE (updated_at) ON active_series._relay_state TO active_series_worker;
-- the relay's period state: read here, written only through the rule functions below
-- (SECURITY DEFINER): the worker writes no column of _period
GRANT SELECT ON active_series._relay_period TO active_series_worker;
-- the subscription's edges the claims respect (ended, scheduled cancellation, item start)
GRANT SELECT, INSERT, UPDATE ON active_series._relay_subscription
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
active_series._relay_expected(text, timestamptz, timestamptz),
active_series._relay_identifier(text, bigint, bigint),
active_series._relay_instance(),
active_series._relay_close_period(bigint, timestamptz),
active_series._relay_finalize_period(bigint, timestamptz, bigint),
active_series._relay_finalize_unbilled(bigint, timestamptz, timestamptz),
active_series._relay_note_drift(bigint[]),
active_series._relay_ledger_pending(
    bigint[], text[], timestamptz[], timestamptz[], bigint[], bigint[], float8[]
),
active_series._relay_ledger_in_flight(text[], float8[]),
active_series._relay_ledger_outcomes(text[], boolean[], text[], text[]),
active_series._relay_ledger_failed(bigint, text, timestamptz, timestamptz, bigint, bigint, text),
active_series._relay_ledger_refused(text[], text[]),
active_series._relay_done(bigint[], bigint[]),
active_series._relay_defer(bigint[], float8[]),
active_series._relay_count_attempt(bigint),
active_series._relay_park(bigint, text),
active_series._relay_note_attempts(text[], text[]),
active_series._relay_prune_attempts(),
active_series._require_organization(bigint),
active_series._organization_rows(),
active_series._project_rows(),
active_series._variant_rows(),
active_series._period_at(bigint, timestamptz),
active_series._recorded_period(bigint, timestamptz),
active_series._rolling_period(timestamptz, interval, timestamptz),
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
-- they read billing tables the reader may not read itself; period_series (inlined) reads
-- the history through the _read_* views instead. No billing table, no ledger,
-- no relay internals, no writes. (Granted after the admin's, as an upgrade adds them.)
GRANT SELECT ON
active_series.usage,
active_series.relay_status,
active_series.alerts
TO active_series_reader;
-- the read commands of the CLI: it checks the schema's version and that tables are attached
-- (neither table holds an organization's data), and `relay failures` reads its view
GRANT SELECT ON active_series._meta, active_series._attachment TO active_series_reader;
GRANT SELECT ON active_series.relay_failures TO active_series_reader;
-- period_series runs with its caller's rights (inlined into the caller's query): it reads
-- the history through these views, which read the tables with their owner's. The reader
-- sees every organization's series through period_series anyway; now also through these.
GRANT SELECT ON
active_series._read_testbed_period,
active_series._read_shape_seen,
active_series._read_shape
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

-- ---------------------------------------------------------------- active_series_tenant
-- A tenant's dashboard: the tenant_* read functions (SECURITY DEFINER), each for the
-- organization the connection's setting active_series.organization_id names. No table, no
-- view, no other function: not the reader's API, which takes any organization.
GRANT EXECUTE ON FUNCTION
active_series.tenant_usage(),
active_series.tenant_period_usage(timestamptz),
active_series.tenant_periods(),
active_series.tenant_period_series(timestamptz),
active_series.tenant_price_preview(timestamptz),
active_series.tenant_usage_summary(),
active_series.tenant_alerts()
TO active_series_tenant;
