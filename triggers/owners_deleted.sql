CREATE FUNCTION active_series._owners_deleted(p_role text, p_ids bigint[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- Organizations, projects or testbeds the application deleted (attach's AFTER DELETE
-- triggers active_series_<role>_deleted): the extension's rows of them go too. A testbed's
-- histories (whose deletion lowers the counts, _testbed_period_deleted); a project's sets
-- and counts; an organization's periods (their counts with them), billing account, prices,
-- alerts, ledger and relay state (the subscription edges and summary reads included). (A project's or organization's testbeds go by their own
-- trigger: the application deletes them with it, its foreign keys see to that.)
-- Locks: the rows it deletes.
BEGIN
    IF p_ids IS NULL THEN
        RETURN;
    END IF;
    CASE p_role
        WHEN 'testbed' THEN
            DELETE FROM active_series._testbed_period AS t WHERE t.testbed_id = ANY(p_ids);
        WHEN 'project' THEN
            DELETE FROM active_series._period_usage AS u WHERE u.project_id = ANY(p_ids);
            DELETE FROM active_series._shape AS s WHERE s.project_id = ANY(p_ids);
        WHEN 'organization' THEN
            DELETE FROM active_series._period AS p WHERE p.organization_id = ANY(p_ids);
            DELETE FROM active_series.billing_account AS b WHERE b.organization_id = ANY(p_ids);
            DELETE FROM active_series._price AS p WHERE p.organization_id = ANY(p_ids);
            DELETE FROM active_series._alert AS a WHERE a.organization_id = ANY(p_ids);
            DELETE FROM active_series._alert_threshold AS a WHERE a.organization_id = ANY(p_ids);
            DELETE FROM active_series._period_watch AS w WHERE w.organization_id = ANY(p_ids);
            DELETE FROM active_series._ledger AS l WHERE l.organization_id = ANY(p_ids);
            DELETE FROM active_series._relay_state AS r WHERE r.organization_id = ANY(p_ids);
            DELETE FROM active_series._relay_subscription AS r WHERE r.organization_id = ANY(p_ids);
            DELETE FROM active_series._relay_confirmation AS r WHERE r.organization_id = ANY(p_ids);
    END CASE;
END;
$$;
COMMENT ON FUNCTION active_series._owners_deleted(text, bigint[]) IS
'Internal: the extension''s rows of deleted organizations, projects or testbeds go with them.';
