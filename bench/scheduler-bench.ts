/**
 * `npm run bench:scheduler`: the policy scheduler with 1,000 and 10,000 policies of mixed schedules
 * (week days or every N days, 1-4 start times, time zones from UTC-11:00 to UTC+14:00).
 *
 * Measures, in one run: computing every policy's next slot (pure), the first tick (which computes
 * and stores every next slot), and one tick with 0, 10, 100 and 1,000 policies due. A tick must cost
 * what the due slots cost, not what the number of policies costs: the ratio column compares each
 * tick with 10,000 policies against the same tick with 1,000.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { composeApp } from '../src/app/compose.ts';
import { loadConfig } from '../src/config/config.ts';
import { WEEK_DAYS, type WeekDay } from '../src/domain/policy.ts';
import { nextSlot, vbsSchedule } from '../src/scheduler/schedule-spec.ts';

let seed = 42;
const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)]!;

function randomPolicy(i: number) {
  const hours = [...new Set(Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => Math.floor(rnd() * 24)))].sort((a, b) => a - b);
  const tzMin = Math.floor(rnd() * (25 * 4)) * 15 - 11 * 60;
  const sign = tzMin < 0 ? '-' : '+';
  const tz = `UTC${sign}${String(Math.floor(Math.abs(tzMin) / 60)).padStart(2, '0')}:${String(Math.abs(tzMin) % 60).padStart(2, '0')}`;
  const weekly = rnd() < 0.5;
  return {
    name: `p${i}`,
    startTime: hours.map((h) => `${String(h).padStart(2, '0')}:00`).join(','),
    timeZone: rnd() < 0.8 ? tz : undefined,
    weekFrequency: weekly ? ([...new Set(Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => pick(WEEK_DAYS)))] as WeekDay[]) : undefined,
    frequency: weekly ? undefined : 1 + Math.floor(rnd() * 14),
    retentionNum: 7,
    status: 'ON' as const,
  };
}

const NOW = Date.parse('2026-11-25T12:00:00Z');

async function measure(total: number) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'haven-sched-bench-'));
  let now = NOW - 86_400_000;
  const clock = { now: () => now };
  const app = await composeApp(loadConfig({}, { dataDir, adminPassword: 'pw', maxPoliciesPerProject: 1_000_000 }), { clock, runJobs: false, runScheduler: false, threads: 1 });
  try {
    const project = await app.identity.findProject('admin');
    const inputs = Array.from({ length: total }, (_, i) => randomPolicy(i));
    for (const p of inputs) await app.policies.createPolicy(project.id, p, []);
    // Pure computation of every next slot.
    let t = performance.now();
    for (const p of inputs) nextSlot(vbsSchedule({ startTime: p.startTime, timeZone: p.timeZone ?? null, weekFrequency: p.weekFrequency ?? null, frequency: p.frequency ?? null, anchorMs: now }), now);
    const computeMs = performance.now() - t;
    // First tick: computes and stores every policy's next slot (a day before NOW: nothing is due yet).
    t = performance.now();
    const init = await app.scheduler.tick(); // 500 policies are read at a time; all in one tick
    const initMs = performance.now() - t;
    if (init.initialized !== total) throw new Error(`initialized ${init.initialized} of ${total}`);
    now = NOW;
    const ticks: Record<number, number> = {};
    for (const due of [0, 10, 100, 1000]) {
      // Make exactly `due` policies due now, all others due tomorrow.
      await app.catalog.db.run('UPDATE policies SET next_run_at = ?', [NOW + 86_400_000]);
      // The due ones get a real slot at NOW (daily at 12:00 UTC), so each tick really fires them.
      if (due) {
        await app.catalog.db.run(
          `UPDATE policies SET start_time = '12:00', time_zone = NULL, frequency = 1, week_frequency = NULL, schedule_anchor = ?, next_run_at = ? WHERE id IN (SELECT id FROM policies ORDER BY id LIMIT ${due})`,
          [NOW - 86_400_000, NOW],
        );
      }
      await app.catalog.db.exec('PRAGMA wal_checkpoint(TRUNCATE)'); // the set-up's writes are not the tick's cost
      t = performance.now();
      const r = await app.scheduler.tick();
      ticks[due] = performance.now() - t;
      if (r.fired !== due) throw new Error(`fired ${r.fired}, expected ${due}`);
    }
    return { computeMs, initMs, ticks };
  } finally {
    await app.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const small = await measure(1000);
const large = await measure(10_000);
const f = (ms: number) => `${ms.toFixed(1)} ms`;
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;
console.log('\nPolicy scheduler (SQLite catalog, fake clock; policies without volumes, so a fired slot costs only the scheduler)\n');
console.log('| measurement | 1,000 policies | 10,000 policies | 10k / 1k |');
console.log('| --- | --- | --- | --- |');
console.log(`| compute every next slot (pure) | ${f(small.computeMs)} | ${f(large.computeMs)} | ${ratio(large.computeMs, small.computeMs)} |`);
console.log(`| first tick: compute and store every next slot | ${f(small.initMs)} | ${f(large.initMs)} | ${ratio(large.initMs, small.initMs)} |`);
for (const due of [0, 10, 100, 1000]) console.log(`| tick with ${due} due | ${f(small.ticks[due]!)} | ${f(large.ticks[due]!)} | ${ratio(large.ticks[due]!, small.ticks[due]!)} |`);
console.log(`\nper due slot (10,000 policies, 1,000 due): ${((large.ticks[1000]! / 1000) * 1000).toFixed(0)} µs; a tick with nothing due reads no policy rows.`);
