CREATE TABLE active_series._period_watch (
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    series_count bigint NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (organization_id, period_start)
);
COMMENT ON TABLE active_series._period_watch IS
'The billed count of a period as the alert and cap check last saw it. Its row is locked (updated) by every ingest commit that raises the count of an organization with alerts or a cap, so those commits check one after the other.';
