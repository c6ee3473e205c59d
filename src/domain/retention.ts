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
  /** Minutes east of UTC of the policy's time zone (days, weeks, months are local). */
  offsetMinutes: number;
  /**
   * How count and days combine when both are given. VBS (default): the count wins and the days are
   * ignored. CSBS: both apply — a backup stays only if it is among the newest N and younger than D.
   */
  combine?: 'countWins' | 'both';
  /** CSBS `permanent`: nothing is ever pruned. */
  permanent?: boolean;
  /**
   * CSBS long-term rules (day/week/month/year_backups): the newest backup of each of the N most
   * recent local days (weeks from Monday, months, years) that have a backup is kept as well.
   */
  longTerm?: { days?: number; weeks?: number; months?: number; years?: number };
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

/** Local period index of `ms`: days since the epoch, weeks (from Monday), months, years. */
function period(ms: number, offsetMinutes: number, unit: 'days' | 'weeks' | 'months' | 'years'): number {
  const local = ms + offsetMinutes * 60_000;
  const d = new Date(local);
  switch (unit) {
    case 'days':
      return Math.floor(local / DAY_MS);
    case 'weeks':
      return Math.floor((Math.floor(local / DAY_MS) + 3) / 7); // 1970-01-05 was a Monday: day 4 -> week 1
    case 'months':
      return d.getUTCFullYear() * 12 + d.getUTCMonth();
    case 'years':
      return d.getUTCFullYear();
  }
}

export function selectBackupsToDelete(backups: readonly RetentionCandidate[], rule: RetentionRule, nowMs: number): string[] {
  if (rule.permanent) return [];
  const eligible = backups.filter((b) => b.status === 'available').sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1));
  const keep = new Set<string>();
  const longTerm = Object.entries(rule.longTerm ?? {}).filter(([, n]) => n !== undefined && n > 0) as [keyof NonNullable<RetentionRule['longTerm']>, number][];
  const byCount = rule.keepCount !== null ? new Set(eligible.slice(0, Math.max(0, rule.keepCount)).map((b) => b.id)) : null;
  const byDays = rule.keepDays !== null ? new Set(eligible.filter((b) => nowMs - b.createdAt < rule.keepDays! * DAY_MS).map((b) => b.id)) : null;
  if (!byCount && !byDays && !longTerm.length) return []; // no rule: keep everything
  if ((rule.combine ?? 'countWins') === 'countWins') {
    for (const id of byCount ?? byDays ?? []) keep.add(id);
  } else {
    for (const b of eligible) if ((!byCount || byCount.has(b.id)) && (!byDays || byDays.has(b.id)) && (byCount || byDays)) keep.add(b.id);
  }
  for (const [unit, n] of longTerm) {
    const seen = new Set<number>();
    for (const b of eligible) {
      const p = period(b.createdAt, rule.offsetMinutes, unit);
      if (seen.has(p)) continue;
      if (seen.size >= n) break;
      seen.add(p);
      keep.add(b.id); // the newest of its period (eligible is newest first)
    }
  }
  if (rule.keepFirstOfMonth) {
    const month = localMonth(nowMs, rule.offsetMinutes);
    const first = eligible.filter((b) => localMonth(b.createdAt, rule.offsetMinutes) === month).at(-1);
    if (first) keep.add(first.id);
  }
  return eligible.filter((b) => !keep.has(b.id)).map((b) => b.id);
}
