/**
 * Retention: which automatic backups of one volume under one policy to delete after a new one
 * succeeded. A pure function: backups in, ids to delete out.
 *
 * Rules (vbs.md §3.0; docs/scheduling.md has worked examples):
 * - Only `available` automatic backups take part. Manual backups never reach this function; backups
 *   being created, restored from (`restoring`), deleted, or failed (`error`) are never pruned here:
 *   a backup being restored from is pruned by a later run once the restore has ended.
 * - keepCount N (rentention_num): keep the newest N.
 * - keepDays D (rentention_day): keep those younger than D days (created less than D×24 h ago).
 *   When both are given, the count wins (the reference's rule); keepDays is then ignored.
 * - keepFirstOfMonth (remain_first_backup_of_curMonth = Y): the first automatic backup of the current
 *   month, in the policy's time zone, is kept as well, until the month ends.
 */
import type { BackupStatus } from './model.ts';

export interface RetentionRule {
  keepCount: number | null;
  keepDays: number | null;
  keepFirstOfMonth: boolean;
  /** Minutes east of UTC of the policy's time zone (months are local months). */
  offsetMinutes: number;
}

export interface RetentionCandidate {
  id: string;
  createdAt: number;
  status: BackupStatus;
}

const DAY_MS = 86_400_000;

/** Year*12+month of the local month containing `ms`. */
function localMonth(ms: number, offsetMinutes: number): number {
  const d = new Date(ms + offsetMinutes * 60_000);
  return d.getUTCFullYear() * 12 + d.getUTCMonth();
}

export function selectBackupsToDelete(backups: readonly RetentionCandidate[], rule: RetentionRule, nowMs: number): string[] {
  const eligible = backups.filter((b) => b.status === 'available').sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1));
  const keep = new Set<string>();
  if (rule.keepCount !== null) {
    for (const b of eligible.slice(0, Math.max(0, rule.keepCount))) keep.add(b.id);
  } else if (rule.keepDays !== null) {
    for (const b of eligible) if (nowMs - b.createdAt < rule.keepDays * DAY_MS) keep.add(b.id);
  } else {
    return []; // no rule: keep everything
  }
  if (rule.keepFirstOfMonth) {
    const month = localMonth(nowMs, rule.offsetMinutes);
    const first = eligible.filter((b) => localMonth(b.createdAt, rule.offsetMinutes) === month).at(-1);
    if (first) keep.add(first.id);
  }
  return eligible.filter((b) => !keep.has(b.id)).map((b) => b.id);
}
