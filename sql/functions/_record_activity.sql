CREATE FUNCTION active_series._record_activity(
    p_report_benchmark_ids bigint[],
    p_measure_ids bigint[]
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
-- It runs at every ingest commit, against tables that grow by the minute, and its plans
-- (and those of what it calls) are cached for the session's life: generic plans, so that
-- nothing is planned per call, on index paths (plain index scans: a bitmap costs more to
-- set up than the few rows each lookup reads), so that a plan cached while a table was
-- small does not scan it whole once it is large.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
-- Records metrics, given as (report_benchmark, measure) pairs (the ingest trigger passes a
-- whole transaction's at commit, backfill a batch of reports'), in the history and the
-- per-period counts: each report_benchmark is looked up once (its report, project and
-- variant), the pairs become one set of series per (testbed, report.created), each in the
-- billing period containing that time, and _record_groups writes them. A variant_id that
-- is NULL, or names the benchmark's empty variant, is variant 0 in the sets.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its one set, looked up directly
        v_groups := ARRAY(
            SELECT row(
                p.organization_id, r.project_id, r.testbed_id, f.period_start, r.created,
                r.created, ARRAY[rb.benchmark_id],
                ARRAY[
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END
                ],
                p_measure_ids, NULL
            )::active_series._shape_group
            FROM active_series.report_benchmark AS rb
            INNER JOIN active_series.report AS r ON r.id = rb.report_id
            INNER JOIN active_series.project AS p ON p.id = r.project_id
            CROSS JOIN LATERAL active_series._period_for(p.organization_id, r.created) AS f
            WHERE rb.id = p_report_benchmark_ids[1]
        );
    ELSE
        -- (each report_benchmark, then each report, looked up once; OFFSET 0 keeps each
        -- LATERAL subquery a per-row index lookup, whatever the statistics said when this plan
        -- was cached)
        v_groups := ARRAY(
            WITH rbs AS MATERIALIZED (
                SELECT
                    rb.id, rb.report_id, rb.benchmark_id,
                    -- (without a variant_id, as most reports send, no call)
                    CASE
                        WHEN rb.variant_id IS NULL THEN 0
                        ELSE active_series._variant_key(rb.variant_id)
                    END AS variant_id
                FROM active_series.report_benchmark AS rb
                WHERE rb.id = ANY(p_report_benchmark_ids)
            ),
            reports AS MATERIALIZED (
                SELECT d.report_id, k.*
                FROM (SELECT DISTINCT b.report_id FROM rbs AS b) AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            k AS (
                SELECT b.id, b.benchmark_id, b.variant_id, r.project_id, r.testbed_id, r.created,
                    r.organization_id
                FROM rbs AS b
                INNER JOIN reports AS r ON r.report_id = b.report_id
            ),
            series AS MATERIALIZED (
                SELECT
                    k.organization_id, k.project_id, k.testbed_id, k.created, k.benchmark_id,
                    k.variant_id, x.measure_id
                FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                INNER JOIN k ON k.id = x.id
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM series AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            )
            -- (one sort: the series come distinct and in set order, and each set's arrays
            -- are aggregated in that order; an order lost would only store a set twice)
            SELECT row(
                s.organization_id, s.project_id, s.testbed_id, s.period_start, s.created,
                s.created, array_agg(s.benchmark_id), array_agg(s.variant_id),
                array_agg(s.measure_id), NULL
            )::active_series._shape_group
            FROM (
                SELECT DISTINCT
                    s.organization_id, s.project_id, s.testbed_id, t.period_start, s.created,
                    s.benchmark_id, s.variant_id, s.measure_id
                FROM series AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
                ORDER BY
                    s.organization_id, s.project_id, s.testbed_id, t.period_start, s.created,
                    s.benchmark_id, s.variant_id, s.measure_id
            ) AS s
            GROUP BY s.organization_id, s.project_id, s.testbed_id, s.period_start, s.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same set of series as before in the period,
    -- later than before: one HOT update of that set's row per testbed (_widen). Anything
    -- else (a set or a period new to the testbed, older activity) goes to _record_groups,
    -- which finds what these updates already did and leaves it.
    PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
    v_groups := ARRAY(
        SELECT row(
            g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
            g.last_seen, g.benchmark_ids, g.variant_ids, g.measure_ids,
            active_series._find_shape(g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids)
        )::active_series._shape_group
        FROM unnest(v_groups) AS g
    );
    IF active_series._widen(v_groups) < cardinality(v_groups) THEN
        PERFORM active_series._record_groups(v_groups);
    END IF;
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';
