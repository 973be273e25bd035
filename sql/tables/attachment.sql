CREATE TABLE active_series._attachment (
    -- the part the table plays in the data model
    role text PRIMARY KEY CHECK (role IN (
        'organization', 'project', 'testbed', 'benchmark', 'variant', 'measure', 'report',
        'report_benchmark', 'metric'
    )),
    table_schema name NOT NULL,
    table_name name NOT NULL,
    -- the role's columns (as the reference model names them) -> the table's own columns;
    -- an optional column the table lacks is left out
    columns jsonb NOT NULL CHECK (jsonb_typeof(columns) = 'object'),
    -- indexes attach created on the table for the recorder's reads (detach drops them)
    created_indexes name[] NOT NULL DEFAULT '{}',
    attached_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT attachment_table_key UNIQUE (table_schema, table_name)
);
COMMENT ON TABLE active_series._attachment IS
'Which of the application''s tables plays each role of the data model, and which of its columns holds each value the extension reads (attach, detach).';
