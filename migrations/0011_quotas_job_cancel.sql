-- Per-project quota limits set by the cloud admin (Cinder's os-quota-sets); a project without a row
-- for a resource has the default from the settings (HAVEN_QUOTA_*). -1: unlimited.
CREATE TABLE project_quotas (
  project_id TEXT NOT NULL,
  resource TEXT NOT NULL,
  hard_limit BIGINT NOT NULL,
  PRIMARY KEY (project_id, resource)
);

-- A cancel request for a queued or running job (force-delete, or deleting a backup being created):
-- the owner sees it at its next heartbeat and aborts the job. NULL: not cancelled.
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT;

-- The claim query skips projects that hold their share of a runner's slots.
CREATE INDEX jobs_queue_project ON jobs (status, project_id, created_at);
