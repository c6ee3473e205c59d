/**
 * Backup policies (VBS): when to back up the associated volumes and what to keep.
 *
 * - start times: whole UTC hours ("22:00,00:00,02:00"), days chosen by `frequency` (every N days)
 *   or `weekFrequency` (days of the week), both read in the policy's `timeZone` (UTC+HH:mm).
 * - retention: `retentionNum` (keep the newest N automatic backups of a volume) or `retentionDay`
 *   (keep those younger than D days); when both are given, the count wins (vbs.md §3.0).
 *   `remainFirstBackupOfCurMonth` keeps the first automatic backup of the current month as well.
 * The wire keys are OTC's misspelt `rentention_num`/`rentention_day`; inside, the words are right.
 */
export const WEEK_DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'] as const;
export type WeekDay = (typeof WEEK_DAYS)[number];

export interface Policy {
  id: string;
  projectId: string;
  name: string;
  startTime: string;
  frequency: number | null;
  weekFrequency: WeekDay[] | null;
  retentionNum: number | null;
  retentionDay: number | null;
  remainFirstBackupOfCurMonth: boolean;
  status: 'ON' | 'OFF';
  timeZone: string | null;
  /** When the schedule was set (created, or its days last changed): `frequency` counts from here. */
  scheduleAnchor: number;
  /** The next slot the scheduler will handle; null until computed (or after a schedule change). */
  nextRunAt: number | null;
  createdAt: number;
  updatedAt: number;
}

export interface PolicyWithCount extends Policy {
  resourceCount: number;
}

export type TaskStatus = 'RUNNING' | 'EXECUTE_TIMEOUT' | 'WAITING' | 'EXECUTE_FAIL' | 'EXECUTE_SUCCESS' | 'SKIP';

export interface PolicyTask {
  id: string;
  policyId: string;
  projectId: string;
  volumeId: string;
  backupId: string | null;
  backupName: string;
  jobId: string | null;
  status: TaskStatus;
  failReason: string | null;
  slotAt: number | null;
  createdAt: number;
  finishedAt: number | null;
}

export interface Sharing {
  id: string;
  backupId: string;
  fromProjectId: string;
  toProjectId: string;
  createdAt: number;
  updatedAt: number;
}

/** Parses `UTC+08:00` / `UTC-03:30` into minutes east of UTC, or null when malformed. */
export function parseTimeZone(tz: string): number | null {
  const m = /^UTC([+-])(\d{2}):(\d{2})$/.exec(tz);
  if (!m) return null;
  const h = Number(m[2]);
  const min = Number(m[3]);
  if (h > 14 || min > 59 || (h === 14 && min > 0)) return null;
  return (m[1] === '-' ? -1 : 1) * (h * 60 + min);
}
