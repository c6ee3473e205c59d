/** `haven schedule preview`: the contract other tools use to check schedules. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runCli } from '../helpers/volumes.ts';

describe('haven schedule preview', () => {
  it('prints the reference example as a JSON array of ISO strings', async () => {
    const r = await runCli(['schedule', 'preview', '--start-time', '22:00,00:00,02:00', '--time-zone', 'UTC+02:00', '--week-frequency', 'MON', '--from', '2026-11-29T00:00:00Z', '--count', '4', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), ['2026-11-29T22:00:00.000Z', '2026-11-30T00:00:00.000Z', '2026-11-30T02:00:00.000Z', '2026-12-06T22:00:00.000Z']);
  });

  it('counts frequency days from --created, one time per line without --json', async () => {
    const r = await runCli(['schedule', 'preview', '--start-time', '02:00', '--time-zone', 'UTC+08:00', '--frequency', '3', '--created', '2026-11-25T15:00:00Z', '--from', '2026-11-25T15:00:00Z', '--count', '3']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['2026-11-28T02:00:00.000Z', '2026-12-01T02:00:00.000Z', '2026-12-04T02:00:00.000Z']);
  });

  it('takes a CSBS RRULE pattern, wrapped or not, in UTC unless the pattern names its TZID', async () => {
    const r = await runCli(['schedule', 'preview', '--pattern', 'BEGIN:VCALENDAR\\r\\nBEGIN:VEVENT\\r\\nRRULE:FREQ=WEEKLY;BYDAY=TH;BYHOUR=12;BYMINUTE=27\\r\\nEND:VEVENT\\r\\nEND:VCALENDAR\\r\\n', '--from', '2026-11-25T00:00:00Z', '--count', '2', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), ['2026-11-26T12:27:00.000Z', '2026-12-03T12:27:00.000Z']);
    const utc = await runCli(['schedule', 'preview', '--pattern', 'RRULE:FREQ=DAILY;BYHOUR=14;BYMINUTE=0', '--from', '2026-11-25T00:00:00Z', '--count', '2', '--json']);
    assert.deepEqual(JSON.parse(utc.stdout), ['2026-11-25T14:00:00.000Z', '2026-11-26T14:00:00.000Z']);
    const shanghai = 'BEGIN:VCALENDAR\\nBEGIN:VEVENT\\nDTSTART;TZID=Asia/Shanghai:20260101T000000\\nRRULE:FREQ=DAILY;BYHOUR=14;BYMINUTE=0\\nEND:VEVENT\\nEND:VCALENDAR';
    const tz = await runCli(['schedule', 'preview', '--pattern', shanghai, '--from', '2026-11-25T00:00:00Z', '--count', '2', '--json']);
    assert.equal(tz.code, 0, tz.stderr);
    assert.deepEqual(JSON.parse(tz.stdout), ['2026-11-25T06:00:00.000Z', '2026-11-26T06:00:00.000Z']);
  });

  it('refuses --time-zone with --pattern (a CSBS policy\'s timezone is for retention only), naming the TZID way', async () => {
    const r = await runCli(['schedule', 'preview', '--pattern', 'RRULE:FREQ=DAILY;BYHOUR=23;BYMINUTE=0', '--time-zone', 'UTC+01:00', '--from', '2026-11-25T00:00:00Z']);
    assert.notEqual(r.code, 0);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^haven: error: --time-zone does not apply to --pattern: CSBS patterns are read in UTC.*DTSTART;TZID=Europe\/Berlin.*\n$/);
  });

  for (const [what, args] of [
    ['an unsupported RRULE', ['--pattern', 'RRULE:FREQ=HOURLY;BYHOUR=1']],
    ['both --start-time and --pattern', ['--start-time', '12:00', '--pattern', 'RRULE:FREQ=DAILY;BYHOUR=1', '--week-frequency', 'MON']],
    ['a start time that is not a whole hour', ['--start-time', '12:30', '--week-frequency', 'MON']],
    ['a bad time zone', ['--start-time', '12:00', '--time-zone', 'UTC+8', '--week-frequency', 'MON']],
    ['a bad day', ['--start-time', '12:00', '--week-frequency', 'MONDAY']],
    ['both day selections', ['--start-time', '12:00', '--week-frequency', 'MON', '--frequency', '2', '--created', '2026-11-25T00:00:00Z']],
    ['frequency without --created', ['--start-time', '12:00', '--frequency', '2']],
  ] as const) {
    it(`refuses ${what} with one line on stderr`, async () => {
      const r = await runCli(['schedule', 'preview', ...args, '--from', '2026-11-29T00:00:00Z']);
      assert.notEqual(r.code, 0);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /^haven: error: .+\n$/);
    });
  }
});
