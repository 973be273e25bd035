CREATE TABLE active_series._shape_seen (
    testbed_id bigint NOT NULL,
    period_start timestamptz NOT NULL,
    -- (no foreign key: see _testbed_period.shape_id; a set in a row is always in the row's
    -- testbed's set for the period, so these rows go with that testbed history)
    shape_id bigint NOT NULL,
    -- smallest and greatest report.created at which the testbed reported exactly these
    -- series together, within the period
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    -- (no foreign key to _testbed_period (testbed_id, period_start) either, whose row every
    -- row here has: the recorder writes both under the testbed's history lock, and the
    -- deletes of _testbed_period rows delete these with them (_testbed_period_deleted), as a
    -- cascade would, without a key check at every first report; verify() checks it)
    -- (first_seen <= last_seen holds by construction, least/greatest; verify() compares
    -- every series' activity with these times. No CHECK: its expression is read and
    -- compiled at every statement that writes the table, one in every report, about 13,000
    -- backend instructions)
    PRIMARY KEY (testbed_id, period_start, shape_id)
) WITH (fillfactor = 50);
COMMENT ON TABLE active_series._shape_seen IS
'History: when a testbed reported one set of series (a shape) within a period, as first and last report.created. A series'' first_seen (last_seen) in a period is the smallest (greatest) over the rows whose shape holds it. A report of the same shape as before is one HOT update here; nothing per series, nothing per benchmark.';
