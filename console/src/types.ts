/** The API's answers, as far as the console reads them (the OpenAPI document at /openapi.json has them whole). */

export interface Volume {
  id: string;
  name: string | null;
  status: string;
  size: number;
  volume_type: string;
  created_at: string | null;
  bootable: string;
  'os-vol-host-attr:host'?: string;
}

export interface Backup {
  id: string;
  name: string | null;
  status: string;
  volume_id: string;
  size: number;
  created_at: string | null;
  is_incremental: boolean;
  fail_reason: string | null;
  description: string | null;
}

export interface Job {
  id: string;
  project_id: string;
  job_type: string;
  status: 'INIT' | 'RUNNING' | 'SUCCESS' | 'FAIL';
  progress: { done: number; total: number };
  entities: Record<string, string>;
  error_code: string | null;
  fail_reason: string | null;
  created_at: string | null;
  begin_time: string | null;
  end_time: string | null;
}

export interface ScheduledPolicy {
  start_time: string;
  frequency?: number;
  week_frequency?: string[];
  rentention_num?: number;
  rentention_day?: number;
  remain_first_backup_of_curMonth: 'Y' | 'N';
  status: 'ON' | 'OFF';
}

export interface VbsPolicy {
  backup_policy_id: string;
  backup_policy_name: string;
  scheduled_policy: ScheduledPolicy;
  policy_resource_count: number;
  time_zone?: string;
}

export interface PolicyTask {
  job_id: string;
  status: string;
  created_at: string;
  finished_at?: string;
  backup_name: string;
  resource_id: string;
}

export interface Server {
  id: string;
  name: string;
  status: string;
  'os-extended-volumes:volumes_attached'?: { id: string }[];
}

export interface CheckpointItem {
  id: string;
  name: string;
  status: string;
  checkpoint_id: string;
  resource_id: string;
  resource_type: string;
  created_at: string;
  extend_info: {
    resource_name?: string;
    fail_reason?: string;
    volume_backups?: { id: string; source_volume_id: string; source_volume_name?: string; source_volume_size?: number; status?: string }[];
  };
}

export interface CsbsPolicy {
  id: string;
  name: string;
  status: string;
  resources: { id: string; type: string; name: string }[];
  scheduled_operations: { id: string; enabled: boolean; operation_definition: { max_backups?: number; retention_duration_days?: number; timezone?: string }; trigger: { properties: { pattern: string } } }[];
}

export interface Agent {
  host: string;
  version: string;
  embedded: boolean;
  online: boolean;
  draining: boolean;
  registered_at: string;
  last_heartbeat: string;
  volume_roots: string[];
  capabilities: string[];
  volumes: number;
  running_jobs: { work_id: string; job_id: string | null; kind: string; progress_done: number; progress_total: number; started_at: string }[];
}

export interface RepositoryInfo {
  kind: 'local' | 's3';
  location: string;
  encrypted: boolean;
  bytes: number | null;
  free_bytes: number | null;
  filesystem_bytes: number | null;
  backups: number;
  logical_bytes: number;
  new_bytes: number;
  stored_bytes: number;
  dedup_ratio: number | null;
  compression_ratio: number | null;
  last_gc: { finished_at: string; duration_ms: number; reclaimed_bytes: number; dead_bytes: number; repository_bytes_after: number } | null;
  last_verify: { finished_at: string; duration_ms: number; scope: string; backups: number; checked_chunks: number; damaged_chunks: number; missing_chunks: number; ok: boolean } | null;
  growth: { at: string; bytes: number }[];
}
