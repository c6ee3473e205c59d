/** Domain records <-> VBS JSON (jobs, quotas). */
import { ErrorCode } from '../../domain/errors.ts';
import type { Job } from '../../domain/model.ts';
import { millisZ } from './time.ts';

/**
 * A failed job's code as VBS reports it. Jobs record Haven's own codes (domain/job.ts); rows from
 * before that hold the VBS code itself, passed through. By kind: a backup that could not read its
 * volume VolumeBackup.0027, any other failed backup 0064, a delete 0102, a restore 0200, and
 * anything the runner could not attribute 0014; server backups (CSBS jobs) CSBS.9999.
 */
export function jobErrorCodeOf(j: Pick<Job, 'type' | 'errorCode'>): string | null {
  const code = j.errorCode;
  if (code === null || /^(VolumeBackup|CSBS)\./.test(code)) return code;
  switch (j.type) {
    case 'bksCreateBackup':
      return code === ErrorCode.VolumeUnreadable ? 'VolumeBackup.0027' : code === ErrorCode.Internal ? 'VolumeBackup.0014' : 'VolumeBackup.0064';
    case 'bksDeleteBackup':
      return code === ErrorCode.Internal ? 'VolumeBackup.0014' : 'VolumeBackup.0102';
    case 'bksRestoreBackup':
      return code === ErrorCode.Internal ? 'VolumeBackup.0014' : 'VolumeBackup.0200';
    default:
      return 'CSBS.9999';
  }
}

/** J1 job body. Entity values are all strings (gophercloud decodes map[string]string). */
export function jobJson(j: Job) {
  const entities: Record<string, string> = { ...j.entities };
  if (j.status === 'RUNNING' && j.progressTotal > 0) entities.progress = String(Math.floor((j.progressDone / j.progressTotal) * 100));
  return {
    status: j.status,
    entities,
    job_id: j.id,
    job_type: j.type,
    begin_time: millisZ(j.beginTime ?? j.createdAt),
    end_time: millisZ(j.endTime),
    error_code: jobErrorCodeOf(j),
    fail_reason: j.failReason,
  };
}
