-- The volume digest a backup's manifest records (docs/design.md "Volume digest"), copied into the
-- catalog when the backup completes: what a restore of it will prove. NULL while it is created, and
-- for backups from before the volume digest (their manifests record a whole-volume SHA-256).
ALTER TABLE backups ADD COLUMN volume_digest TEXT;
