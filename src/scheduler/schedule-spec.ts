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
  /** Minutes east of UTC (a fixed offset; ignored when `zone` is set). */
  offsetMinutes: number;
  /**
   * An IANA time zone (a CSBS pattern's own TZID, e.g. "Europe/Berlin"): local times follow its
   * daylight-saving changes. A local time that does not exist (skipped by a spring-forward change)
   * runs as many minutes later as the change skipped; one that exists twice (fall-back) runs at its
   * first occurrence, as RFC 5545 §3.3.5 prescribes.
   */
  zone?: string | null;
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

const zoneFormats = new Map<string, Intl.DateTimeFormat>();

/** Whether `zone` is a time zone name this runtime knows (IANA, e.g. "Asia/Shanghai"). */
export function isKnownZone(zone: string): boolean {
  try {
    zoneFormat(zone);
    return true;
  } catch {
    return false;
  }
}

function zoneFormat(zone: string): Intl.DateTimeFormat {
  let f = zoneFormats.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone: zone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric' });
    zoneFormats.set(zone, f);
  }
  return f;
}

/** The UTC offset of `zone` at `ms`, in minutes east of UTC. */
export function zoneOffsetMinutes(zone: string, ms: number): number {
  const p: Record<string, number> = {};
  for (const part of zoneFormat(zone).formatToParts(ms)) if (part.type !== 'literal') p[part.type] = Number(part.value);
  const wall = Date.UTC(p.year!, p.month! - 1, p.day!, p.hour!, p.minute!, p.second!);
  return Math.round((wall - Math.floor(ms / 1000) * 1000) / MINUTE_MS);
}

/**
 * The UTC time of local `minute` on local `day` in `zone`. Of the offsets in force around that
 * wall time, the earliest instant that shows it wins (fall-back: the first occurrence); when none
 * does (spring-forward gap), the offset before the change applies, which moves the run later by
 * the gap (02:30 in a 02:00→03:00 gap runs at 03:30).
 */
function zonedToUtc(zone: string, day: number, minute: number): number {
  const wall = day * DAY_MS + minute * MINUTE_MS;
  const before = zoneOffsetMinutes(zone, wall - 14 * 3_600_000);
  const afterwards = zoneOffsetMinutes(zone, wall + 14 * 3_600_000);
  const valid = [...new Set([before, afterwards])].map((o) => wall - o * MINUTE_MS).filter((t) => t + zoneOffsetMinutes(zone, t) * MINUTE_MS === wall);
  return valid.length ? Math.min(...valid) : wall - before * MINUTE_MS;
}

/** The offset of the schedule at `ms` (its zone's, or its fixed one). */
function offsetAt(s: VbsSchedule, ms: number): number {
  return s.zone ? zoneOffsetMinutes(s.zone, ms) : s.offsetMinutes;
}

/** Index of the local day (days since 1970-01-01 in local time) that contains `ms`. */
export function localDay(ms: number, offsetMinutes: number): number {
  return Math.floor((ms + offsetMinutes * MINUTE_MS) / DAY_MS);
}

function daySelected(s: VbsSchedule, day: number): boolean {
  if (s.weekDays) return s.weekDays.has((((day + 4) % 7) + 7) % 7); // 1970-01-01 was a Thursday (4)
  const anchor = localDay(s.anchorMs, offsetAt(s, s.anchorMs));
  return day >= anchor && (day - anchor) % s.frequencyDays! === 0;
}

/** The first slot at or after `fromMs` (UTC ms). A valid schedule always has one within a week or N days. */
export function nextSlot(s: VbsSchedule, fromMs: number): number {
  if (s.zone) return nextZonedSlot(s, s.zone, fromMs);
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

function nextZonedSlot(s: VbsSchedule, zone: string, fromMs: number): number {
  const first = localDay(fromMs, zoneOffsetMinutes(zone, fromMs)) - 1; // a day early: offsets move
  const anchorDay = localDay(s.anchorMs, zoneOffsetMinutes(zone, s.anchorMs));
  const maxDays = s.frequencyDays !== null ? s.frequencyDays + Math.max(0, anchorDay - first) + 2 : 9;
  for (let day = first, n = 0; n <= maxDays; day++, n++) {
    if (!daySelected(s, day)) continue;
    // Slots of one day are in order except around a gap, so take the earliest one due.
    const due = s.localMinutes.map((m) => zonedToUtc(zone, day, m)).filter((t) => t >= fromMs);
    if (due.length) return Math.min(...due);
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
