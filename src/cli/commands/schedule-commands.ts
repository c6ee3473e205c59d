/**
 * `haven schedule preview`: the next run times of a policy schedule, computed by the code the
 * scheduler uses (src/scheduler/schedule-spec.ts).
 */
import type { Command } from 'commander';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import { WEEK_DAYS, type WeekDay } from '../../domain/policy.ts';
import { parsePattern, rruleSchedule } from '../../scheduler/rrule.ts';
import { nextSlots, ScheduleError, vbsSchedule, type VbsSchedule } from '../../scheduler/schedule-spec.ts';

function parseIso(s: string, what: string): number {
  const ms = Date.parse(s);
  if (!/^\d{4}-\d\d-\d\dT/.test(s) || Number.isNaN(ms)) throw new AppError(ErrorCode.InvalidArgument, `${what} must be an ISO 8601 time such as 2026-11-30T00:00:00Z, got ${s}`);
  return ms;
}

/** Prints the next --count slots of the schedule `make` builds; schedule errors are usage errors. */
function preview(opts: { count: string; json?: boolean }, make: () => { schedule: VbsSchedule; from: number }): void {
  const count = Number(opts.count);
  if (!Number.isInteger(count) || count < 1 || count > 10_000) throw new AppError(ErrorCode.InvalidArgument, `--count must be a whole number from 1 to 10000, got ${opts.count}`);
  let times: number[];
  try {
    const { schedule, from } = make();
    times = nextSlots(schedule, from, count);
  } catch (err) {
    if (err instanceof ScheduleError) throw new AppError(ErrorCode.InvalidArgument, err.message);
    throw err;
  }
  const iso = times.map((t) => new Date(t).toISOString());
  process.stdout.write(opts.json ? `${JSON.stringify(iso)}\n` : `${iso.join('\n')}\n`);
}

export function registerScheduleCommands(program: Command): void {
  const schedule = program.command('schedule').description('policy schedules');
  schedule
    .command('preview')
    .description('print the next run times (UTC, ISO 8601) of a VBS policy schedule or a CSBS RRULE pattern')
    .option('--start-time <times>', 'VBS: whole UTC hours, comma separated, e.g. "22:00,00:00,02:00"')
    .option('--pattern <rrule>', 'CSBS: an RRULE pattern, e.g. "RRULE:FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=2;BYMINUTE=0" (times in UTC, or in the pattern\'s own DTSTART;TZID=...)')
    .option('--time-zone <zone>', 'VBS: the policy\'s time zone, UTC+HH:mm or UTC-HH:mm (not with --pattern: a CSBS policy\'s timezone is for retention only)')
    .option('--week-frequency <days>', 'local days of the week, e.g. MON,THU')
    .option('--frequency <days>', 'every N local days, counted from --created')
    .option('--created <iso>', 'when the policy was created or its schedule last changed (with --frequency)')
    .requiredOption('--from <iso>', 'list run times at or after this time')
    .option('--count <n>', 'how many run times', '10')
    .option('--json', 'print a JSON array of ISO strings')
    .action((opts: { startTime?: string; pattern?: string; timeZone?: string; weekFrequency?: string; frequency?: string; created?: string; from: string; count: string; json?: boolean }) => {
      if ((opts.startTime === undefined) === (opts.pattern === undefined)) throw new AppError(ErrorCode.InvalidArgument, 'give either --start-time (VBS) or --pattern (CSBS)');
      if (opts.pattern !== undefined) {
        if (opts.weekFrequency !== undefined || opts.frequency !== undefined) throw new AppError(ErrorCode.InvalidArgument, '--pattern carries its own days; leave out --week-frequency and --frequency');
        // A CSBS pattern is read in UTC (or its own TZID); the policy's timezone never moves it.
        if (opts.timeZone !== undefined) throw new AppError(ErrorCode.InvalidArgument, '--time-zone does not apply to --pattern: CSBS patterns are read in UTC (the policy\'s timezone serves only retention); to run in a zone, name it in the pattern: "BEGIN:VCALENDAR\\nBEGIN:VEVENT\\nDTSTART;TZID=Europe/Berlin:20260101T000000\\nRRULE:...\\nEND:VEVENT\\nEND:VCALENDAR"');
        return preview(opts, () => {
          const from = parseIso(opts.from, '--from');
          return { schedule: rruleSchedule(parsePattern(opts.pattern!.replace(/\\r\\n|\\n/g, '\n')), opts.created !== undefined ? parseIso(opts.created, '--created') : from), from };
        });
      }
      if ((opts.weekFrequency === undefined) === (opts.frequency === undefined)) throw new AppError(ErrorCode.InvalidArgument, 'give either --week-frequency or --frequency (with --created)');
      if (opts.frequency !== undefined && opts.created === undefined) throw new AppError(ErrorCode.InvalidArgument, '--frequency needs --created (the day the count starts from)');
      let frequency: number | null = null;
      if (opts.frequency !== undefined) {
        frequency = Number(opts.frequency);
        if (!/^\d+$/.test(opts.frequency) || frequency < 1) throw new AppError(ErrorCode.InvalidArgument, `--frequency must be a whole number of days >= 1, got ${opts.frequency}`);
      }
      const week = opts.weekFrequency?.split(',').map((d) => d.trim().toUpperCase());
      for (const d of week ?? []) if (!(WEEK_DAYS as readonly string[]).includes(d)) throw new AppError(ErrorCode.InvalidArgument, `--week-frequency: ${d} is not one of ${WEEK_DAYS.join(', ')}`);
      return preview(opts, () => {
        const from = parseIso(opts.from, '--from');
        const anchor = opts.created !== undefined ? parseIso(opts.created, '--created') : from;
        return { schedule: vbsSchedule({ startTime: opts.startTime!, timeZone: opts.timeZone ?? null, weekFrequency: (week as WeekDay[] | undefined) ?? null, frequency, anchorMs: anchor }), from };
      });
    });
}
