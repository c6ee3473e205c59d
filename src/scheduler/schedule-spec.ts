/**
 * When a VBS policy runs: its slots, computed from `start_time`, `time_zone`, and `week_frequency` or
 * `frequency` (docs/scheduling.md has the rules with worked examples). Pure functions of their
 * inputs: the scheduler, the preview command and the tests all use these.
 *
 * Rules:
 * - `start_time` lists whole UTC hours. Each is converted to the policy's local time (time_zone
 *   UTC±HH:mm; without one, local time is UTC) and the policy runs at those local times on the
 *   selected local days.
 * - week_frequency selects local days of the week. frequency N selects every N-th local day counted
 *   from the local day of the anchor (the policy's creation, or its last schedule change): anchor day,
 *   anchor day + N, + 2N, ...
 *
 * Worked example (the reference's): local 00:00, 02:00, 04:00 at UTC+02:00 is start_time
 * "22:00,00:00,02:00". A policy for Mondays runs on local Monday at 00:00, 02:00 and 04:00, which is
 * Sunday 22:00 UTC, Monday 00:00 UTC and Monday 02:00 UTC.
 */
import { parseTimeZone, WEEK_DAYS, type WeekDay } from '../domain/policy.ts';

export const MINUTE_MS = 60_000;
export const DAY_MS = 86_400_000;

export interface VbsSchedule {
  /** Local minutes of the day at which the policy runs, ascending. */
  localMinutes: number[];
  /** Minutes east of UTC. */
  offsetMinutes: number;
  /** Local days of the week (0 = SUN) or null. */
  weekDays: ReadonlySet<number> | null;
  /** Every N local days from the anchor's local day, or null. */
  frequencyDays: number | null;
  anchorMs: number;
}

export class ScheduleError extends Error {}

/** Parses "22:00,00:00,02:00" into UTC minutes of the day. */
export function parseStartTimes(startTime: string): number[] {
  const parts = startTime.split(',').map((s) => s.trim());
  const out: number[] = [];
  for (const p of parts) {
    const m = /^([01]\d|2[0-3]):00$/.exec(p);
    if (!m) throw new ScheduleError(`start time ${p} is not a whole UTC hour HH:00`);
    out.push(Number(m[1]) * 60);
  }
  if (!out.length) throw new ScheduleError('start_time is empty');
  return out;
}

export function vbsSchedule(p: { startTime: string; timeZone: string | null; weekFrequency: readonly WeekDay[] | null; frequency: number | null; anchorMs: number }): VbsSchedule {
  const offset = p.timeZone ? parseTimeZone(p.timeZone) : 0;
  if (offset === null) throw new ScheduleError(`time zone ${p.timeZone} is not UTC±HH:mm`);
  const localMinutes = [...new Set(parseStartTimes(p.startTime).map((m) => (((m + offset) % 1440) + 1440) % 1440))].sort((a, b) => a - b);
  if (p.frequency !== null) {
    if (!Number.isInteger(p.frequency) || p.frequency < 1) throw new ScheduleError(`frequency ${p.frequency} must be a positive whole number of days`);
    return { localMinutes, offsetMinutes: offset, weekDays: null, frequencyDays: p.frequency, anchorMs: p.anchorMs };
  }
  if (!p.weekFrequency?.length) throw new ScheduleError('a schedule needs frequency or week_frequency');
  const days = new Set(p.weekFrequency.map((d) => {
    const i = WEEK_DAYS.indexOf(d);
    if (i < 0) throw new ScheduleError(`${d} is not a day of the week (SUN..SAT)`);
    return i;
  }));
  return { localMinutes, offsetMinutes: offset, weekDays: days, frequencyDays: null, anchorMs: p.anchorMs };
}

/** Index of the local day (days since 1970-01-01 in local time) that contains `ms`. */
export function localDay(ms: number, offsetMinutes: number): number {
  return Math.floor((ms + offsetMinutes * MINUTE_MS) / DAY_MS);
}

function daySelected(s: VbsSchedule, day: number): boolean {
  if (s.weekDays) return s.weekDays.has((((day + 4) % 7) + 7) % 7); // 1970-01-01 was a Thursday (4)
  const anchor = localDay(s.anchorMs, s.offsetMinutes);
  return day >= anchor && (day - anchor) % s.frequencyDays! === 0;
}

/** The first slot at or after `fromMs` (UTC ms). A valid schedule always has one within a week or N days. */
export function nextSlot(s: VbsSchedule, fromMs: number): number {
  const off = s.offsetMinutes * MINUTE_MS;
  const maxDays = s.frequencyDays !== null ? s.frequencyDays + Math.max(0, localDay(s.anchorMs, s.offsetMinutes) - localDay(fromMs, s.offsetMinutes)) + 1 : 8;
  for (let day = localDay(fromMs, s.offsetMinutes), n = 0; n <= maxDays; day++, n++) {
    if (!daySelected(s, day)) continue;
    for (const m of s.localMinutes) {
      const at = day * DAY_MS + m * MINUTE_MS - off;
      if (at >= fromMs) return at;
    }
  }
  throw new ScheduleError('schedule has no slot'); // unreachable for a valid schedule
}

/** The next `count` slots at or after `fromMs`. */
export function nextSlots(s: VbsSchedule, fromMs: number, count: number): number[] {
  const out: number[] = [];
  let at = fromMs;
  while (out.length < count) {
    const t = nextSlot(s, at);
    out.push(t);
    at = t + 1;
  }
  return out;
}

/** The slots in [fromMs, toMs], oldest first (at most `limit`, the newest kept when more). */
export function slotsBetween(s: VbsSchedule, fromMs: number, toMs: number, limit = 1000): number[] {
  const out: number[] = [];
  let at = fromMs;
  for (;;) {
    const t = nextSlot(s, at);
    if (t > toMs) break;
    out.push(t);
    if (out.length > limit) out.shift();
    at = t + 1;
  }
  return out;
}
