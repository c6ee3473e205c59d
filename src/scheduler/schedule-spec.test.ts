import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { nextSlots, parseStartTimes, slotsBetween, vbsSchedule, ScheduleError } from './schedule-spec.ts';

const iso = (ms: number) => new Date(ms).toISOString().replace('.000Z', 'Z');
const at = (s: string) => Date.parse(s);

describe('VBS schedules', () => {
  it('the reference example: local 00,02,04 at UTC+02:00 on Mondays', () => {
    const s = vbsSchedule({ startTime: '22:00,00:00,02:00', timeZone: 'UTC+02:00', weekFrequency: ['MON'], frequency: null, anchorMs: 0 });
    // 2026-11-29 is a Sunday.
    assert.deepEqual(nextSlots(s, at('2026-11-29T00:00:00Z'), 4).map(iso), ['2026-11-29T22:00:00Z', '2026-11-30T00:00:00Z', '2026-11-30T02:00:00Z', '2026-12-06T22:00:00Z']);
  });

  it('without a time zone, days are UTC days', () => {
    const s = vbsSchedule({ startTime: '22:00,00:00,02:00', timeZone: null, weekFrequency: ['MON'], frequency: null, anchorMs: 0 });
    assert.deepEqual(nextSlots(s, at('2026-11-29T00:00:00Z'), 4).map(iso), ['2026-11-30T00:00:00Z', '2026-11-30T02:00:00Z', '2026-11-30T22:00:00Z', '2026-12-07T00:00:00Z']);
  });

  it('negative offsets move local days the other way: local Friday 21:00 at UTC-03:00 is Saturday 00:00 UTC', () => {
    const s = vbsSchedule({ startTime: '00:00', timeZone: 'UTC-03:00', weekFrequency: ['FRI'], frequency: null, anchorMs: 0 });
    // 2026-11-27 is a Friday; local Friday 21:00 = Saturday 2026-11-28 00:00 UTC.
    assert.deepEqual(nextSlots(s, at('2026-11-25T00:00:00Z'), 2).map(iso), ['2026-11-28T00:00:00Z', '2026-12-05T00:00:00Z']);
  });

  it('half-hour offsets: 12:00 UTC at UTC+05:30 is local 17:30', () => {
    const s = vbsSchedule({ startTime: '12:00', timeZone: 'UTC+05:30', weekFrequency: ['WED'], frequency: null, anchorMs: 0 });
    assert.deepEqual(nextSlots(s, at('2026-11-25T12:00:00Z'), 2).map(iso), ['2026-11-25T12:00:00Z', '2026-12-02T12:00:00Z']);
  });

  it('frequency counts days from the local day of the anchor', () => {
    // Created 2026-11-25 15:00 UTC = 23:00 local at UTC+08:00 -> anchor local day is 2026-11-25.
    const s = vbsSchedule({ startTime: '02:00', timeZone: 'UTC+08:00', weekFrequency: null, frequency: 3, anchorMs: at('2026-11-25T15:00:00Z') });
    // 02:00 UTC = 10:00 local; runs on local 11-25 (already past), 11-28, 12-01, 12-04.
    assert.deepEqual(nextSlots(s, at('2026-11-25T15:00:00Z'), 3).map(iso), ['2026-11-28T02:00:00Z', '2026-12-01T02:00:00Z', '2026-12-04T02:00:00Z']);
  });

  it('frequency 1 with several times a day', () => {
    const s = vbsSchedule({ startTime: '06:00,18:00', timeZone: null, weekFrequency: null, frequency: 1, anchorMs: at('2026-11-25T07:00:00Z') });
    assert.deepEqual(nextSlots(s, at('2026-11-25T07:00:00Z'), 3).map(iso), ['2026-11-25T18:00:00Z', '2026-11-26T06:00:00Z', '2026-11-26T18:00:00Z']);
  });

  it('a slot exactly at `from` counts', () => {
    const s = vbsSchedule({ startTime: '12:00', timeZone: null, weekFrequency: null, frequency: 1, anchorMs: 0 });
    assert.equal(iso(nextSlots(s, at('2026-11-25T12:00:00Z'), 1)[0]!), '2026-11-25T12:00:00Z');
  });

  it('crosses month and year boundaries', () => {
    const s = vbsSchedule({ startTime: '23:00', timeZone: 'UTC+01:00', weekFrequency: null, frequency: 2, anchorMs: at('2026-12-29T12:00:00Z') });
    // 23:00 UTC is 00:00 local. The anchor's local day is 12-29 (its 00:00 is already past), so the
    // next runs are local 12-31 00:00 and 01-02 00:00 = 12-30 23:00 and 01-01 23:00 UTC.
    assert.deepEqual(nextSlots(s, at('2026-12-29T12:00:00Z'), 2).map(iso), ['2026-12-30T23:00:00Z', '2027-01-01T23:00:00Z']);
  });

  it('lists the slots in a window', () => {
    const s = vbsSchedule({ startTime: '00:00,12:00', timeZone: null, weekFrequency: null, frequency: 1, anchorMs: 0 });
    assert.deepEqual(slotsBetween(s, at('2026-11-25T00:00:00Z'), at('2026-11-26T00:00:00Z')).map(iso), ['2026-11-25T00:00:00Z', '2026-11-25T12:00:00Z', '2026-11-26T00:00:00Z']);
  });

  it('refuses malformed start times, zones and day names', () => {
    assert.throws(() => parseStartTimes('12:30'), ScheduleError);
    assert.throws(() => parseStartTimes('24:00'), ScheduleError);
    assert.throws(() => vbsSchedule({ startTime: '12:00', timeZone: 'UTC+8', weekFrequency: ['MON'], frequency: null, anchorMs: 0 }), ScheduleError);
    assert.throws(() => vbsSchedule({ startTime: '12:00', timeZone: null, weekFrequency: ['XYZ' as 'MON'], frequency: null, anchorMs: 0 }), ScheduleError);
    assert.throws(() => vbsSchedule({ startTime: '12:00', timeZone: null, weekFrequency: null, frequency: null, anchorMs: 0 }), ScheduleError);
  });
});
