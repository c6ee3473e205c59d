-- The service looks for backups in `error` across every project (at start, to verify them again and
-- bring back those found whole): an index on status keeps that from reading the whole table.
CREATE INDEX backups_status ON backups (status);
