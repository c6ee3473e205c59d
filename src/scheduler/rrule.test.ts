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
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-11-25T00:00:00Z'), 2).map(iso), ['2026-11-26T12:27:00.000Z', '2026-12-03T12:27:00.000Z']);
  });

  it('the Karbor short form, LF, several days, read in UTC', () => {
    const r = parsePattern('BEGIN:VEVENT\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=23;BYMINUTE=0\nEND:VEVENT');
    assert.equal(r.tzid, null);
    // 2026-11-25 is a Wednesday.
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-11-25T00:00:00Z'), 3).map(iso), ['2026-11-25T23:00:00.000Z', '2026-11-27T23:00:00.000Z', '2026-11-30T23:00:00.000Z']);
  });

  it('a VCALENDAR pattern with DTSTART;TZID runs in that zone, following its daylight-saving changes', () => {
    const r = parsePattern('BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nDTSTART;TZID=Europe/Berlin:20260101T000000\r\nRRULE:FREQ=DAILY;BYHOUR=14;BYMINUTE=0\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n');
    assert.equal(r.tzid, 'Europe/Berlin');
    // 2026-03-29 02:00 CET -> 03:00 CEST: 14:00 Berlin is 13:00 UTC before, 12:00 UTC after.
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-03-28T00:00:00Z'), 3).map(iso), ['2026-03-28T13:00:00.000Z', '2026-03-29T12:00:00.000Z', '2026-03-30T12:00:00.000Z']);
  });

  it('a VTIMEZONE block names the zone; OTC-style UTC+08:00 works too', () => {
    const r = parsePattern('BEGIN:VCALENDAR\nBEGIN:VTIMEZONE\nTZID:Asia/Shanghai\nBEGIN:STANDARD\nTZOFFSETFROM:+0800\nTZOFFSETTO:+0800\nDTSTART:19700101T000000\nEND:STANDARD\nEND:VTIMEZONE\nBEGIN:VEVENT\nRRULE:FREQ=WEEKLY;BYDAY=MO;BYHOUR=2;BYMINUTE=0\nEND:VEVENT\nEND:VCALENDAR');
    assert.equal(r.tzid, 'Asia/Shanghai');
    // Monday 02:00 in Shanghai is Sunday 18:00 UTC; 2026-11-29 is a Sunday.
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-11-25T00:00:00Z'), 2).map(iso), ['2026-11-29T18:00:00.000Z', '2026-12-06T18:00:00.000Z']);
    const fixed = parsePattern('BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART;TZID="UTC+08:00":20260101T000000\nRRULE:FREQ=DAILY;BYHOUR=14;BYMINUTE=0\nEND:VEVENT\nEND:VCALENDAR');
    assert.deepEqual(nextSlots(rruleSchedule(fixed, 0), at('2026-11-25T00:00:00Z'), 1).map(iso), ['2026-11-25T06:00:00.000Z']);
  });

  it('a local time skipped by spring-forward runs later by the gap; a doubled one runs once, at its first occurrence', () => {
    const r = parsePattern('BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART;TZID=Europe/Berlin:20260101T000000\nRRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=30\nEND:VEVENT\nEND:VCALENDAR');
    // 2026-03-29 02:30 does not exist in Berlin: it runs at 03:30 CEST = 01:30 UTC.
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-03-28T00:00:00Z'), 3).map(iso), ['2026-03-28T01:30:00.000Z', '2026-03-29T01:30:00.000Z', '2026-03-30T00:30:00.000Z']);
    // 2026-10-25 02:30 exists twice (CEST, then CET): the first, 00:30 UTC; then 01:30 UTC daily.
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-10-24T00:00:00Z'), 3).map(iso), ['2026-10-24T00:30:00.000Z', '2026-10-25T00:30:00.000Z', '2026-10-26T01:30:00.000Z']);
  });

  it('daily with several hours, and every N days from the anchor', () => {
    const daily = parsePattern('RRULE:FREQ=DAILY;BYHOUR=2,14;BYMINUTE=30');
    assert.deepEqual(nextSlots(rruleSchedule(daily, 0), at('2026-11-25T03:00:00Z'), 3).map(iso), ['2026-11-25T14:30:00.000Z', '2026-11-26T02:30:00.000Z', '2026-11-26T14:30:00.000Z']);
    const every3 = parsePattern('RRULE:FREQ=DAILY;INTERVAL=3;BYHOUR=1;BYMINUTE=0');
    assert.deepEqual(nextSlots(rruleSchedule(every3, at('2026-11-25T12:00:00Z')), at('2026-11-25T12:00:00Z'), 2).map(iso), ['2026-11-28T01:00:00.000Z', '2026-12-01T01:00:00.000Z']);
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
    ['an unknown TZID', 'BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART;TZID=Mars/Olympus:20260101T000000\nRRULE:FREQ=DAILY;BYHOUR=1\nEND:VEVENT\nEND:VCALENDAR'],
    ['a malformed DTSTART', 'BEGIN:VEVENT\nDTSTART;TZID=Europe/Berlin:tomorrow\nRRULE:FREQ=DAILY;BYHOUR=1\nEND:VEVENT'],
    ['an unclosed VTIMEZONE', 'BEGIN:VCALENDAR\nBEGIN:VTIMEZONE\nTZID:Europe/Berlin\nBEGIN:VEVENT\nRRULE:FREQ=DAILY;BYHOUR=1\nEND:VEVENT\nEND:VCALENDAR'],
  ] as const) {
    it(`refuses ${why}`, () => assert.throws(() => parsePattern(p), ScheduleError));
  }

  it('runs exactly an hour apart across midnight (23:30 and 00:30 daily) are accepted and run at those times', () => {
    const r = parsePattern('RRULE:FREQ=DAILY;BYHOUR=0,23;BYMINUTE=30');
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-11-25T00:00:00Z'), 4).map(iso), ['2026-11-25T00:30:00.000Z', '2026-11-25T23:30:00.000Z', '2026-11-26T00:30:00.000Z', '2026-11-26T23:30:00.000Z']);
    // 23:30 and 00:15 would be 45 minutes apart across midnight.
    assert.throws(() => parsePattern('RRULE:FREQ=DAILY;BYHOUR=0,23;BYMINUTE=15,30'), /at least one hour apart/);
  });

  it('23:30 and 00:30 on Monday only are accepted (a day apart, then a week) and run on Monday', () => {
    const r = parsePattern('RRULE:FREQ=WEEKLY;BYDAY=MO;BYHOUR=0,23;BYMINUTE=30');
    // 2026-11-30 is a Monday: 00:30 and 23:30 that day, the same a week later, nothing in between.
    assert.deepEqual(nextSlots(rruleSchedule(r, 0), at('2026-11-25T00:00:00Z'), 4).map(iso), ['2026-11-30T00:30:00.000Z', '2026-11-30T23:30:00.000Z', '2026-12-07T00:30:00.000Z', '2026-12-07T23:30:00.000Z']);
    // On Monday and Tuesday the same times are 1 hour apart across midnight: still accepted.
    assert.deepEqual(nextSlots(rruleSchedule(parsePattern('RRULE:FREQ=WEEKLY;BYDAY=MO,TU;BYHOUR=0,23;BYMINUTE=30'), 0), at('2026-11-30T12:00:00Z'), 3).map(iso), ['2026-11-30T23:30:00.000Z', '2026-12-01T00:30:00.000Z', '2026-12-01T23:30:00.000Z']);
  });
});
