-- CSBS backup policies (Karbor plans): one scheduled operation each (retention + RRULE pattern),
-- servers as resources (a server belongs to at most one policy). next_run_at as for VBS policies.
CREATE TABLE csbs_policies (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL,
  name TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  status TEXT NOT NULL,
  parameters TEXT NOT NULL DEFAULT '{}',
  tags TEXT NOT NULL DEFAULT '[]',
  operation_id TEXT NOT NULL,
  operation_name TEXT NOT NULL DEFAULT '',
  operation_description TEXT NOT NULL DEFAULT '',
  enabled INTEGER NOT NULL,
  retention TEXT NOT NULL DEFAULT '{}',
  pattern TEXT NOT NULL,
  trigger_id TEXT NOT NULL,
  trigger_start BIGINT NOT NULL,
  schedule_anchor BIGINT NOT NULL,
  next_run_at BIGINT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (project_id, name)
);
CREATE INDEX csbs_policies_due ON csbs_policies (enabled, next_run_at);

CREATE TABLE csbs_policy_resources (
  server_id TEXT PRIMARY KEY,
  policy_id TEXT NOT NULL REFERENCES csbs_policies (id) ON DELETE CASCADE,
  project_id TEXT NOT NULL,
  name TEXT NOT NULL,
  position INTEGER NOT NULL
);
CREATE INDEX csbs_policy_resources_policy ON csbs_policy_resources (policy_id, position);
