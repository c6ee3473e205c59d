/** Policies, tasks and sharings <-> VBS JSON. The retention keys keep OTC's spelling (`rentention_*`). */
import type { Policy, PolicyTask, PolicyWithCount } from '../../domain/policy.ts';
import { millisNoZone } from './time.ts';

export function scheduledPolicyJson(p: Policy) {
  const s: Record<string, unknown> = { start_time: p.startTime };
  if (p.frequency !== null) s.frequency = p.frequency;
  if (p.weekFrequency !== null) s.week_frequency = p.weekFrequency;
  if (p.retentionNum !== null) s.rentention_num = p.retentionNum;
  if (p.retentionDay !== null) s.rentention_day = p.retentionDay;
  s.remain_first_backup_of_curMonth = p.remainFirstBackupOfCurMonth ? 'Y' : 'N';
  s.status = p.status;
  return s;
}

export function policyJson(p: PolicyWithCount) {
  const out: Record<string, unknown> = {
    backup_policy_id: p.id,
    backup_policy_name: p.name,
    scheduled_policy: scheduledPolicyJson(p),
    policy_resource_count: p.resourceCount,
  };
  if (p.timeZone !== null) out.time_zone = p.timeZone;
  return out;
}

export function taskJson(t: PolicyTask) {
  const out: Record<string, unknown> = {
    job_id: t.id,
    status: t.status,
    created_at: millisNoZone(t.createdAt),
    backup_name: t.backupName,
    resource_id: t.volumeId,
    resource_type: 'volume',
  };
  if (t.finishedAt !== null && t.status !== 'RUNNING' && t.status !== 'WAITING') out.finished_at = millisNoZone(t.finishedAt);
  if (t.jobId) out.vbs_job_id = t.jobId;
  return out;
}
