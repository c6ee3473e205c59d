-- Haven catalog, version 1. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are integers (ms since the epoch, UTC); booleans are 0/1; JSON is TEXT.

CREATE TABLE projects (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  domain_id TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  enabled INTEGER NOT NULL DEFAULT 1,
  created_at BIGINT NOT NULL,
  UNIQUE (domain_id, name)
);

CREATE TABLE users (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  domain_id TEXT NOT NULL,
  password_hash TEXT NOT NULL,
  enabled INTEGER NOT NULL DEFAULT 1,
  default_project_id TEXT,
  created_at BIGINT NOT NULL,
  UNIQUE (domain_id, name)
);

CREATE TABLE role_assignments (
  project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  role TEXT NOT NULL,
  PRIMARY KEY (project_id, user_id, role)
);

-- Tokens are stored by the SHA-256 of their value: a leaked catalog reveals no usable token.
CREATE TABLE tokens (
  token_hash TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  project_id TEXT REFERENCES projects (id) ON DELETE CASCADE,
  roles TEXT NOT NULL,
  methods TEXT NOT NULL,
  audit_id TEXT NOT NULL,
  issued_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE INDEX tokens_expires ON tokens (expires_at);

CREATE TABLE volumes (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  name TEXT,
  description TEXT,
  size_gb INTEGER NOT NULL,
  size_bytes BIGINT NOT NULL,
  path TEXT NOT NULL,
  adopted INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL,
  bootable INTEGER NOT NULL DEFAULT 0,
  availability_zone TEXT NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}',
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX volumes_project ON volumes (project_id, created_at);

CREATE TABLE snapshots (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  volume_id TEXT NOT NULL,
  name TEXT,
  description TEXT,
  size_gb INTEGER NOT NULL,
  path TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX snapshots_project ON snapshots (project_id, created_at);
CREATE INDEX snapshots_volume ON snapshots (volume_id);

-- A backup row; its engine manifest has the same id (written before the row becomes available).
CREATE TABLE backups (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  volume_id TEXT NOT NULL,
  snapshot_id TEXT,
  name TEXT,
  description TEXT,
  status TEXT NOT NULL,
  full_backup INTEGER NOT NULL,
  incremental_requested INTEGER NOT NULL DEFAULT 0,
  parent_id TEXT,
  size_gb INTEGER NOT NULL,
  size_bytes BIGINT NOT NULL DEFAULT 0,
  stored_bytes BIGINT NOT NULL DEFAULT 0,
  new_bytes BIGINT NOT NULL DEFAULT 0,
  object_count INTEGER NOT NULL DEFAULT 0,
  origin TEXT NOT NULL,
  policy_id TEXT,
  tags TEXT NOT NULL DEFAULT '[]',
  fail_reason TEXT,
  availability_zone TEXT NOT NULL,
  restore_count INTEGER NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  data_timestamp BIGINT NOT NULL
);
CREATE INDEX backups_project ON backups (project_id, created_at);
CREATE INDEX backups_volume ON backups (volume_id, created_at);

-- The job queue: INIT (queued) -> RUNNING (claimed by owner, heartbeat refreshed) -> SUCCESS | FAIL.
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  job_type TEXT NOT NULL,
  status TEXT NOT NULL,
  payload TEXT NOT NULL,
  entities TEXT NOT NULL,
  error_code TEXT,
  fail_reason TEXT,
  owner TEXT,
  heartbeat_at BIGINT,
  progress_done BIGINT NOT NULL DEFAULT 0,
  progress_total BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  begin_time BIGINT,
  end_time BIGINT
);
CREATE INDEX jobs_queue ON jobs (status, created_at);
CREATE INDEX jobs_project ON jobs (project_id, created_at);

CREATE TABLE schema_info (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
