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
-- variant), the pairs become one activity per (testbed, report.created): its series, in
-- the billing period containing that time (the words: docs/DESIGN-NOTES.md), and
-- _record_groups writes them. A variant_id that is NULL, or names the benchmark's empty
-- variant, is variant 0.
-- Locks: the organizations' period locks (shared, _period_for, in organization order); the
-- testbeds' history locks (_lock_testbeds); then what _record_groups takes.
DECLARE
    v_groups active_series._shape_group [];
    v_group active_series._shape_group;
    v_shape_id bigint;
    v_series integer;
    v_known boolean;
    v_set_id bigint;
    v_watched boolean;
    v_organization_id bigint;
    v_project_id bigint;
    v_testbed_id bigint;
    v_created timestamptz;
    v_benchmark_id bigint;
    v_variant_id bigint;
    v_period_start timestamptz;
    v_period_end timestamptz;
BEGIN
    IF p_report_benchmark_ids IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(p_report_benchmark_ids) = 1 THEN
        -- one metric's series (the smallest report): its activity, looked up directly, in
        -- plain statements (a function in the join would be a table function: a tuplestore
        -- per call)
        SELECT
            p.organization_id, r.project_id, r.testbed_id, r.created, rb.benchmark_id,
            CASE
                WHEN rb.variant_id IS NULL THEN 0
                ELSE active_series._variant_key(rb.variant_id)
            END
        INTO v_organization_id, v_project_id, v_testbed_id, v_created, v_benchmark_id,
            v_variant_id
        FROM active_series.report_benchmark AS rb
        INNER JOIN active_series.report AS r ON r.id = rb.report_id
        INNER JOIN active_series.project AS p ON p.id = r.project_id
        WHERE rb.id = p_report_benchmark_ids[1];
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- its period: _period_for's probe of the recorded one written out (under the
        -- organization's period lock, as there), the call only to record a new one; with
        -- it, whether the organization watches its count (for a first report, below)
        PERFORM pg_advisory_xact_lock_shared(_lock_key('period'), hashint8(v_organization_id));
        -- (the latest that began by then, which holds that time unless it ended before)
        SELECT p.period_start, p.period_end, p.watched
        INTO v_period_start, v_period_end, v_watched
        FROM active_series._period AS p
        WHERE p.organization_id = v_organization_id AND p.period_start <= v_created
        ORDER BY p.period_start DESC
        LIMIT 1;
        IF v_period_end <= v_created THEN
            v_period_start := NULL;
        END IF;
        IF v_period_start IS NULL THEN
            v_period_start := (
                active_series._period_for(v_organization_id, v_created)
            ).period_start;
            v_watched := active_series._watched(v_organization_id);
        END IF;
        v_groups := ARRAY[
            active_series._shape_group(
                p_organization_id => v_organization_id,
                p_project_id => v_project_id,
                p_testbed_id => v_testbed_id,
                p_period_start => v_period_start,
                p_first_seen => v_created,
                p_last_seen => v_created,
                p_benchmark_ids => ARRAY[v_benchmark_id],
                p_variant_ids => ARRAY[v_variant_id],
                p_measure_ids => p_measure_ids
            )
        ];
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
            -- each report's series, sorted (one sort on four keys; the series come distinct
            -- and in shape order, and each report's arrays are aggregated in that order; an
            -- order lost would only store a shape twice)
            sets AS MATERIALIZED (
                SELECT
                    s.report_id, array_agg(s.benchmark_id) AS benchmark_ids,
                    array_agg(s.variant_id) AS variant_ids, array_agg(s.measure_id) AS measure_ids
                FROM (
                    SELECT DISTINCT b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                    FROM unnest(p_report_benchmark_ids, p_measure_ids) AS x (id, measure_id)
                    INNER JOIN rbs AS b ON b.id = x.id
                    ORDER BY b.report_id, b.benchmark_id, b.variant_id, x.measure_id
                ) AS s
                GROUP BY s.report_id
            ),
            -- (each report looked up once; OFFSET 0 keeps the LATERAL subquery a per-row
            -- index lookup, whatever the statistics said when this plan was cached)
            reports AS MATERIALIZED (
                SELECT d.benchmark_ids, d.variant_ids, d.measure_ids, k.*
                FROM sets AS d
                CROSS JOIN LATERAL (
                    SELECT r.project_id, r.testbed_id, r.created, p.organization_id
                    FROM active_series.report AS r
                    INNER JOIN active_series.project AS p ON p.id = r.project_id
                    WHERE r.id = d.report_id
                    OFFSET 0
                ) AS k
            ),
            periods AS MATERIALIZED (
                SELECT t.organization_id, t.created, f.period_start
                FROM (
                    SELECT DISTINCT s.organization_id, s.created
                    FROM reports AS s
                    ORDER BY s.organization_id, s.created
                ) AS t
                CROSS JOIN LATERAL active_series._period_for(t.organization_id, t.created) AS f
            ),
            keyed AS MATERIALIZED (
                SELECT
                    s.*, t.period_start,
                    count(*) OVER (PARTITION BY s.testbed_id, s.created) AS reports
                FROM reports AS s
                INNER JOIN periods AS t
                    ON t.organization_id = s.organization_id AND t.created = s.created
            )
            -- a testbed's one report at a time: its series as they are
            SELECT active_series._shape_group(
                p_organization_id => k.organization_id,
                p_project_id => k.project_id,
                p_testbed_id => k.testbed_id,
                p_period_start => k.period_start,
                p_first_seen => k.created,
                p_last_seen => k.created,
                p_benchmark_ids => k.benchmark_ids,
                p_variant_ids => k.variant_ids,
                p_measure_ids => k.measure_ids
            )
            FROM keyed AS k
            WHERE k.reports = 1
            UNION ALL
            -- several reports of one testbed in one transaction (one time): their series merged
            SELECT active_series._shape_group(
                p_organization_id => m.organization_id,
                p_project_id => m.project_id,
                p_testbed_id => m.testbed_id,
                p_period_start => m.period_start,
                p_first_seen => m.created,
                p_last_seen => m.created,
                p_benchmark_ids => array_agg(m.b),
                p_variant_ids => array_agg(m.v),
                p_measure_ids => array_agg(m.m)
            )
            FROM (
                SELECT DISTINCT
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
                FROM keyed AS k
                CROSS JOIN LATERAL unnest(k.benchmark_ids, k.variant_ids, k.measure_ids)
                    AS e (b, v, m)
                WHERE k.reports > 1
                ORDER BY
                    k.organization_id, k.project_id, k.testbed_id, k.period_start, k.created,
                    e.b, e.v, e.m
            ) AS m
            GROUP BY m.organization_id, m.project_id, m.testbed_id, m.period_start, m.created
        );
    END IF;
    IF cardinality(v_groups) = 0 THEN
        RETURN;
    END IF;

    -- The common case, a testbed reporting the same shape as before in the period, later
    -- than before: one HOT update of that sighting per testbed (_widen). Anything else (a
    -- shape or a period new to the testbed, older activity) goes on below, which finds
    -- what these updates already did and leaves it.
    IF cardinality(v_groups) = 1 THEN
        -- (one testbed at one time, nearly every transaction: the same steps written
        -- out, without the calls: _lock_testbeds; the stored shape (_find_shape) and the
        -- testbed's set in the period, in one statement; with a set, _widen of the shape's
        -- sighting by its key. A first report then writes its rows without an UPDATE that
        -- finds nothing: 67,000 fewer backend instructions for a first report, 31,000
        -- more for a steady one, which costs the least of the three.)
        v_group := v_groups[1];
        PERFORM pg_advisory_xact_lock(_lock_key('testbed_history'), hashint8(v_group.testbed_id));
        -- the stored shape, and the testbed's set in the period (NULL: no history there)
        SELECT s.id, s.series, p.shape_id
        INTO v_shape_id, v_series, v_set_id
        FROM active_series._shape AS s
        LEFT JOIN active_series._testbed_period AS p
            ON p.testbed_id = v_group.testbed_id AND p.period_start = v_group.period_start
        WHERE s.project_id = v_group.project_id
            AND s.digest = hash_array_extended(
                v_group.benchmark_ids || v_group.variant_ids || v_group.measure_ids, 0
            )
            AND s.benchmark_ids = v_group.benchmark_ids
            AND s.variant_ids = v_group.variant_ids
            AND s.measure_ids = v_group.measure_ids
        LIMIT 1;
        v_group.shape_id := v_shape_id;
        v_known := v_set_id IS NOT NULL;
        IF v_known THEN
            -- (a testbed reporting again in the period: the sighting of the shape widened,
            -- a HOT update, when it is there and this is later or earlier than it)
            UPDATE active_series._shape_seen AS s
            SET first_seen = least(s.first_seen, v_group.first_seen),
                last_seen = greatest(s.last_seen, v_group.last_seen)
            WHERE s.testbed_id = v_group.testbed_id
                AND s.period_start = v_group.period_start
                AND s.shape_id = v_shape_id
                AND (v_group.first_seen < s.first_seen OR v_group.last_seen > s.last_seen);
            IF FOUND THEN
                RETURN;
            END IF;
        END IF;
        -- (the first report of the testbed in the period, of a stored shape, as below for
        -- several testbeds, written for one)
        IF v_shape_id IS NOT NULL AND NOT v_known THEN
            WITH sets AS (
                INSERT INTO active_series._testbed_period (
                    testbed_id, period_start, organization_id, project_id, shape_id
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_group.organization_id,
                    v_group.project_id, v_shape_id
                )
            ),
            seen AS (
                INSERT INTO active_series._shape_seen (
                    testbed_id, period_start, shape_id, first_seen, last_seen
                )
                VALUES (
                    v_group.testbed_id, v_group.period_start, v_shape_id, v_group.first_seen,
                    v_group.last_seen
                )
            ),
            counted AS (
                INSERT INTO active_series._period_usage AS u (
                    organization_id, period_start, project_id, series_count
                )
                VALUES (v_group.organization_id, v_group.period_start, v_group.project_id, v_series)
                ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
                SET series_count = u.series_count + excluded.series_count
            )
            -- (the outbox row of _changed, in the same statement)
            INSERT INTO active_series._outbox (organization_id, period_start, reason)
            VALUES (v_group.organization_id, v_group.period_start, 'ingest');
            -- the count rose: _check_rises for one group, its watched flag read with the
            -- period (a re-recording never comes this way)
            IF v_watched IS NULL THEN
                -- (several metrics of one testbed: the period came from _period_for)
                SELECT w.watched INTO v_watched
                FROM active_series._period AS w
                WHERE w.organization_id = v_group.organization_id
                    AND w.period_start = v_group.period_start;
            END IF;
            IF v_watched AND pg_trigger_depth() > 0 THEN
                PERFORM
                FROM active_series.project AS p
                WHERE p.id = v_group.project_id AND p.deleted_at IS NULL;
                IF FOUND THEN
                    PERFORM active_series._check_usage(
                        v_group.organization_id, v_group.period_start
                    );
                END IF;
            END IF;
            RETURN;
        END IF;
        v_groups := ARRAY[v_group];
    ELSE
        PERFORM active_series._lock_testbeds(ARRAY(SELECT g.testbed_id FROM unnest(v_groups) AS g));
        v_groups := ARRAY(
            SELECT active_series._shape_group(
                p_organization_id => g.organization_id,
                p_project_id => g.project_id,
                p_testbed_id => g.testbed_id,
                p_period_start => g.period_start,
                p_first_seen => g.first_seen,
                p_last_seen => g.last_seen,
                p_benchmark_ids => g.benchmark_ids,
                p_variant_ids => g.variant_ids,
                p_measure_ids => g.measure_ids,
                p_shape_id => active_series._find_shape(
                    g.project_id, g.benchmark_ids, g.variant_ids, g.measure_ids
                )
            )
            FROM unnest(v_groups) AS g
        );
        IF active_series._widen(v_groups) = cardinality(v_groups) THEN
            RETURN;
        END IF;
    END IF;

    -- The first report of a testbed in a period (a new testbed, or the first report after
    -- the period changed) of a shape already stored: the shape is the testbed's period
    -- shape, so one statement writes what _record_groups would, in the same key order: the
    -- period shapes, the sightings, the counts grown by the shapes' sizes (_period_usage,
    -- key order) and the outbox rows. It holds when every activity is of a stored shape, no
    -- testbed has history in its period (under the history locks taken above: nothing else
    -- writes it meanwhile; so _widen did nothing) and no (testbed, period) has two
    -- activities. Else the general path.
    IF NOT EXISTS (
        SELECT
        FROM unnest(v_groups) AS g
        WHERE g.shape_id IS NULL
            OR (
                SELECT true
                FROM active_series._testbed_period AS p
                WHERE p.testbed_id = g.testbed_id AND p.period_start = g.period_start
            )
    )
    AND (
        SELECT count(DISTINCT (g.testbed_id, g.period_start)) FROM unnest(v_groups) AS g
    ) = cardinality(v_groups) THEN
        WITH g AS MATERIALIZED (
            SELECT
                g.organization_id, g.project_id, g.testbed_id, g.period_start, g.first_seen,
                g.last_seen, g.shape_id, s.series
            FROM unnest(v_groups) AS g
            CROSS JOIN LATERAL (
                SELECT h.series FROM active_series._shape AS h WHERE h.id = g.shape_id
            ) AS s
        ),
        sets AS (
            INSERT INTO active_series._testbed_period (
                testbed_id, period_start, organization_id, project_id, shape_id
            )
            SELECT g.testbed_id, g.period_start, g.organization_id, g.project_id, g.shape_id
            FROM g
            ORDER BY g.testbed_id, g.period_start
        ),
        seen AS (
            INSERT INTO active_series._shape_seen (
                testbed_id, period_start, shape_id, first_seen, last_seen
            )
            SELECT g.testbed_id, g.period_start, g.shape_id, g.first_seen, g.last_seen
            FROM g
            ORDER BY g.testbed_id, g.period_start, g.shape_id
        ),
        counted AS (
            INSERT INTO active_series._period_usage AS u (
                organization_id, period_start, project_id, series_count
            )
            SELECT g.organization_id, g.period_start, g.project_id, sum(g.series)
            FROM g
            GROUP BY g.organization_id, g.period_start, g.project_id
            ORDER BY g.organization_id, g.period_start, g.project_id
            ON CONFLICT (organization_id, period_start, project_id) DO UPDATE
            SET series_count = u.series_count + excluded.series_count
        )
        -- (the outbox rows of _changed, one per (organization, period), in the same
        -- statement)
        INSERT INTO active_series._outbox (organization_id, period_start, reason)
        SELECT DISTINCT g.organization_id, g.period_start, 'ingest'
        FROM g
        ORDER BY g.organization_id, g.period_start;
        -- (each of those counts rose: the cap and the alerts)
        PERFORM active_series._check_rises(v_groups);
        RETURN;
    END IF;
    PERFORM active_series._record_groups(v_groups);
END;
$$;
COMMENT ON FUNCTION active_series._record_activity(bigint[], bigint[]) IS
'Internal: record metrics, as (report_benchmark, measure) pairs, in the history and the per-period counts (the commit-time ingest trigger and backfill share it).';
