-- Agents: a `haven agent` on every host that holds disks runs the file and engine work of the jobs
-- on that host's volumes (services/volume-hosts.ts). A volume belongs to one host; NULL: volumes
-- from before agents, which belong to the control plane's own host.
ALTER TABLE volumes ADD COLUMN host TEXT;

-- Agent credentials, issued by the cloud admin (haven agent token create --host NAME): a token
-- names its host, and only SHA-256 of its secret is kept.
CREATE TABLE agent_tokens (
  id TEXT PRIMARY KEY,
  host TEXT NOT NULL,
  secret_hash TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT
);

-- One row per host: what its agent said when it registered, its last heartbeat, whether it is
-- drained (gets no new work). `session` names the agent process that registered last: work held by
-- an earlier session is abandoned when a new one registers.
CREATE TABLE agents (
  host TEXT PRIMARY KEY,
  session TEXT NOT NULL,
  version TEXT NOT NULL,
  volume_roots TEXT NOT NULL,
  capabilities TEXT NOT NULL,
  embedded INTEGER NOT NULL DEFAULT 0,
  -- The agent process's identity across its restarts (kept in its data folder; NULL: embedded).
  instance TEXT,
  registered_at BIGINT NOT NULL,
  heartbeat_at BIGINT NOT NULL,
  draining INTEGER NOT NULL DEFAULT 0
);

-- Work for a host's agent: one file or engine operation of a job (a backup's read, a restore's
-- write, a volume's file made or removed). Queued, then held by one agent session under a lease it
-- renews with its heartbeats; done or failed with the agent's result. A lease that runs out fails
-- the work (the agent is gone); a cancel request reaches the agent with its next heartbeat.
CREATE TABLE agent_work (
  id TEXT PRIMARY KEY,
  host TEXT NOT NULL,
  job_id TEXT,
  kind TEXT NOT NULL,
  request TEXT NOT NULL,
  status TEXT NOT NULL,
  session TEXT,
  lease_until BIGINT,
  progress_done BIGINT NOT NULL DEFAULT 0,
  progress_total BIGINT NOT NULL DEFAULT 0,
  result TEXT,
  error TEXT,
  cancel_reason TEXT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX agent_work_host_status ON agent_work (host, status, created_at);
CREATE INDEX agent_work_session ON agent_work (session, status);
CREATE INDEX agent_work_job ON agent_work (job_id);
