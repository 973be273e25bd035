-- active_series 0.2.0 -> 0.3.0 (ALTER EXTENSION active_series UPDATE, or
-- `active-series install` on a plain install). Brings a 0.2.0 schema, with its data, to
-- exactly what a fresh 0.3.0 install creates: the upgrade tests compare the two catalogs.

UPDATE active_series._meta SET version = '0.3.0';
