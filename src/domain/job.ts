/**
 * Jobs: the unit of work a runner claims and runs (services/job-runner.ts), one module per kind
 * (services/jobs/). Each kind has its own payload: what it works on, stored with the job as JSON
 * and checked when read back, so a handler gets its fields typed, never `job.payload as {…}`.
 *
 * A failed job records Haven's own error code (domain/errors.ts, e.g. VOLUME_UNREADABLE) and a
 * reason; the API maps the code to the service's (VolumeBackup.*, CSBS.*) in api/wire.
 */
import { AppError, ErrorCode } from './errors.ts';
import { currentRequestId } from './request-context.ts';

export type JobStatus = 'INIT' | 'RUNNING' | 'SUCCESS' | 'FAIL';

/** The kinds of job, named as the VBS jobs API reports them (job_type). */
export const JOB_TYPES = ['bksCreateBackup', 'bksDeleteBackup', 'bksRestoreBackup', 'csbsProtect', 'csbsDelete', 'csbsRestore'] as const;
export type JobType = (typeof JOB_TYPES)[number];

/** What each kind of job works on. */
export interface JobPayloads {
  bksCreateBackup: { backupId: string; volumeId: string; volumeName: string; checkReused?: boolean };
  bksDeleteBackup: { backupId: string };
  bksRestoreBackup: { backupId: string; volumeId: string; live?: boolean };
  csbsProtect: { itemId: string };
  csbsDelete: { itemId: string };
  csbsRestore: { itemId: string; restoreId: string; serverId: string; mapping: Array<{ backupId: string; volumeId: string }> };
}

export interface JobOf<T extends JobType> {
  id: string;
  projectId: string;
  type: T;
  status: JobStatus;
  payload: JobPayloads[T];
  /** Results clients read (all values strings, as gophercloud decodes them). */
  entities: Record<string, string>;
  /** Haven's error code of a failed job (older rows: the service's code itself). */
  errorCode: string | null;
  failReason: string | null;
  owner: string | null;
  heartbeatAt: number | null;
  progressDone: number;
  progressTotal: number;
  createdAt: number;
  beginTime: number | null;
  endTime: number | null;
  /** The API request that created it (null: a policy's run, a recovery). */
  requestId?: string | null;
}

/** A job of any kind: `type` tells which payload it has. */
export type Job = { [T in JobType]: JobOf<T> }[JobType];

/** A job ready to be queued (INIT, no owner yet). */
export function queuedJob<T extends JobType>(id: string, projectId: string, type: T, payload: JobPayloads[T], entities: Record<string, string>, createdAt: number): JobOf<T> {
  return { id, projectId, type, status: 'INIT', payload, entities, errorCode: null, failReason: null, owner: null, heartbeatAt: null, progressDone: 0, progressTotal: 0, createdAt, beginTime: null, endTime: null, requestId: currentRequestId() };
}

export function isJobType(t: string): t is JobType {
  return (JOB_TYPES as readonly string[]).includes(t);
}

type Check = (v: unknown) => boolean;
const str: Check = (v) => typeof v === 'string' && v.length > 0;
const optBool: Check = (v) => v === undefined || typeof v === 'boolean';
const mapping: Check = (v) => Array.isArray(v) && v.every((m) => typeof m === 'object' && m !== null && str((m as Record<string, unknown>).backupId) && str((m as Record<string, unknown>).volumeId));

const PAYLOAD_FIELDS: { [T in JobType]: Record<keyof JobPayloads[T], Check> } = {
  bksCreateBackup: { backupId: str, volumeId: str, volumeName: (v) => typeof v === 'string', checkReused: optBool },
  bksDeleteBackup: { backupId: str },
  bksRestoreBackup: { backupId: str, volumeId: str, live: optBool },
  csbsProtect: { itemId: str },
  csbsDelete: { itemId: str },
  csbsRestore: { itemId: str, restoreId: str, serverId: str, mapping },
};

/** A stored payload, checked against its kind's fields: a malformed one is the catalog's corruption, not the job's. */
export function parseJobPayload<T extends JobType>(type: T, raw: unknown): JobPayloads[T] {
  const fields = PAYLOAD_FIELDS[type] as Record<string, Check> | undefined;
  if (!fields) throw new AppError(ErrorCode.CatalogError, `unknown job type ${JSON.stringify(type)} in the catalog`);
  if (typeof raw !== 'object' || raw === null) throw new AppError(ErrorCode.CatalogError, `the payload of a ${type} job is not an object`);
  for (const [k, ok] of Object.entries(fields)) {
    if (!ok((raw as Record<string, unknown>)[k])) throw new AppError(ErrorCode.CatalogError, `the payload of a ${type} job has a bad ${k}`);
  }
  return raw as JobPayloads[T];
}

/** Haven's error code for a failed job's error (a non-AppError is an internal error). */
export function jobErrorCode(err: unknown): string {
  return err instanceof AppError ? err.code : ErrorCode.Internal;
}
