-- Backup policies (VBS), their volumes, tags and tasks; backup sharing between projects.

CREATE TABLE policies (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  name TEXT NOT NULL,
  start_time TEXT NOT NULL,
  frequency INTEGER,
  week_frequency TEXT,
  retention_num INTEGER,
  retention_day INTEGER,
  remain_first_backup_of_cur_month TEXT NOT NULL DEFAULT 'N',
  status TEXT NOT NULL,
  time_zone TEXT,
  schedule_anchor BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX policies_project ON policies (project_id, created_at);

-- A volume belongs to at most one policy (associating it elsewhere moves it).
CREATE TABLE policy_resources (
  volume_id TEXT PRIMARY KEY,
  policy_id TEXT NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
  project_id TEXT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE INDEX policy_resources_policy ON policy_resources (policy_id);

CREATE TABLE policy_tags (
  policy_id TEXT NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
  tag_key TEXT NOT NULL,
  tag_value TEXT NOT NULL,
  PRIMARY KEY (policy_id, tag_key)
);

-- One task per volume per policy run; its status follows its backup job (or SKIP without one).
CREATE TABLE policy_tasks (
  id TEXT PRIMARY KEY,
  policy_id TEXT NOT NULL,
  project_id TEXT NOT NULL,
  volume_id TEXT NOT NULL,
  backup_id TEXT,
  backup_name TEXT NOT NULL,
  job_id TEXT,
  status TEXT NOT NULL,
  fail_reason TEXT,
  slot_at BIGINT,
  created_at BIGINT NOT NULL,
  finished_at BIGINT
);
CREATE INDEX policy_tasks_policy ON policy_tasks (policy_id, created_at);

CREATE TABLE sharings (
  id TEXT PRIMARY KEY,
  backup_id TEXT NOT NULL,
  from_project_id TEXT NOT NULL,
  to_project_id TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (backup_id, to_project_id)
);
CREATE INDEX sharings_to ON sharings (to_project_id);
