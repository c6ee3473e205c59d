/**
 * Fair use of the job runner (issue 11): one project never holds more than half of a process's
 * slots while another project's jobs wait, and a backup being created can be stopped, by its
 * project deleting it or by the cloud admin's os-force_delete: its job ends (FAIL, with the
 * reason), the backup row goes, and the slot takes the next job. os-reset_status for the cloud
 * admin; a member is refused both actions and nothing changes.
 *
 * The jobs are held by a store whose pack writes wait at a gate until the test opens it (or the
 * write is aborted), so what runs when is decided by the test, not by timing: a job that ends
 * while the gate is closed can only have ended through cancellation.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Job } from '../../src/domain/model.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { GiB, MiB, overwrite, randomBytesSeeded, sleep, TempDirs } from '../helpers/volumes.ts';
import { assertCinderError, createVolume } from '../helpers/api.ts';
import { GateStore } from '../helpers/gate-store.ts';

/** Polls until `fn` returns a value (not undefined); fails after a generous deadline. */
async function until<T>(what: string, fn: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 3000; i++) {
    const v = await fn();
    if (v !== undefined) return v;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('job runner fairness and cancelling backups', () => {
  const temp = new TempDirs('haven-fair-');
  let svc: TestService;
  let gate: GateStore;
  let admin: { token: string; projectId: string };
  let a: { token: string; projectId: string };
  let b: { token: string; projectId: string };

  before(async () => {
    svc = await startService(temp, { jobConcurrency: 2 }, { wrapStore: (s) => (gate = new GateStore(s)) });
    admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    a = await svc.tenant('fair-a');
    b = await svc.tenant('fair-b');
  });
  after(async () => {
    gate.release();
    await svc.close();
    temp.cleanup();
  });

  /** A volume of `who` with data at its start (so its backup writes at least one pack). */
  async function volumeWithData(who: { token: string; projectId: string }, sizeGb: number, seed: number): Promise<string> {
    const v = await createVolume(svc, who.token, who.projectId, { size: sizeGb });
    await overwrite(v.path, 0, randomBytesSeeded(MiB, seed));
    if (sizeGb > 1) await overwrite(v.path, sizeGb * GiB - 3 * MiB, randomBytesSeeded(2 * MiB, seed + 1));
    return v.id;
  }

  async function startBackup(who: { token: string; projectId: string }, volumeId: string): Promise<{ backupId: string; job: Job }> {
    const r = await svc.req({ method: 'POST', url: `/v3/${who.projectId}/backups`, token: who.token, payload: { backup: { volume_id: volumeId } } });
    assert.equal(r.statusCode, 202, r.body);
    const backupId = (r.json() as { backup: { id: string } }).backup.id;
    const job = (await svc.app.catalog.jobs.activeJobs(['bksCreateBackup'])).find((j) => 'backupId' in j.payload && j.payload.backupId === backupId);
    assert.ok(job, `no job for backup ${backupId}`);
    return { backupId, job };
  }

  const jobOf = async (id: string): Promise<Job> => (await svc.app.catalog.jobs.getJobById(id))!;
  const running = async (): Promise<Job[]> => (await svc.app.catalog.jobs.activeJobs(['bksCreateBackup', 'bksDeleteBackup', 'bksRestoreBackup'])).filter((j) => j.status === 'RUNNING');
  const ended = async (id: string): Promise<Job | undefined> => {
    const j = await jobOf(id);
    return j.status === 'SUCCESS' || j.status === 'FAIL' ? j : undefined;
  };

  it("a project's queued jobs leave half of the slots to another project's job", async () => {
    const aVols = [await volumeWithData(a, 1, 1), await volumeWithData(a, 1, 2), await volumeWithData(a, 1, 3)];
    const bVol = await volumeWithData(b, 1, 4);
    gate.hold();
    const aJobs = [];
    for (const v of aVols) aJobs.push(await startBackup(a, v));
    // A's first backup holds a slot, at the gate.
    await until('a backup of A at the gate', async () => (gate.waiting >= 1 ? true : undefined));
    const bJob = await startBackup(b, bVol);
    // Both slots taken: by one job of A and by B's job, although A's other two were queued first.
    const both = await until('two running jobs', async () => {
      const r = await running();
      return r.length === 2 ? r : undefined;
    });
    assert.deepEqual(both.map((j) => j.projectId).sort(), [a.projectId, b.projectId].sort(), 'B waited while A held both slots');
    assert.ok(both.some((j) => j.id === bJob.job.id));
    assert.equal((await Promise.all(aJobs.map((j) => jobOf(j.job.id)))).filter((j) => j.status === 'INIT').length, 2);
    gate.release();
    for (const j of [...aJobs, bJob]) assert.equal((await svc.waitJob(j.job.projectId === a.projectId ? a.token : b.token, j.job.projectId, j.job.id)).status, 'SUCCESS');
  });

  it('os-force_delete stops a running backup at once: FAIL with the reason, row gone, the slot takes the next job', async () => {
    const big = await volumeWithData(a, 2, 10); // 2 GiB, sparse with data at both ends
    const next = await volumeWithData(a, 1, 11);
    gate.hold();
    const victim = await startBackup(a, big);
    await until('the big backup at the gate', async () => ((await jobOf(victim.job.id)).status === 'RUNNING' && gate.waiting >= 1 ? true : undefined));
    const queued = await startBackup(a, next);
    assert.equal((await jobOf(queued.job.id)).status, 'INIT', "A's second backup waits: A holds its share of the slots");

    const r = await svc.req({ method: 'POST', url: `/v3/${admin.projectId}/backups/${victim.backupId}/action`, token: admin.token, payload: { 'os-force_delete': {} } });
    assert.equal(r.statusCode, 202, r.body);
    assert.equal(r.body, '');
    // The gate is still closed: the job can only end because it was stopped.
    const done = await until('the force-deleted job to end', () => ended(victim.job.id));
    assert.equal(done.status, 'FAIL');
    assert.match(String(done.failReason), /cancelled: force-deleted by the cloud admin/);
    // The freed slot takes A's queued backup.
    await until("A's next backup to start", async () => ((await jobOf(queued.job.id)).status === 'RUNNING' ? true : undefined));
    gate.release();
    assert.equal(await svc.waitBackup(a.token, a.projectId, victim.backupId), null, 'the force-deleted backup is gone');
    assert.equal(await svc.app.catalog.backups.getBackupById(victim.backupId), undefined);
    assert.equal(await svc.app.engine.findManifest(victim.backupId), null);
    assert.equal((await svc.waitJob(a.token, a.projectId, queued.job.id)).status, 'SUCCESS');
  });

  it('deleting a backup still being created (native DELETE, VBS DELETE) stops its job and removes it', async () => {
    for (const api of ['native', 'vbs'] as const) {
      const vol = await volumeWithData(b, 1, api === 'native' ? 20 : 21);
      gate.hold();
      const victim = await startBackup(b, vol);
      await until('the backup at the gate', async () => ((await jobOf(victim.job.id)).status === 'RUNNING' && gate.waiting >= 1 ? true : undefined));
      const url = api === 'native' ? `/v3/${b.projectId}/backups/${victim.backupId}` : `/v2/${b.projectId}/cloudbackups/${victim.backupId}`;
      const r = await svc.req({ method: 'DELETE', url, token: b.token });
      assert.ok(r.statusCode === (api === 'native' ? 202 : 200), `${api}: ${r.statusCode} ${r.body}`);
      const done = await until('the deleted backup\'s job to end', () => ended(victim.job.id));
      assert.equal(done.status, 'FAIL');
      assert.match(String(done.failReason), /cancelled: the backup was deleted while it was being created/);
      gate.release();
      if (api === 'vbs') assert.equal((await svc.waitJob(b.token, b.projectId, (r.json() as { job_id: string }).job_id)).status, 'SUCCESS');
      assert.equal(await svc.waitBackup(b.token, b.projectId, victim.backupId), null);
    }
  });

  it('a member gets 403 for os-force_delete and os-reset_status, and nothing changes', async () => {
    const vol = await volumeWithData(b, 1, 30);
    gate.hold();
    const victim = await startBackup(b, vol);
    await until('the backup at the gate', async () => ((await jobOf(victim.job.id)).status === 'RUNNING' && gate.waiting >= 1 ? true : undefined));
    for (const payload of [{ 'os-force_delete': {} }, { 'os-reset_status': { status: 'error' } }]) {
      const r = await svc.req({ method: 'POST', url: `/v3/${b.projectId}/backups/${victim.backupId}/action`, token: b.token, payload });
      assertCinderError(r, 403);
    }
    // The admin role on a project other than the admin project is no cloud admin either.
    const bAdmin = await svc.app.identity.createUser({ name: 'fair-b-admin', password: 'tenant-password', defaultProjectId: b.projectId });
    await svc.app.identity.grantRole(b.projectId, bAdmin.id, 'admin');
    const projectAdmin = await svc.login('fair-b-admin', 'tenant-password', 'fair-b');
    const r = await svc.req({ method: 'POST', url: `/v3/${b.projectId}/backups/${victim.backupId}/action`, token: projectAdmin.token, payload: { 'os-force_delete': {} } });
    assertCinderError(r, 403);
    assert.equal((await jobOf(victim.job.id)).status, 'RUNNING');
    assert.equal(await svc.app.catalog.jobs.cancelReason(victim.job.id), null);
    assert.equal((await svc.app.catalog.backups.getBackupById(victim.backupId))!.status, 'creating');
    gate.release();
    assert.equal((await svc.waitJob(b.token, b.projectId, victim.job.id)).status, 'SUCCESS');
    assert.equal((await svc.waitBackup(b.token, b.projectId, victim.backupId))!.status, 'available');
  });

  it('os-reset_status: the cloud admin sets error and available; refused without a manifest or while a job runs', async () => {
    const vol = await volumeWithData(b, 1, 40);
    const done = await startBackup(b, vol);
    assert.equal((await svc.waitJob(b.token, b.projectId, done.job.id)).status, 'SUCCESS');
    const action = (id: string, payload: Record<string, unknown>) => svc.req({ method: 'POST', url: `/v3/${admin.projectId}/backups/${id}/action`, token: admin.token, payload });
    const status = async (id: string) => (await svc.app.catalog.backups.getBackupById(id))!.status;

    let r = await action(done.backupId, { 'os-reset_status': { status: 'error' } });
    assert.equal(r.statusCode, 202, r.body);
    assert.equal(await status(done.backupId), 'error');
    r = await action(done.backupId, { 'os-reset_status': { status: 'available' } });
    assert.equal(r.statusCode, 202, r.body);
    assert.equal(await status(done.backupId), 'available');
    assertCinderError(await action(done.backupId, { 'os-reset_status': { status: 'creating' } }), 400);
    assertCinderError(await action(done.backupId, { 'os-frobnicate': {} }), 400);
    assertCinderError(await action('00000000-0000-4000-8000-000000000000', { 'os-force_delete': {} }), 404);
    assert.equal(await status(done.backupId), 'available');
    // Its manifest lost (deleted behind Haven's back): error is allowed, available is not.
    await svc.app.engine.delete(done.backupId);
    assert.equal((await action(done.backupId, { 'os-reset_status': { status: 'error' } })).statusCode, 202);
    assert.match(assertCinderError(await action(done.backupId, { 'os-reset_status': { status: 'available' } }), 400), /no manifest/);
    assert.equal(await status(done.backupId), 'error');

    gate.hold();
    const busy = await startBackup(b, await volumeWithData(b, 1, 41));
    await until('the backup at the gate', async () => ((await jobOf(busy.job.id)).status === 'RUNNING' && gate.waiting >= 1 ? true : undefined));
    assertCinderError(await action(busy.backupId, { 'os-reset_status': { status: 'error' } }), 400);
    assertCinderError(await action(busy.backupId, { 'os-reset_status': { status: 'available' } }), 400);
    assert.equal(await status(busy.backupId), 'creating');
    gate.release();
    assert.equal((await svc.waitJob(b.token, b.projectId, busy.job.id)).status, 'SUCCESS');
  });
});
