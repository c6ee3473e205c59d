/**
 * CSBS schedule patterns: the iCalendar RRULE subset of csbs.md §3.5 — FREQ=WEEKLY with BYDAY, or
 * FREQ=DAILY with an optional INTERVAL (days), BYHOUR and BYMINUTE — with or without the
 * VCALENDAR/VEVENT wrapper, CRLF or LF line ends. A pattern becomes the same slot model as VBS
 * policies (schedule-spec.ts): times on selected days, so one scheduler runs both.
 *
 * Times are read in UTC, as the reference does (csbs.md §3.5: the pattern carries no TZID; the
 * policy's `timezone` serves only its day/week/month/year retention rules). A pattern that names
 * its own time zone is read in it: `DTSTART;TZID=Europe/Berlin:20260101T000000` in the VEVENT, or
 * the TZID of a VTIMEZONE block (IANA names, or OTC's UTC±HH:mm); with an IANA zone the runs
 * follow its daylight-saving changes.
 *
 * Examples: "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=23;BYMINUTE=0" runs Monday, Wednesday and
 * Friday at 23:00 UTC, whatever the policy's `timezone`. The same RRULE after
 * "DTSTART;TZID=Europe/Berlin:20260101T000000" runs at 23:00 in Berlin: 22:00 UTC in winter,
 * 21:00 UTC in summer.
 */
import { parseTimeZone } from '../domain/policy.ts';
import { isKnownZone, ScheduleError, type VbsSchedule } from './schedule-spec.ts';

const DAYS = ['SU', 'MO', 'TU', 'WE', 'TH', 'FR', 'SA'];

export interface RRule {
  freq: 'WEEKLY' | 'DAILY';
  byDay: number[];
  byHour: number[];
  byMinute: number[];
  interval: number;
  /** The pattern's own time zone (DTSTART's TZID or a VTIMEZONE's), or null: UTC. */
  tzid: string | null;
}

const WRAPPER = /^(BEGIN|END):(VCALENDAR|VEVENT)$/i;
/** Calendar properties that say nothing about when the policy runs. */
const IGNORED = /^(VERSION|PRODID|CALSCALE|UID|DTSTAMP|SUMMARY|DESCRIPTION)[;:]/i;

/** Takes the TZID out of DTSTART and VTIMEZONE lines; returns the lines left and the zone. */
function extractZone(lines: string[]): { lines: string[]; tzid: string | null } {
  const rest: string[] = [];
  let dtstartZone: string | null = null;
  let blockZone: string | null = null;
  let inTimezone = false;
  for (const l of lines) {
    if (/^BEGIN:VTIMEZONE$/i.test(l)) {
      if (inTimezone) throw new ScheduleError('nested VTIMEZONE');
      inTimezone = true;
    } else if (/^END:VTIMEZONE$/i.test(l)) {
      if (!inTimezone) throw new ScheduleError('END:VTIMEZONE without BEGIN:VTIMEZONE');
      inTimezone = false;
    } else if (inTimezone) {
      // STANDARD/DAYLIGHT rules are those of the named zone, which the runtime knows.
      const m = /^TZID:(.+)$/i.exec(l);
      if (m) blockZone = unquote(m[1]!);
    } else if (/^DTSTART[;:]/i.test(l)) {
      const params = l.slice(7, l.indexOf(':', 7) < 0 ? undefined : l.lastIndexOf(':'));
      const tz = /;TZID=("[^"]*"|[^;:]*)/i.exec(params)?.[1];
      const value = l.slice(l.lastIndexOf(':') + 1);
      if (!/^\d{8}(T\d{6}Z?)?$/.test(value)) throw new ScheduleError(`DTSTART ${value} is not an iCalendar date-time such as 20260101T000000`);
      if (tz !== undefined) dtstartZone = unquote(tz);
    } else {
      rest.push(l);
    }
  }
  if (inTimezone) throw new ScheduleError('BEGIN:VTIMEZONE without END:VTIMEZONE');
  const tzid = dtstartZone ?? blockZone;
  if (tzid !== null && parseTimeZone(tzid) === null && !isKnownZone(tzid)) throw new ScheduleError(`TZID ${tzid} is not a known time zone (an IANA name such as Europe/Berlin, or UTC+08:00)`);
  return { lines: rest, tzid };
}

function unquote(s: string): string {
  return s.trim().replace(/^"(.*)"$/, '$1');
}

function numbers(v: string, key: string, min: number, max: number): number[] {
  const out = v.split(',').map((x) => {
    if (!/^\d{1,2}$/.test(x.trim())) throw new ScheduleError(`${key}=${v}: ${x} is not a number`);
    const n = Number(x);
    if (n < min || n > max) throw new ScheduleError(`${key}=${v}: ${n} is outside ${min}-${max}`);
    return n;
  });
  return [...new Set(out)].sort((a, b) => a - b);
}

export function parsePattern(pattern: string): RRule {
  const { lines, tzid } = extractZone(pattern.split(/\r?\n/).map((l) => l.trim()).filter(Boolean));
  const rrules = lines.filter((l) => l.toUpperCase().startsWith('RRULE:'));
  const other = lines.filter((l) => !/^RRULE:/i.test(l) && !WRAPPER.test(l) && !IGNORED.test(l));
  if (rrules.length !== 1) throw new ScheduleError('the pattern must hold exactly one RRULE line');
  if (other.length) throw new ScheduleError(`unsupported line in the pattern: ${other[0]}`);
  const parts = new Map<string, string>();
  for (const kv of rrules[0]!.slice(6).split(';').filter(Boolean)) {
    const [k, v] = kv.split('=');
    if (!k || v === undefined || v === '') throw new ScheduleError(`malformed RRULE part ${kv}`);
    parts.set(k.toUpperCase(), v.toUpperCase());
  }
  for (const k of parts.keys()) if (!['FREQ', 'BYDAY', 'BYHOUR', 'BYMINUTE', 'INTERVAL'].includes(k)) throw new ScheduleError(`RRULE key ${k} is not supported (FREQ, BYDAY, BYHOUR, BYMINUTE, INTERVAL)`);
  const freq = parts.get('FREQ');
  if (freq !== 'WEEKLY' && freq !== 'DAILY') throw new ScheduleError(`FREQ must be WEEKLY or DAILY, got ${freq ?? 'nothing'}`);
  const byDayRaw = parts.get('BYDAY');
  const byDay = byDayRaw === undefined ? [] : [...new Set(byDayRaw.split(',').map((d) => {
    const i = DAYS.indexOf(d.trim());
    if (i < 0) throw new ScheduleError(`BYDAY=${byDayRaw}: ${d} is not one of ${DAYS.join(', ')}`);
    return i;
  }))].sort((a, b) => a - b);
  if (freq === 'WEEKLY' && !byDay.length) throw new ScheduleError('FREQ=WEEKLY needs BYDAY');
  if (!parts.has('BYHOUR')) throw new ScheduleError('the RRULE needs BYHOUR');
  const byHour = numbers(parts.get('BYHOUR')!, 'BYHOUR', 0, 23);
  const byMinute = parts.has('BYMINUTE') ? numbers(parts.get('BYMINUTE')!, 'BYMINUTE', 0, 59) : [0];
  const interval = parts.has('INTERVAL') ? Number(parts.get('INTERVAL')) : 1;
  if (!Number.isInteger(interval) || interval < 1 || interval > 30) throw new ScheduleError(`INTERVAL must be 1-30 days, got ${parts.get('INTERVAL')}`);
  if (freq === 'WEEKLY' && parts.has('INTERVAL') && interval !== 1) throw new ScheduleError('INTERVAL is supported with FREQ=DAILY only');
  const times = byHour.flatMap((h) => byMinute.map((m) => h * 60 + m)).sort((a, b) => a - b);
  if (times.length > 24) throw new ScheduleError(`at most 24 runs a day, the pattern has ${times.length}`);
  for (let i = 1; i < times.length; i++) if (times[i]! - times[i - 1]! < 60) throw new ScheduleError('runs must be at least one hour apart');
  // Across midnight too, when consecutive days both run.
  const consecutive = freq === 'DAILY' ? interval === 1 : byDay.some((d) => byDay.includes((d + 1) % 7));
  if (consecutive && times.length > 1 && times[0]! + 1440 - times.at(-1)! < 60) throw new ScheduleError('runs must be at least one hour apart, also across midnight');
  return { freq, byDay, byHour, byMinute, interval, tzid };
}

/**
 * The slot model of a pattern: in UTC, or in the pattern's own TZID. `anchorMs` (the policy's
 * creation or last schedule change) is the day INTERVAL counts from.
 */
export function rruleSchedule(rule: RRule, anchorMs: number): VbsSchedule {
  const localMinutes = rule.byHour.flatMap((h) => rule.byMinute.map((m) => h * 60 + m)).sort((a, b) => a - b);
  const fixed = rule.tzid === null ? 0 : parseTimeZone(rule.tzid);
  const zone = { offsetMinutes: fixed ?? 0, zone: fixed === null ? rule.tzid : null };
  if (rule.freq === 'WEEKLY' || rule.byDay.length) {
    return { localMinutes, ...zone, weekDays: new Set(rule.byDay.length ? rule.byDay : [0, 1, 2, 3, 4, 5, 6]), frequencyDays: null, anchorMs };
  }
  return { localMinutes, ...zone, weekDays: null, frequencyDays: rule.interval, anchorMs };
}
