import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parsePattern, rruleSchedule } from './rrule.ts';
import { nextSlots, ScheduleError } from './schedule-spec.ts';

const iso = (ms: number) => new Date(ms).toISOString();
const at = (s: string) => Date.parse(s);

describe('CSBS RRULE patterns', () => {
  it('the reference pattern, wrapped in VCALENDAR with CRLF', () => {
    const r = parsePattern('BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nRRULE:FREQ=WEEKLY;BYDAY=TH;BYHOUR=12;BYMINUTE=27\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n');
    // 2026-11-26 is a Thursday.
    assert.deepEqual(nextSlots(rruleSchedule(r, 0, 0), at('2026-11-25T00:00:00Z'), 2).map(iso), ['2026-11-26T12:27:00.000Z', '2026-12-03T12:27:00.000Z']);
  });

  it('the Karbor short form, LF, several days and the policy time zone', () => {
    const r = parsePattern('BEGIN:VEVENT\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=23;BYMINUTE=0\nEND:VEVENT');
    // 23:00 at UTC+01:00 = 22:00 UTC; 2026-11-25 is a Wednesday.
    assert.deepEqual(nextSlots(rruleSchedule(r, 60, 0), at('2026-11-25T00:00:00Z'), 3).map(iso), ['2026-11-25T22:00:00.000Z', '2026-11-27T22:00:00.000Z', '2026-11-30T22:00:00.000Z']);
  });

  it('daily with several hours, and every N days from the anchor', () => {
    const daily = parsePattern('RRULE:FREQ=DAILY;BYHOUR=2,14;BYMINUTE=30');
    assert.deepEqual(nextSlots(rruleSchedule(daily, 0, 0), at('2026-11-25T03:00:00Z'), 3).map(iso), ['2026-11-25T14:30:00.000Z', '2026-11-26T02:30:00.000Z', '2026-11-26T14:30:00.000Z']);
    const every3 = parsePattern('RRULE:FREQ=DAILY;INTERVAL=3;BYHOUR=1;BYMINUTE=0');
    assert.deepEqual(nextSlots(rruleSchedule(every3, 0, at('2026-11-25T12:00:00Z')), at('2026-11-25T12:00:00Z'), 2).map(iso), ['2026-11-28T01:00:00.000Z', '2026-12-01T01:00:00.000Z']);
  });

  for (const [why, p] of [
    ['an unsupported FREQ', 'RRULE:FREQ=HOURLY;BYHOUR=1'],
    ['WEEKLY without BYDAY', 'RRULE:FREQ=WEEKLY;BYHOUR=1'],
    ['no BYHOUR', 'RRULE:FREQ=DAILY;BYMINUTE=0'],
    ['an hour out of range', 'RRULE:FREQ=DAILY;BYHOUR=24'],
    ['a bad day', 'RRULE:FREQ=WEEKLY;BYDAY=XX;BYHOUR=1'],
    ['runs less than an hour apart', 'RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=0,30'],
    ['an unknown key', 'RRULE:FREQ=DAILY;BYHOUR=1;COUNT=3'],
    ['no RRULE', 'BEGIN:VEVENT\nEND:VEVENT'],
  ] as const) {
    it(`refuses ${why}`, () => assert.throws(() => parsePattern(p), ScheduleError));
  }

  it('accepts runs exactly an hour apart across midnight (23:30 and 00:30 daily)', () => {
    assert.doesNotThrow(() => parsePattern('RRULE:FREQ=DAILY;BYHOUR=0,23;BYMINUTE=30'));
  });

  it('accepts 23:30 and 00:30 on Monday only (the runs are a week apart)', () => {
    assert.doesNotThrow(() => parsePattern('RRULE:FREQ=WEEKLY;BYDAY=MO;BYHOUR=0,23;BYMINUTE=30'));
  });
});
