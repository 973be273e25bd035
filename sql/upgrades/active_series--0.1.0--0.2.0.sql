-- active_series 0.1.0 -> 0.2.0 (ALTER EXTENSION active_series UPDATE, or
-- `active-series install` on a plain install). Brings a 0.1.0 schema, with its data, to
-- exactly what a fresh 0.2.0 install creates: the upgrade tests compare the two catalogs.

UPDATE active_series._meta SET version = '0.2.0';
