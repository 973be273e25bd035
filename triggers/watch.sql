CREATE FUNCTION active_series._period_inserted()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- BEFORE INSERT on _period (a new period, a split or a merge; once per organization and
-- period): the period starts with the organization's watched flag (_watched).
BEGIN
    NEW.watched := active_series._watched(NEW.organization_id);
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION active_series._period_inserted() IS
'Trigger: a new period carries the organization''s watched flag.';

CREATE TRIGGER period_inserted
BEFORE INSERT ON active_series._period
FOR EACH ROW
EXECUTE FUNCTION active_series._period_inserted();

CREATE FUNCTION active_series._watch_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = active_series, pg_catalog, pg_temp
AS $$
-- AFTER INSERT, UPDATE or DELETE of a row of billing_account, _alert_threshold or
-- _price_tier (settings, written rarely): the organization's periods take its watched flag
-- again (_watched), the rows that change only.
-- SECURITY DEFINER: the relay writes the price tiers and an operator the cap and the
-- alerts; neither may write _period.
DECLARE
    v_organization_id bigint;
BEGIN
    FOREACH v_organization_id IN ARRAY ARRAY[OLD.organization_id, NEW.organization_id] LOOP
        UPDATE active_series._period AS p
        SET watched = w.watched
        FROM (SELECT active_series._watched(v_organization_id) AS watched) AS w
        WHERE p.organization_id = v_organization_id AND p.watched <> w.watched;
    END LOOP;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION active_series._watch_changed() IS
'Trigger: keep the periods'' watched flag when a cap, an alert threshold or a price tier changes.';

CREATE TRIGGER watch_changed
AFTER INSERT OR UPDATE OR DELETE ON active_series.billing_account
FOR EACH ROW
EXECUTE FUNCTION active_series._watch_changed();

CREATE TRIGGER watch_changed
AFTER INSERT OR UPDATE OR DELETE ON active_series._alert_threshold
FOR EACH ROW
EXECUTE FUNCTION active_series._watch_changed();

CREATE TRIGGER watch_changed
AFTER INSERT OR UPDATE OR DELETE ON active_series._price_tier
FOR EACH ROW
EXECUTE FUNCTION active_series._watch_changed();
