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
-- anchor + k * interval (k >= 0, computed in UTC from the anchor each time, so month
-- lengths never drift), or the calendar month in UTC before the anchor / without one.
-- Clamped so that it never overlaps a recorded period. Reads only; takes no locks.
DECLARE
    v_anchor timestamptz;
    v_interval interval;
    v_anchor_utc timestamp;
    v_at_utc timestamp;
    v_months integer;
    v_k bigint;
    v_bound timestamptz;
BEGIN
    SELECT b.period_anchor, b.period_interval
    INTO v_anchor, v_interval
    FROM active_series.billing_account AS b
    WHERE b.organization_id = p_organization_id;

    v_at_utc := p_at AT TIME ZONE 'UTC';
    IF v_anchor IS NOT NULL AND p_at >= v_anchor THEN
        v_anchor_utc := v_anchor AT TIME ZONE 'UTC';
        v_months := extract(YEAR FROM v_interval)::integer * 12
            + extract(MONTH FROM v_interval)::integer;
        IF v_months > 0 THEN
            v_k := ((extract(YEAR FROM v_at_utc) - extract(YEAR FROM v_anchor_utc)) * 12
                + extract(MONTH FROM v_at_utc) - extract(MONTH FROM v_anchor_utc))::bigint
                / v_months;
            v_k := greatest(v_k - 1, 0);
        ELSE
            v_k := greatest(
                floor(extract(EPOCH FROM p_at - v_anchor) / extract(EPOCH FROM v_interval)) - 1,
                0
            )::bigint;
        END IF;
        WHILE v_anchor_utc + (v_k + 1) * v_interval <= v_at_utc LOOP
            v_k := v_k + 1;
        END LOOP;
        period_start := (v_anchor_utc + v_k * v_interval) AT TIME ZONE 'UTC';
        period_end := (v_anchor_utc + (v_k + 1) * v_interval) AT TIME ZONE 'UTC';
    ELSE
        period_start := date_trunc('month', v_at_utc) AT TIME ZONE 'UTC';
        period_end := (date_trunc('month', v_at_utc) + interval '1 month') AT TIME ZONE 'UTC';
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
