CREATE FUNCTION active_series._check_usage(
    p_organization_id bigint,
    p_period_start timestamptz
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- An ingest commit raised the period's billed count: refuse it beyond the organization's
-- series cap (SQLSTATE AS001; within the commit-time recording the refusal is noted for
-- _flush_pending to raise, see there), and write an alert row for every threshold the count
-- reached that has none in the period yet (no NOTIFY: see _changed; readers of alerts
-- poll them by id, `active-series alerts --follow`). Nothing to do,
-- and no lock, for an organization without a cap or thresholds.
-- Locks the period's _period_watch row (an upsert: a concurrent commit that raised the
-- count waits here until it is committed, and then counts with it; under REPEATABLE
-- READ it fails with a serialization error instead), so commits check one at a time.
DECLARE
    v_cap bigint;
    v_total bigint;
    v_refusal jsonb;
BEGIN
    SELECT b.series_cap INTO v_cap
    FROM active_series.billing_account AS b
    WHERE b.organization_id = p_organization_id;
    IF v_cap IS NULL
        AND NOT EXISTS (SELECT FROM active_series._alert_thresholds(p_organization_id)) THEN
        RETURN;
    END IF;

    INSERT INTO active_series._period_watch AS w (organization_id, period_start, series_count)
    VALUES (p_organization_id, p_period_start, 0)
    ON CONFLICT (organization_id, period_start) DO UPDATE
    SET checked_at = clock_timestamp();

    -- a new statement: it sees every commit that held the row before us
    SELECT coalesce(sum(u.series_count), 0)::bigint INTO v_total
    FROM active_series._billed_usage AS u
    WHERE u.organization_id = p_organization_id AND u.period_start = p_period_start;

    IF v_total > v_cap THEN
        v_refusal := jsonb_build_object(
            'sqlstate', 'AS001',
            'message', format(
                'active_series: organization %s is capped at %s active series; this commit '
                'would make %s in the period starting %s',
                p_organization_id, v_cap, v_total, p_period_start
            ),
            'detail', format(
                'organization_id=%s series_cap=%s series_count=%s',
                p_organization_id, v_cap, v_total
            ),
            'hint', 'Nothing of this transaction was written. Report fewer new series, or '
            'have an operator raise the cap: SELECT active_series.set_series_cap('
            || p_organization_id || ', <cap>) (NULL removes it).'
        );
        -- at commit, _flush_pending raises it (the first refusal of the commit wins)
        IF current_setting('active_series._refusal', true) = 'defer' THEN
            PERFORM set_config('active_series._refusal', v_refusal::text, true);
            RETURN;
        ELSIF current_setting('active_series._refusal', true) LIKE '{%' THEN
            RETURN;
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = v_refusal ->> 'sqlstate',
            MESSAGE = v_refusal ->> 'message',
            DETAIL = v_refusal ->> 'detail',
            HINT = v_refusal ->> 'hint';
    END IF;

    UPDATE active_series._period_watch AS w
    SET series_count = v_total
    WHERE w.organization_id = p_organization_id AND w.period_start = p_period_start;

    INSERT INTO active_series._alert AS a (
        organization_id, period_start, threshold, series_count, source
    )
    SELECT p_organization_id, p_period_start, t.threshold, v_total, t.source
    FROM active_series._alert_thresholds(p_organization_id) AS t
    WHERE t.threshold <= v_total
    ORDER BY t.threshold
    ON CONFLICT (organization_id, period_start, threshold) DO NOTHING;
END;
$$;
COMMENT ON FUNCTION active_series._check_usage(bigint, timestamptz) IS
'Internal: after an ingest commit raised a period''s count, enforce the series cap and write the alerts of the thresholds reached.';
