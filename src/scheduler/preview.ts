/**
 * Schedule previews: the next run times of a VBS policy schedule or a CSBS RRULE pattern, checked
 * and computed by the code the scheduler runs (schedule-spec.ts, rrule.ts). One module for both
 * ways in, `haven schedule preview` (cli/commands/schedule-commands.ts) and
 * POST /haven/v1/schedule/preview (api/haven.routes.ts), so they accept the same schedules, refuse
 * the same ones with the same words, and agree on every run time. Each names the fields as its
 * user writes them (`--start-time` on the command line, `start_time` in JSON): PreviewFieldNames.
 *
 * A mistake is an AppError(INVALID_ARGUMENT) saying what is wrong; the schedule's own rules
 * (ScheduleError: a start time that is not a whole hour, a bad time zone, an RRULE outside the
 * supported subset) keep their message.
 */
import { AppError, ErrorCode } from '../domain/errors.ts';
import { WEEK_DAYS, type WeekDay } from '../domain/policy.ts';
import { parsePattern, rruleSchedule } from './rrule.ts';
import { nextSlots, ScheduleError, vbsSchedule, type VbsSchedule } from './schedule-spec.ts';

/** How the caller's user names each field, for the messages. */
export interface PreviewFieldNames {
  startTime: string;
  pattern: string;
  timeZone: string;
  weekFrequency: string;
  frequency: string;
  created: string;
  from: string;
  count: string;
}

/**
 * A preview as asked for: either `startTime` (VBS, with `weekFrequency` or `frequency`) or
 * `pattern` (CSBS). Absent fields are undefined.
 */
export interface PreviewRequest {
  /** VBS: whole UTC hours, comma separated ("22:00,02:00"). */
  startTime?: string | undefined;
  /**
   * CSBS: an RRULE pattern, with or without its VCALENDAR wrapper. Its line ends may be written as
   * the two characters `\n` or `\r\n` (a shell argument, a one-line form field).
   */
  pattern?: string | undefined;
  /** VBS: UTC+HH:mm or UTC-HH:mm (never with a pattern: a CSBS policy's timezone is for retention only). */
  timeZone?: string | undefined;
  /** VBS: local days of the week (MON, THU, …). */
  weekFrequency?: readonly string[] | undefined;
  /** VBS: every N local days from `created`; a number, or the text the user typed (whole digits). */
  frequency?: number | string | undefined;
  /** When the policy was created or its schedule last changed (ISO 8601); default `from`. */
  created?: string | undefined;
  /** Run times at or after this time (ISO 8601); default now. */
  from?: string | undefined;
  /** How many run times; a number, or the text the user typed. */
  count: number | string;
}

export interface PreviewOptions {
  names: PreviewFieldNames;
  /** The largest count allowed. */
  maxCount: number;
  /** "Now" (ms), for a request without `from`. */
  nowMs: number;
}

const invalid = (message: string): AppError => new AppError(ErrorCode.InvalidArgument, message);

/** The longest VBS frequency, in days (the policy API's own range: 1 to 30). */
export const MAX_FREQUENCY_DAYS = 30;
/**
 * Times a preview accepts: the computation walks day by day from `created` to `from`, so their
 * distance is bounded (a preview is open to every token: it must not hold the event loop).
 */
const EARLIEST_MS = Date.UTC(2000, 0, 1);
const LATEST_MS = Date.UTC(2100, 0, 1);

function parseIso(s: string, what: string): number {
  const ms = Date.parse(s);
  if (!/^\d{4}-\d\d-\d\dT/.test(s) || Number.isNaN(ms)) throw invalid(`${what} must be an ISO 8601 time such as 2026-11-30T00:00:00Z, got ${s}`);
  if (ms < EARLIEST_MS || ms >= LATEST_MS) throw invalid(`${what} must be a time in the years 2000 to 2099, got ${s}`);
  return ms;
}

/** The first `count` run times (ms since the epoch, ascending) of the schedule asked for. */
export function previewRuns(req: PreviewRequest, opts: PreviewOptions): number[] {
  const n = opts.names;
  if ((req.startTime === undefined) === (req.pattern === undefined)) throw invalid(`give either ${n.startTime} (VBS) or ${n.pattern} (CSBS)`);
  const fromText = req.from ?? new Date(opts.nowMs).toISOString();
  if (req.pattern !== undefined) {
    const pattern = req.pattern;
    if (req.weekFrequency !== undefined || req.frequency !== undefined) throw invalid(`${n.pattern} carries its own days; leave out ${n.weekFrequency} and ${n.frequency}`);
    // A CSBS pattern is read in UTC (or its own TZID); the policy's timezone never moves it.
    if (req.timeZone !== undefined) throw invalid(`${n.timeZone} does not apply to ${n.pattern}: CSBS patterns are read in UTC (the policy's timezone serves only retention); to run in a zone, name it in the pattern: "BEGIN:VCALENDAR\\nBEGIN:VEVENT\\nDTSTART;TZID=Europe/Berlin:20260101T000000\\nRRULE:...\\nEND:VEVENT\\nEND:VCALENDAR"`);
    return slots(req.count, opts, () => {
      const from = parseIso(fromText, n.from);
      return { schedule: rruleSchedule(parsePattern(pattern.replace(/\\r\\n|\\n/g, '\n')), req.created !== undefined ? parseIso(req.created, n.created) : from), from };
    });
  }
  if ((req.weekFrequency === undefined) === (req.frequency === undefined)) throw invalid(`give either ${n.weekFrequency} or ${n.frequency} (with ${n.created})`);
  if (req.frequency !== undefined && req.created === undefined) throw invalid(`${n.frequency} needs ${n.created} (the day the count starts from)`);
  let frequency: number | null = null;
  if (req.frequency !== undefined) {
    const f = req.frequency;
    frequency = typeof f === 'number' ? f : /^\d+$/.test(f) ? Number(f) : Number.NaN;
    if (!Number.isInteger(frequency) || frequency < 1 || frequency > MAX_FREQUENCY_DAYS) throw invalid(`${n.frequency} must be a whole number of days from 1 to ${MAX_FREQUENCY_DAYS}, got ${f}`);
  }
  const week = req.weekFrequency;
  if (week !== undefined && week.length === 0) throw invalid(`${n.weekFrequency} must name at least one day (${WEEK_DAYS.join(', ')})`);
  for (const d of week ?? []) if (!(WEEK_DAYS as readonly string[]).includes(d)) throw invalid(`${n.weekFrequency}: ${d} is not one of ${WEEK_DAYS.join(', ')}`);
  const startTime = req.startTime!;
  return slots(req.count, opts, () => {
    const from = parseIso(fromText, n.from);
    const anchor = req.created !== undefined ? parseIso(req.created, n.created) : from;
    return { schedule: vbsSchedule({ startTime, timeZone: req.timeZone ?? null, weekFrequency: (week as readonly WeekDay[] | undefined) ?? null, frequency, anchorMs: anchor }), from };
  });
}

/** The next `count` slots of the schedule `make` builds; a schedule's own error is a bad argument with its message. */
function slots(count: number | string, opts: PreviewOptions, make: () => { schedule: VbsSchedule; from: number }): number[] {
  const c = Number(count);
  if (!Number.isInteger(c) || c < 1 || c > opts.maxCount) throw invalid(`${opts.names.count} must be a whole number from 1 to ${opts.maxCount}, got ${count}`);
  try {
    const { schedule, from } = make();
    return nextSlots(schedule, from, c);
  } catch (err) {
    if (err instanceof ScheduleError) throw invalid(err.message);
    throw err;
  }
}
