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
