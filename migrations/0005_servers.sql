-- Server inventory (a Nova-compatible subset): a server is a name plus attached volumes.
CREATE TABLE servers (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  name TEXT NOT NULL,
  status TEXT NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}',
  availability_zone TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX servers_project ON servers (project_id, created_at, id);

-- A volume is attached to at most one server.
CREATE TABLE server_volumes (
  volume_id TEXT PRIMARY KEY,
  server_id TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
  device TEXT NOT NULL,
  boot_index INTEGER,
  attached_at BIGINT NOT NULL
);
CREATE INDEX server_volumes_server ON server_volumes (server_id);
