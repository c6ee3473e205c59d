/**
 * CSBS schedule patterns: the iCalendar RRULE subset of csbs.md §3.5 — FREQ=WEEKLY with BYDAY, or
 * FREQ=DAILY with an optional INTERVAL (days), BYHOUR and BYMINUTE — with or without the
 * VCALENDAR/VEVENT wrapper, CRLF or LF line ends. A pattern becomes the same slot model as VBS
 * policies (schedule-spec.ts): local times on selected local days, so one scheduler runs both.
 * Times are read in the policy's time zone (UTC when it has none).
 *
 * Example: "RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=23;BYMINUTE=0" at UTC+01:00 runs Monday,
 * Wednesday and Friday at 23:00 local = 22:00 UTC.
 */
import { ScheduleError, type VbsSchedule } from './schedule-spec.ts';

const DAYS = ['SU', 'MO', 'TU', 'WE', 'TH', 'FR', 'SA'];

export interface RRule {
  freq: 'WEEKLY' | 'DAILY';
  byDay: number[];
  byHour: number[];
  byMinute: number[];
  interval: number;
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
  const lines = pattern.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  const rrules = lines.filter((l) => l.toUpperCase().startsWith('RRULE:'));
  const other = lines.filter((l) => !/^(RRULE:|BEGIN:VCALENDAR$|END:VCALENDAR$|BEGIN:VEVENT$|END:VEVENT$)/i.test(l));
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
  return { freq, byDay, byHour, byMinute, interval };
}

/** The slot model of a pattern; `offsetMinutes` is the policy's time zone, `anchorMs` counts INTERVAL days. */
export function rruleSchedule(rule: RRule, offsetMinutes: number, anchorMs: number): VbsSchedule {
  const localMinutes = rule.byHour.flatMap((h) => rule.byMinute.map((m) => h * 60 + m)).sort((a, b) => a - b);
  if (rule.freq === 'WEEKLY' || rule.byDay.length) {
    return { localMinutes, offsetMinutes, weekDays: new Set(rule.byDay.length ? rule.byDay : [0, 1, 2, 3, 4, 5, 6]), frequencyDays: null, anchorMs };
  }
  return { localMinutes, offsetMinutes, weekDays: null, frequencyDays: rule.interval, anchorMs };
}
