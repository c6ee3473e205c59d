/** Domain records <-> VBS JSON (jobs, quotas). */
import type { Job } from '../../domain/model.ts';
import { millisZ } from './time.ts';

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
    error_code: j.errorCode,
    fail_reason: j.failReason,
  };
}
