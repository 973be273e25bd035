CREATE FUNCTION active_series.set_billing_period(
    p_organization_id bigint,
    p_period_start timestamptz,
    p_period_end timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Makes [p_period_start, p_period_end) a billing period of the organization and the
-- anchor of the ones after it: they roll forward by the same interval (whole months when
-- the end is the start plus whole months in UTC, else the exact duration). Recorded
-- periods cut by either bound are split exactly; those inside are merged into it. Recorded
-- periods after the end are re-bucketed onto the new schedule the same way: each rolling
-- period [anchor + k * interval, anchor + (k + 1) * interval), k >= 1, that holds recorded
-- activity becomes one recorded period with exactly that history; the ones after the end
-- that hold none are dropped (derived again, on the schedule, when first used). The work
-- is one probe when nothing is recorded after the end, else one split and merge per
-- rolling period with activity (empty stretches are skipped, whatever the interval).
-- Locks: the organization's period lock, exclusively (waits for ingest in flight).
-- SECURITY DEFINER (EXECUTE: active_series_admin and active_series_worker only): the worker
-- follows the Stripe subscription's periods with it, and re-bucketing rewrites history,
-- counts and last_seen, which the worker must not be able to write directly.
DECLARE
    v_start_utc timestamp := p_period_start AT TIME ZONE 'UTC';
    v_end_utc timestamp := p_period_end AT TIME ZONE 'UTC';
    v_months integer;
    v_interval interval;
    v_at timestamptz;
    v_next timestamptz;
    v_first timestamptz;
    v_cell_start timestamptz;
    v_cell_end timestamptz;
BEGIN
    PERFORM active_series._require_organization(p_organization_id);
    IF p_period_start IS NULL OR p_period_end IS NULL THEN
        RAISE EXCEPTION 'active_series: a billing period needs a start and an end'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT (isfinite(p_period_start) AND isfinite(p_period_end)) THEN
        RAISE EXCEPTION 'active_series: billing period bounds must be finite'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_period_end <= p_period_start THEN
        RAISE EXCEPTION 'active_series: billing period end % is not after its start %',
            p_period_end, p_period_start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the same range as report.created (every client can read the periods), and no longer
    -- than Stripe's longest billing interval: anything else is a typo
    IF p_period_start < '1900-01-01 00:00:00+00' OR p_period_end > '9000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'active_series: a billing period must lie between 1900-01-01 and '
            '9000-01-01 UTC (got % to %)', p_period_start, p_period_end
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_period_end > p_period_start + interval '3 years' THEN
        RAISE EXCEPTION 'active_series: a billing period must not be longer than 3 years '
            '(got % to %)', p_period_start, p_period_end
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    PERFORM pg_advisory_xact_lock(_lock_key('period'), hashint8(p_organization_id));

    v_months := ((extract(YEAR FROM v_end_utc) - extract(YEAR FROM v_start_utc)) * 12
        + extract(MONTH FROM v_end_utc) - extract(MONTH FROM v_start_utc))::integer;
    IF v_months >= 1 AND v_start_utc + make_interval(months => v_months) = v_end_utc THEN
        v_interval := make_interval(months => v_months);
    ELSE
        v_interval := make_interval(secs => extract(EPOCH FROM p_period_end - p_period_start));
    END IF;

    PERFORM active_series._split_period(p_organization_id, p_period_start);
    PERFORM active_series._split_period(p_organization_id, p_period_end);
    PERFORM active_series._merge_periods(p_organization_id, p_period_start, p_period_end);

    -- the recorded periods after the end, onto the rolling schedule; no recorded period
    -- crosses v_at at the top of the loop (split there before)
    v_at := p_period_end;
    LOOP
        -- the first recorded period from v_at on that holds activity, and its first activity
        SELECT t.period_start INTO v_next
        FROM active_series._testbed_period AS t
        WHERE t.organization_id = p_organization_id AND t.period_start >= v_at
        ORDER BY t.period_start
        LIMIT 1;
        IF v_next IS NULL THEN
            -- nothing recorded from v_at on holds activity
            DELETE FROM active_series._period AS p
            WHERE p.organization_id = p_organization_id AND p.period_start >= v_at;
            EXIT;
        END IF;
        SELECT min(s.first_seen) INTO v_first
        FROM active_series._testbed_period AS t
        INNER JOIN active_series._shape_seen AS s
            ON s.testbed_id = t.testbed_id AND s.period_start = t.period_start
        WHERE t.organization_id = p_organization_id AND t.period_start = v_next;
        v_first := greatest(coalesce(v_first, v_next), v_next);

        -- the rolling period containing v_first (k >= 1: v_first >= the end)
        SELECT r.period_start, r.period_end INTO v_cell_start, v_cell_end
        FROM active_series._rolling_period(p_period_start, v_interval, v_first) AS r;

        PERFORM active_series._split_period(p_organization_id, v_cell_start);
        PERFORM active_series._split_period(p_organization_id, v_cell_end);
        -- what lies before the cell holds no activity (v_first is the first from v_at on)
        DELETE FROM active_series._period AS p
        WHERE p.organization_id = p_organization_id
            AND p.period_start >= v_at
            AND p.period_start < v_cell_start;
        PERFORM active_series._merge_periods(p_organization_id, v_cell_start, v_cell_end);
        v_at := v_cell_end;
    END LOOP;

    INSERT INTO active_series.billing_account AS b (
        organization_id, period_anchor, period_interval
    )
    VALUES (p_organization_id, p_period_start, v_interval)
    ON CONFLICT (organization_id) DO UPDATE
    SET period_anchor = excluded.period_anchor,
        period_interval = excluded.period_interval,
        updated_at = now();
    PERFORM active_series._changed(p_organization_id, p_period_start, 'billing_period');
END;
$$;
COMMENT ON FUNCTION active_series.set_billing_period(bigint, timestamptz, timestamptz) IS
'Set an organization''s billing period [start, end); later periods roll forward by the same interval. History is re-bucketed exactly.';
