-- List queries sort by (created_at, id): indexes that cover the tie-break let SQLite and PostgreSQL
-- read a page straight from the index instead of sorting every row of the project.
DROP INDEX backups_project;
CREATE INDEX backups_project ON backups (project_id, created_at, id);
DROP INDEX volumes_project;
CREATE INDEX volumes_project ON volumes (project_id, created_at, id);
