import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nextSlots } from './schedule-spec.ts';
import { csbsScheduleOf } from './sources.ts';

const iso = (ms: number) => new Date(ms).toISOString();
const at = (s: string) => Date.parse(s);

describe('the schedule of a CSBS policy', () => {
  it('reads the pattern in UTC whatever the retention timezone (csbs.md §3.5)', () => {
    const policy = { pattern: 'BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nRRULE:FREQ=DAILY;BYHOUR=14;BYMINUTE=0\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n', scheduleAnchor: 0 };
    for (const timezone of ['UTC+08:00', 'UTC-05:00', undefined]) {
      const p = { ...policy, retention: { max_backups: 3, ...(timezone ? { timezone } : {}) } };
      assert.deepEqual(nextSlots(csbsScheduleOf(p), at('2026-11-25T00:00:00Z'), 2).map(iso), ['2026-11-25T14:00:00.000Z', '2026-11-26T14:00:00.000Z'], `timezone ${timezone}`);
    }
  });

  it('reads it in the TZID the pattern names', () => {
    const p = { pattern: 'BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;TZID=Asia/Shanghai:20260101T000000\r\nRRULE:FREQ=DAILY;BYHOUR=14;BYMINUTE=0\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n', scheduleAnchor: 0, retention: { max_backups: 3, timezone: 'UTC-05:00' } };
    assert.deepEqual(nextSlots(csbsScheduleOf(p), at('2026-11-25T00:00:00Z'), 1).map(iso), ['2026-11-25T06:00:00.000Z']);
  });
});
