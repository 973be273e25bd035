CREATE TABLE active_series._alert_threshold (
    organization_id bigint NOT NULL,
    series_count bigint NOT NULL CHECK (series_count >= 1),
    enabled boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, series_count)
);
COMMENT ON TABLE active_series._alert_threshold IS
'Alert thresholds set with set_alert. The upper bounds of the organization''s price tiers are thresholds too unless a row here disables them (enabled = false).';
