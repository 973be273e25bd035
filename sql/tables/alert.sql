CREATE TABLE active_series._alert (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    threshold bigint NOT NULL,
    series_count bigint NOT NULL,
    source text NOT NULL CHECK (source IN ('set_alert', 'price_tier')),
    created timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (organization_id, period_start, threshold)
);
COMMENT ON TABLE active_series._alert IS
'One row per (organization, period, threshold) the period''s count reached, written by the ingest commit that reached it; read it through the view alerts.';
