CREATE VIEW active_series.billing_drift AS
WITH finalized AS (
    SELECT
        p.organization_id,
        p.period_start,
        p.period_end,
        r.billed_value,
        coalesce(r.drift_since, r.finalized_at) AS since,
        (
            SELECT coalesce(sum(u.series_count), 0)::bigint
            FROM active_series._billed_usage AS u
            WHERE u.organization_id = p.organization_id AND u.period_start = p.period_start
        ) AS period_usage
    FROM active_series._relay_period AS r
    INNER JOIN active_series._period AS p
        ON r.organization_id = p.organization_id AND r.period_start = p.period_start
    WHERE r.finalized_at IS NOT NULL AND r.billed_value IS NOT NULL
)

SELECT
    f.organization_id,
    f.period_start,
    f.period_end,
    f.billed_value AS billed,
    f.period_usage,
    f.period_usage - f.billed_value AS difference,
    f.since
FROM finalized AS f
WHERE f.period_usage <> f.billed_value;
COMMENT ON VIEW active_series.billing_drift IS
'Finalized billing periods (their invoice grace is over: Stripe bills what it held then) whose exact usage now differs from what was billed: the difference to credit or charge by hand, and since when it exists.';
