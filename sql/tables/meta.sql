-- The installed version, checked by the CLI and the worker before they touch anything.
CREATE TABLE active_series._meta (
    version text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO active_series._meta (version) VALUES ('@EXTVERSION@');
COMMENT ON TABLE active_series._meta IS 'Version of the installed active_series objects (one row).';
