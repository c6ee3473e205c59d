import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { selectBackupsToDelete, type RetentionCandidate, type RetentionRule } from './retention.ts';

const at = (s: string) => Date.parse(s);
const b = (id: string, iso: string, status: RetentionCandidate['status'] = 'available'): RetentionCandidate => ({ id, createdAt: at(iso), status });
const rule = (r: Partial<RetentionRule>): RetentionRule => ({ keepCount: null, keepDays: null, keepFirstOfMonth: false, offsetMinutes: 0, ...r });
const daily = (n: number, lastIso: string) => Array.from({ length: n }, (_, i) => b(`d${i}`, new Date(at(lastIso) - (n - 1 - i) * 86_400_000).toISOString()));

describe('retention', () => {
  it('keeps the newest N by count', () => {
    const backups = daily(5, '2026-11-25T02:00:00Z'); // d0 (11-21) .. d4 (11-25)
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 3 }), at('2026-11-25T03:00:00Z')).sort(), ['d0', 'd1']);
  });

  it('deletes nothing while there are at most N', () => {
    assert.deepEqual(selectBackupsToDelete(daily(3, '2026-11-25T02:00:00Z'), rule({ keepCount: 3 }), at('2026-11-25T03:00:00Z')), []);
  });

  it('keeps backups younger than D days', () => {
    // now 11-25 03:00; 2 days = back to 11-23 03:00 exclusive: d2 (11-23 02:00) is 49 h old -> deleted.
    const backups = daily(5, '2026-11-25T02:00:00Z');
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepDays: 2 }), at('2026-11-25T03:00:00Z')).sort(), ['d0', 'd1', 'd2']);
  });

  it('a backup exactly D days old is deleted (younger than D days are kept)', () => {
    const backups = [b('old', '2026-11-23T03:00:00Z'), b('new', '2026-11-25T03:00:00Z')];
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepDays: 2 }), at('2026-11-25T03:00:00Z')), ['old']);
  });

  it('count wins over days when both are given', () => {
    const backups = daily(5, '2026-11-25T02:00:00Z');
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 4, keepDays: 2 }), at('2026-11-25T03:00:00Z')), ['d0']);
  });

  it('keeps the first backup of the current month as well', () => {
    // Daily backups 11-28 .. 12-03 02:00 UTC; now 12-03 03:00; keep 2 -> 12-02, 12-03, plus 12-01 (first of December).
    const backups = daily(6, '2026-12-03T02:00:00Z');
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 2, keepFirstOfMonth: true }), at('2026-12-03T03:00:00Z')).sort(), ['d0', 'd1', 'd2']);
  });

  it('the month is the policy\'s local month', () => {
    // 11-30 23:00 UTC is already 12-01 07:00 at UTC+08:00: the first backup of local December.
    const backups = [b('nov30', '2026-11-30T23:00:00Z'), b('dec1', '2026-12-01T23:00:00Z'), b('dec2', '2026-12-02T23:00:00Z')];
    const now = at('2026-12-02T23:30:00Z');
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 1, keepFirstOfMonth: true, offsetMinutes: 480 }), now), ['dec1']);
    // In UTC, 11-30 belongs to November and dec1 is December's first.
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 1, keepFirstOfMonth: true, offsetMinutes: 0 }), now), ['nov30']);
    // At UTC-05:00, 12-01 23:00 UTC is 12-01 18:00 local, 11-30 23:00 is 11-30 18:00: dec1 first of December.
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 1, keepFirstOfMonth: true, offsetMinutes: -300 }), now), ['nov30']);
  });

  it('the first of last month is not protected once the month has ended', () => {
    const backups = [b('nov1', '2026-11-01T02:00:00Z'), b('nov2', '2026-11-02T02:00:00Z'), b('dec1', '2026-12-01T02:00:00Z')];
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 1, keepFirstOfMonth: true }), at('2026-12-01T03:00:00Z')).sort(), ['nov1', 'nov2']);
  });

  it('with no backup this month yet, the first-of-month rule protects nothing extra', () => {
    const backups = daily(3, '2026-11-30T02:00:00Z');
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 1, keepFirstOfMonth: true }), at('2026-12-01T00:30:00Z')).sort(), ['d0', 'd1']);
  });

  it('never prunes backups being restored from, created, deleted or failed', () => {
    const backups = [b('r', '2026-11-20T02:00:00Z', 'restoring'), b('e', '2026-11-21T02:00:00Z', 'error'), b('c', '2026-11-22T02:00:00Z', 'creating'), b('x', '2026-11-22T03:00:00Z', 'deleting'), ...daily(2, '2026-11-25T02:00:00Z')];
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 1 }), at('2026-11-25T03:00:00Z')), ['d0']);
  });

  it('a backup being restored from does not count as kept: the newest N available are kept', () => {
    const backups = [...daily(3, '2026-11-25T02:00:00Z'), b('r', '2026-11-25T02:30:00Z', 'restoring')];
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 2 }), at('2026-11-25T03:00:00Z')), ['d0']);
  });

  it('without any rule nothing is deleted', () => {
    assert.deepEqual(selectBackupsToDelete(daily(10, '2026-11-25T02:00:00Z'), rule({}), at('2026-11-25T03:00:00Z')), []);
  });

  it('equal creation times are ordered by id so the result is stable', () => {
    const backups = [b('a', '2026-11-25T02:00:00Z'), b('b', '2026-11-25T02:00:00Z'), b('c', '2026-11-25T02:00:00Z')];
    assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 2 }), at('2026-11-25T03:00:00Z')), ['a']);
  });

  describe('CSBS rules', () => {
    it('permanent keeps everything whatever the other rules say', () => {
      assert.deepEqual(selectBackupsToDelete(daily(10, '2026-11-25T02:00:00Z'), rule({ keepCount: 1, keepDays: 1, permanent: true, combine: 'both' }), at('2026-11-25T03:00:00Z')), []);
    });

    it('max_backups and retention_duration_days both apply', () => {
      // Newest 4 are d1..d4; younger than 2 days are d3, d4 (d2 is 49 h old) -> keep d3, d4.
      const backups = daily(5, '2026-11-25T02:00:00Z');
      assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 4, keepDays: 2, combine: 'both' }), at('2026-11-25T03:00:00Z')).sort(), ['d0', 'd1', 'd2']);
    });

    it('long-term rules keep the newest of each recent day, week, month or year on top of max_backups', () => {
      // Two backups a day (02:00 and 14:00) for 10 days up to 11-25; keep 2 plus the newest of the last 5 days.
      const backups = Array.from({ length: 20 }, (_, i) => b(`b${i}`, new Date(at('2026-11-16T02:00:00Z') + i * 12 * 3600_000).toISOString()));
      const del = selectBackupsToDelete(backups, rule({ keepCount: 2, combine: 'both', longTerm: { days: 5 } }), at('2026-11-25T20:00:00Z'));
      const kept = backups.map((x) => x.id).filter((id) => !del.includes(id));
      // b19 (11-25 14:00), b18 (11-25 02:00) by count; the 14:00 ones of 11-24 .. 11-21 by days (11-25's newest is b19).
      assert.deepEqual(kept, ['b11', 'b13', 'b15', 'b17', 'b18', 'b19']);
    });

    it('weeks start on Monday in the policy\'s time zone', () => {
      // Sunday 11-29 23:00 UTC is Monday 11-30 07:00 at UTC+08:00: a new week there, not in UTC.
      const backups = [b('sat', '2026-11-28T10:00:00Z'), b('sun', '2026-11-29T23:00:00Z'), b('tue', '2026-12-01T10:00:00Z')];
      const now = at('2026-12-01T12:00:00Z');
      assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 0, combine: 'both', longTerm: { weeks: 2 }, offsetMinutes: 480 }), now), ['sun']);
      assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 0, combine: 'both', longTerm: { weeks: 2 }, offsetMinutes: 0 }), now), ['sat']);
    });

    it('months and years', () => {
      const backups = [b('2025a', '2025-06-01T00:00:00Z'), b('2025b', '2025-12-31T00:00:00Z'), b('jan', '2026-01-15T00:00:00Z'), b('oct', '2026-10-15T00:00:00Z'), b('nov1', '2026-11-01T00:00:00Z'), b('nov2', '2026-11-20T00:00:00Z')];
      const now = at('2026-11-25T00:00:00Z');
      assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 0, combine: 'both', longTerm: { months: 2 } }), now).sort(), ['2025a', '2025b', 'jan', 'nov1']);
      assert.deepEqual(selectBackupsToDelete(backups, rule({ keepCount: 0, combine: 'both', longTerm: { years: 2 } }), now).sort(), ['2025a', 'jan', 'nov1', 'oct']);
    });
  });
});
