/**
 * `haven schedule preview`: the next run times of a policy schedule, checked and computed by
 * scheduler/preview.ts (the code the scheduler uses, shared with POST /haven/v1/schedule/preview).
 */
import type { Command } from 'commander';
import { previewRuns, type PreviewFieldNames } from '../../scheduler/preview.ts';

/** The options as this command names them, for the shared checks' messages (scheduler/preview.ts). */
const NAMES: PreviewFieldNames = { startTime: '--start-time', pattern: '--pattern', timeZone: '--time-zone', weekFrequency: '--week-frequency', frequency: '--frequency', created: '--created', from: '--from', count: '--count' };

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
      const times = previewRuns({
        startTime: opts.startTime, pattern: opts.pattern, timeZone: opts.timeZone, frequency: opts.frequency, created: opts.created, from: opts.from, count: opts.count,
        weekFrequency: opts.weekFrequency?.split(',').map((d) => d.trim().toUpperCase()),
      }, { names: NAMES, maxCount: 10_000, nowMs: Date.now() });
      const iso = times.map((t) => new Date(t).toISOString());
      process.stdout.write(opts.json ? `${JSON.stringify(iso)}\n` : `${iso.join('\n')}\n`);
    });
}
