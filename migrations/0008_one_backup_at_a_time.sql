-- At most one backup of a volume is being created at a time, enforced by the database itself, so
-- that processes sharing a PostgreSQL catalog cannot both start one (VolumeBackup.0013).
CREATE UNIQUE INDEX backups_one_creating ON backups (volume_id) WHERE status = 'creating';
