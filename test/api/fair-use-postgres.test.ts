/**
 * Fair use across processes sharing a PostgreSQL catalog (issue 11): volume quotas hold when two
 * processes create volumes at once (the per-project advisory lock), and a backup running in one
 * process is stopped by a force-delete made through another (the owner sees the cancel request
 * on the job row at its next heartbeat). Skipped without PostgreSQL, except under CI=true.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { composeApp, type App } from '../../src/app/compose.ts';
import { loadConfig } from '../../src/config/config.ts';
import { ErrorCode } from '../../src/domain/errors.ts';
import type { Job } from '../../src/domain/model.ts';
import { freshDatabase } from '../helpers/postgres.ts';
import { ADMIN_PASSWORD } from '../helpers/service.ts';
import { GateStore } from '../helpers/gate-store.ts';
import { MiB, overwrite, randomBytesSeeded, sleep, TempDirs } from '../helpers/volumes.ts';

describe('fair use on a shared PostgreSQL catalog', async () => {
  const temp = new TempDirs('haven-fair-pg-');
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : false;
  const apps: App[] = [];
  after(async () => {
    for (const a of apps) await a.close();
    if (!('skip' in db)) await db.drop();
    temp.cleanup();
  });
  const start = async (name: string, runJobs: boolean, wrap?: (s: GateStore) => void): Promise<App> => {
    const config = loadConfig({}, { dataDir: temp.make(name), adminPassword: ADMIN_PASSWORD, catalogUrl: 'skip' in db ? '' : db.url, quotaVolumes: 3, jobConcurrency: 2 });
    const app = await composeApp(config, { runJobs, runScheduler: false, threads: 1, wrapStore: (s) => { const g = new GateStore(s); wrap?.(g); return g; } });
    apps.push(app);
    return app;
  };

  it('two processes creating volumes at once never pass the volumes quota', { skip }, async () => {
    const [a, b] = [await start('q0', false), await start('q1', false)];
    const project = await a.identity.createProject({ name: 'vq', description: '', enabled: true });
    const made = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => [a, b][i % 2]!.volumes.createVolume(project.id, { sizeGb: 1, name: `v${i}` })));
    const codes = made.map((r) => (r.status === 'fulfilled' ? 'ok' : String((r.reason as { code?: string }).code)));
    assert.deepEqual(codes.filter((c) => c !== 'ok'), Array(5).fill(ErrorCode.QuotaVolumesExceeded));
    assert.equal((await a.catalog.volumes.usage(project.id)).volumes, 3);
  });

  it('a force-delete through another process stops the running backup at its owner\'s next heartbeat', { skip }, async () => {
    let gate: GateStore | undefined;
    const owner = await start('owner', true, (g) => (gate = g));
    const other = await start('other', false);
    const project = await owner.identity.createProject({ name: 'cancel', description: '', enabled: true });
    const vol = await owner.volumes.createVolume(project.id, { sizeGb: 1, name: 'v' });
    await overwrite(vol.path, 0, randomBytesSeeded(4 * MiB, 7));
    gate!.hold();
    const { backup, job } = await owner.backups.createBackup(project.id, { volumeId: vol.id, origin: 'native' });
    const jobNow = async (): Promise<Job> => (await owner.catalog.jobs.getJobById(job.id))!;
    for (let i = 0; (await jobNow()).status !== 'RUNNING' || gate!.waiting < 1; i++) {
      assert.ok(i < 3000, 'the backup did not reach the gate');
      await sleep(10);
    }
    await other.backups.forceDeleteBackup(backup.id);
    // The gate stays held: the job can only end by being cancelled.
    for (let i = 0; !['SUCCESS', 'FAIL'].includes((await jobNow()).status); i++) {
      assert.ok(i < 3000, 'the force-deleted job did not end');
      await sleep(10);
    }
    const done = await jobNow();
    assert.equal(done.status, 'FAIL');
    assert.match(String(done.failReason), /cancelled: force-deleted by the cloud admin/);
    for (let i = 0; await owner.catalog.backups.getBackupById(backup.id); i++) {
      assert.ok(i < 3000, 'the force-deleted backup was not removed');
      await sleep(10);
    }
    gate!.release();
  });
});
