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
-- Insert and read the reference data model. Soft-delete and restore projects (and change
-- their visibility); hard-delete what an application deletes (reports and their rows,
-- testbeds, benchmarks, measures, projects: deleting a report never lowers a count, a hard
-- delete removes the series, as for any client). Not: organizations (their deletion
-- cascades the billing account and the ledger), any other UPDATE (key columns are refused
-- for everybody), any billing table, any function.
GRANT SELECT, INSERT ON active_series.organization TO active_series_ingest;
GRANT SELECT, INSERT, DELETE ON
active_series.project,
active_series.testbed,
active_series.benchmark,
active_series.variant,
active_series.measure,
active_series.report,
active_series.report_benchmark,
active_series.metric,
active_series.branch
TO active_series_ingest;
GRANT UPDATE (deleted_at, visibility) ON active_series.project TO active_series_ingest;
-- archiving hides a testbed, benchmark or measure in the application (it is still billed)
GRANT UPDATE (archived) ON
active_series.testbed,
active_series.benchmark,
active_series.measure
TO active_series_ingest;
-- the identity columns' sequences (INSERT needs none; nextval() for client-side ids)
GRANT USAGE ON SEQUENCE
active_series.organization_id_seq,
active_series.project_id_seq,
active_series.testbed_id_seq,
active_series.benchmark_id_seq,
active_series.variant_id_seq,
active_series.measure_id_seq,
active_series.report_id_seq,
active_series.report_benchmark_id_seq,
active_series.metric_id_seq,
active_series.branch_id_seq
TO active_series_ingest;

-- ---------------------------------------------------------------- active_series_worker
-- Exactly what python/active_series/relay/ (its queries.py) uses: find and claim relay
-- work, delete the outbox rows it relayed, read counts and billing accounts, write the
-- ledger and its relay state, close periods, and follow the Stripe subscription's billing
-- period (set_billing_period, SECURITY DEFINER). Plus the read API, for `relay status`.
GRANT SELECT ON active_series._meta TO active_series_worker;
GRANT SELECT ON
active_series.organization,
active_series.project,
active_series.billing_account,
active_series._period,
active_series._period_usage,
active_series._billed_usage,
active_series._shape,
active_series._shape_seen,
active_series._testbed_period,
active_series._series_history,
active_series.series_last_seen,
active_series.variant,
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
-- report_set_created trigger against membership in this role). No TRUNCATE, no DDL.
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
active_series.organization,
active_series.project,
active_series.testbed,
active_series.benchmark,
active_series.variant,
active_series.measure,
active_series.branch,
active_series.report,
active_series.report_benchmark,
active_series.metric,
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
active_series.usage_summary(bigint)
TO active_series_reader;
