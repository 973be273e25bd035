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
