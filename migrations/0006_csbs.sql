-- Cloud Server Backup (CSBS): a checkpoint is one run (a backup record); a checkpoint item is the
-- backup of one server in it; each of its volumes is an ordinary backup row (origin 'csbs') linked
-- by checkpoint_item_id, so VBS lists show them too.
CREATE TABLE checkpoints (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  plan_id TEXT NOT NULL,
  plan_name TEXT NOT NULL,
  status TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX checkpoints_project ON checkpoints (project_id, created_at);

CREATE TABLE checkpoint_items (
  id TEXT PRIMARY KEY,
  checkpoint_id TEXT NOT NULL,
  project_id TEXT NOT NULL,
  server_id TEXT NOT NULL,
  server_name TEXT NOT NULL,
  policy_id TEXT,
  name TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  incremental INTEGER NOT NULL DEFAULT 0,
  auto_trigger INTEGER NOT NULL DEFAULT 0,
  tags TEXT NOT NULL DEFAULT '[]',
  fail_op TEXT NOT NULL DEFAULT '',
  fail_reason TEXT NOT NULL DEFAULT '',
  availability_zone TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  finished_at BIGINT
);
CREATE INDEX checkpoint_items_project ON checkpoint_items (project_id, created_at, id);
CREATE INDEX checkpoint_items_checkpoint ON checkpoint_items (checkpoint_id);
CREATE INDEX checkpoint_items_server ON checkpoint_items (server_id);

ALTER TABLE backups ADD COLUMN checkpoint_item_id TEXT;
CREATE INDEX backups_checkpoint_item ON backups (checkpoint_item_id);

CREATE TABLE restores (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  checkpoint_id TEXT NOT NULL,
  checkpoint_item_id TEXT NOT NULL,
  server_id TEXT NOT NULL,
  parameters TEXT NOT NULL,
  status TEXT NOT NULL,
  fail_reason TEXT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
