/** Policies, tasks and sharings <-> VBS JSON. The retention keys keep OTC's spelling (`rentention_*`). */
import type { Policy, PolicyTask, PolicyWithCount } from '../../domain/policy.ts';
import { millisNoZone } from './time.ts';

export function scheduledPolicyJson(p: Policy) {
  return {
    start_time: p.startTime,
    ...(p.frequency !== null ? { frequency: p.frequency } : {}),
    ...(p.weekFrequency !== null ? { week_frequency: p.weekFrequency } : {}),
    ...(p.retentionNum !== null ? { rentention_num: p.retentionNum } : {}),
    ...(p.retentionDay !== null ? { rentention_day: p.retentionDay } : {}),
    remain_first_backup_of_curMonth: p.remainFirstBackupOfCurMonth ? ('Y' as const) : ('N' as const),
    status: p.status,
  };
}

export function policyJson(p: PolicyWithCount) {
  return {
    backup_policy_id: p.id,
    backup_policy_name: p.name,
    scheduled_policy: scheduledPolicyJson(p),
    policy_resource_count: p.resourceCount,
    ...(p.timeZone !== null ? { time_zone: p.timeZone } : {}),
  };
}

export function taskJson(t: PolicyTask) {
  return {
    job_id: t.id,
    status: t.status,
    created_at: millisNoZone(t.createdAt),
    backup_name: t.backupName,
    resource_id: t.volumeId,
    resource_type: 'volume' as const,
    ...(t.finishedAt !== null && t.status !== 'RUNNING' && t.status !== 'WAITING' ? { finished_at: millisNoZone(t.finishedAt) } : {}),
    ...(t.jobId ? { vbs_job_id: t.jobId } : {}),
  };
}
