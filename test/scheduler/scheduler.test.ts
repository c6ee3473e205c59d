/**
 * The policy scheduler on a fake clock (no test sleeps for a slot): slots fire once at their time,
 * OFF policies never fire, switching ON does not fire missed slots, missed slots within the grace
 * period fire once at start-up and older ones are recorded as SKIP, two schedulers on one catalog
 * fire each slot once, and retention prunes exactly what the policy says.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { composeApp, type App } from '../../src/app/compose.ts';
import { loadConfig } from '../../src/config/config.ts';
import type { Clock } from '../../src/domain/clock.ts';
import type { PolicyInput } from '../../src/services/policy-service.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const at = (s: string) => Date.parse(s);
class FakeClock implements Clock {
  t: number;
  constructor(iso: string) {
    this.t = at(iso);
  }
  now(): number {
    return this.t;
  }
  set(iso: string): void {
    this.t = at(iso);
  }
}

describe('policy scheduler', () => {
  const temp = new TempDirs('haven-sched-');
  const apps: App[] = [];
  after(async () => {
    for (const a of apps) await a.close();
    temp.cleanup();
  });

  async function start(clock: FakeClock, dataDir = temp.make('data'), runJobs = false, graceSeconds = 3600) {
    const app = await composeApp(loadConfig({}, { dataDir, adminPassword: 'pw', scheduleGraceSeconds: graceSeconds }), { clock, runJobs, runScheduler: false, threads: 1 });
    apps.push(app);
    return { app, dataDir };
  }

  async function policyWithVolumes(app: App, input: PolicyInput & { name: string; startTime: string; status: 'ON' | 'OFF' }, volumes = 1) {
    const project = await app.identity.findProject('admin');
    const p = await app.policies.createPolicy(project.id, input, []);
    const ids: string[] = [];
    for (let i = 0; i < volumes; i++) ids.push((await app.volumes.createVolume(project.id, { sizeGb: 1, name: `v${i}` })).id);
    const r = await app.policies.associate(project.id, p.id, ids.map((resourceId) => ({ resourceId, resourceType: 'volume' })));
    assert.equal(r.success.length, volumes);
    return { projectId: project.id, policyId: p.id, volumeIds: ids };
  }

  const tasks = async (app: App, projectId: string, policyId: string) => (await app.policies.listTasks(projectId, policyId, { sortDir: 'asc', limit: 1000, offset: 0 })).tasks;

  it('fires each slot once, at its time, in the policy\'s time zone', async () => {
    const clock = new FakeClock('2026-11-29T10:00:00Z'); // a Sunday
    const { app } = await start(clock);
    // Local Monday 00:00 at UTC+02:00 = Sunday 22:00 UTC.
    const { projectId, policyId } = await policyWithVolumes(app, { name: 'mon', startTime: '22:00', timeZone: 'UTC+02:00', weekFrequency: ['MON'], retentionNum: 5, status: 'ON' }, 2);
    assert.deepEqual(await app.scheduler.tick(), { fired: 0, skipped: 0, initialized: 1 });
    clock.set('2026-11-29T21:59:59Z');
    assert.equal((await app.scheduler.tick()).fired, 0);
    clock.set('2026-11-29T22:00:10Z');
    assert.equal((await app.scheduler.tick()).fired, 1);
    assert.equal((await app.scheduler.tick()).fired, 0);
    const t = await tasks(app, projectId, policyId);
    assert.equal(t.length, 2); // one task per volume
    assert.ok(t.every((x) => x.slotAt === at('2026-11-29T22:00:00Z') && /^autobk_[0-9a-f]{4}$/.test(x.backupName) && x.status === 'WAITING'));
    // Next week, not before.
    clock.set('2026-12-06T21:00:00Z');
    assert.equal((await app.scheduler.tick()).fired, 0);
    clock.set('2026-12-06T22:00:00Z');
    const r = await app.scheduler.tick();
    assert.equal(r.fired, 1);
    // The previous automatic backups are still being created (no job runner here): skipped, not doubled.
    const week2 = (await tasks(app, projectId, policyId)).filter((x) => x.slotAt === at('2026-12-06T22:00:00Z'));
    assert.deepEqual(week2.map((x) => x.status), ['SKIP', 'SKIP']);
  });

  it('an OFF policy never fires; switching ON does not fire the slots missed while OFF', async () => {
    const clock = new FakeClock('2026-11-25T00:30:00Z');
    const { app } = await start(clock);
    const { projectId, policyId } = await policyWithVolumes(app, { name: 'daily', startTime: '01:00', frequency: 1, retentionNum: 3, status: 'OFF' });
    for (const t of ['2026-11-25T01:00:00Z', '2026-11-25T12:00:00Z', '2026-11-26T01:00:30Z']) {
      clock.set(t);
      assert.deepEqual(await app.scheduler.tick(), { fired: 0, skipped: 0, initialized: 0 });
    }
    // Switch ON at 01:30, 30 minutes after a slot: that slot is not fired.
    clock.set('2026-11-26T01:30:00Z');
    await app.policies.updatePolicy(projectId, policyId, { status: 'ON' });
    assert.deepEqual(await app.scheduler.tick(), { fired: 0, skipped: 0, initialized: 1 });
    assert.equal((await tasks(app, projectId, policyId)).length, 0);
    clock.set('2026-11-27T01:00:05Z');
    assert.equal((await app.scheduler.tick()).fired, 1);
  });

  it('after a restart, a missed slot within the grace period fires once; older ones are skipped', async () => {
    const clock = new FakeClock('2026-11-25T00:00:00Z');
    const first = await start(clock);
    const { projectId, policyId } = await policyWithVolumes(first.app, { name: 'hourly', startTime: '00:00,06:00,12:00,18:00', frequency: 1, retentionNum: 3, status: 'ON' });
    await first.app.scheduler.tick(); // fires 00:00 (the slot at the anchor)
    await first.app.close();
    apps.splice(apps.indexOf(first.app), 1);
    // Down from 00:00 to 18:40: slots 06:00 and 12:00 are older than an hour, 18:00 is 40 min old.
    clock.set('2026-11-25T18:40:00Z');
    const { app } = await start(clock, first.dataDir);
    const r = await app.scheduler.tick();
    assert.deepEqual({ fired: r.fired, skipped: r.skipped }, { fired: 1, skipped: 2 });
    const t = await tasks(app, projectId, policyId);
    const bySlot = new Map(t.map((x) => [new Date(x.slotAt!).toISOString(), x]));
    assert.match(String(bySlot.get('2026-11-25T06:00:00.000Z')?.failReason), /missed/);
    assert.match(String(bySlot.get('2026-11-25T12:00:00.000Z')?.failReason), /missed/);
    // 18:00 ran: it tried to back up the volume, whose 00:00 backup is still queued (no job runner
    // here), so that volume was skipped rather than backed up twice.
    const late = bySlot.get('2026-11-25T18:00:00.000Z');
    assert.ok(late);
    assert.match(String(late.failReason), /still being created/);
    assert.equal((await app.scheduler.tick()).fired, 0);
  });

  it('a slot missed by more than the grace period does not fire at all', async () => {
    const clock = new FakeClock('2026-11-25T00:30:00Z');
    const first = await start(clock);
    const { projectId, policyId } = await policyWithVolumes(first.app, { name: 'daily', startTime: '01:00', frequency: 1, retentionNum: 3, status: 'ON' });
    await first.app.scheduler.tick();
    await first.app.close();
    apps.splice(apps.indexOf(first.app), 1);
    clock.set('2026-11-25T03:00:00Z'); // 2 h after the slot
    const { app } = await start(clock, first.dataDir);
    assert.deepEqual(await app.scheduler.tick(), { fired: 0, skipped: 1, initialized: 0 });
    assert.deepEqual((await tasks(app, projectId, policyId)).map((x) => x.status), ['SKIP']);
  });

  it('two schedulers sharing a catalog fire every slot exactly once', async () => {
    const clock = new FakeClock('2026-11-25T00:30:00Z');
    const a = await start(clock);
    const b = await start(clock, a.dataDir);
    const { projectId, policyId } = await policyWithVolumes(a.app, { name: 'six', startTime: '00:00,06:00,12:00,18:00', frequency: 1, retentionNum: 3, status: 'ON' });
    let fired = 0;
    for (let h = 1; h <= 48; h++) {
      clock.t = at('2026-11-25T00:30:00Z') + h * 3600_000;
      const [ra, rb] = await Promise.all([a.app.scheduler.tick(), b.app.scheduler.tick()]);
      fired += ra.fired + rb.fired;
    }
    assert.equal(fired, 8); // 4 slots a day for two days
    const slots = (await tasks(a.app, projectId, policyId)).map((x) => x.slotAt);
    assert.equal(new Set(slots).size, slots.length);
    assert.equal(slots.length, 8);
  });

  it('retention keeps the newest N automatic backups and never touches manual ones', async () => {
    const clock = new FakeClock('2026-11-25T00:30:00Z');
    const { app } = await start(clock, temp.make('data'), true);
    const { projectId, policyId, volumeIds } = await policyWithVolumes(app, { name: 'keep2', startTime: '01:00', frequency: 1, retentionNum: 2, status: 'ON' });
    const volume = (await app.catalog.volumes.getVolumeById(volumeIds[0]!))!;
    await overwrite(volume.path, 0, randomBytesSeeded(1 * MiB, 5));
    const manual = await app.backups.createBackup(projectId, { volumeId: volume.id, name: 'manual', origin: 'vbs' });
    await app.runner.idle();
    for (let day = 0; day < 4; day++) {
      clock.t = at('2026-11-25T01:00:05Z') + day * 86_400_000;
      await overwrite(volume.path, (day + 2) * MiB, randomBytesSeeded(64 * 1024, 10 + day));
      assert.equal((await app.scheduler.tick()).fired, 1);
      await app.runner.idle(); // the backup, then the retention deletes it queued
      await app.runner.idle();
    }
    const left = await app.catalog.backups.listBackups(projectId, { volumeId: volume.id }, { sortKey: 'created_at', sortDir: 'asc', limit: 100, offset: 0 });
    const auto = left.filter((x) => x.origin === 'policy');
    assert.equal(auto.length, 2, JSON.stringify(left.map((x) => [x.name, x.status])));
    assert.deepEqual(auto.map((x) => new Date(x.createdAt).toISOString()), ['2026-11-27T01:00:05.000Z', '2026-11-28T01:00:05.000Z']);
    assert.ok(left.some((x) => x.id === manual.backup.id && x.status === 'available'));
    assert.equal((await tasks(app, projectId, policyId)).filter((x) => x.status === 'EXECUTE_SUCCESS').length, 4);
  });
});
