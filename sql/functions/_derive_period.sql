CREATE FUNCTION active_series._derive_period(
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
