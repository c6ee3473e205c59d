/**
 * No job stays RUNNING forever: jobs found running after a restart (their process died) are
 * finished, through their handler, with a clear reason, and the backup and volume they held are put
 * back into a defined state. A backup the engine completed before the crash is recovered as done;
 * queued jobs simply run after the restart.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';

describe('restart recovery of jobs', () => {
  const temp = new TempDirs('haven-restart-');
  after(() => temp.cleanup());

  async function setup() {
    const svc = await startService(temp, {}, { runJobs: false });
    const { token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const vol = await svc.req({ method: 'POST', url: `/v2/${pid}/volumes`, token, payload: { volume: { size: 1, name: 'disk' } } });
    const volumeId = (vol.json() as { volume: { id: string } }).volume.id;
    const file = (await svc.app.catalog.volumes.getVolumeById(volumeId))!.path;
    await overwrite(file, 5 * MiB, randomBytesSeeded(2 * MiB, 11));
    return { svc, token, pid, volumeId, file };
  }

  const createBackup = async (svc: Awaited<ReturnType<typeof setup>>['svc'], token: string, pid: string, volumeId: string) => {
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: volumeId, name: 'b' } } });
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { job_id: string }).job_id;
  };

  it('fails a job whose process died, marks its backup error, and the volume can be backed up again', async () => {
    const { svc, token, pid, volumeId } = await setup();
    const jobId = await createBackup(svc, token, pid, volumeId);
    // A process claimed the job and died before finishing.
    assert.ok(await svc.app.catalog.jobs.claimJob(jobId, 'dead-process', Date.now()));
    await svc.restart({}, { runJobs: true });
    const job = await svc.waitJob(token, pid, jobId);
    assert.equal(job.status, 'FAIL');
    assert.match(String(job.fail_reason), /interrupted/);
    assert.equal(job.error_code, 'VolumeBackup.0064');
    const backupId = (job.entities as { backup_id: string }).backup_id;
    const b = await svc.app.catalog.backups.getBackupById(backupId);
    assert.equal(b!.status, 'error');
    assert.match(String(b!.failReason), /interrupted/);
    const again = await createBackup(svc, token, pid, volumeId);
    assert.equal((await svc.waitJob(token, pid, again)).status, 'SUCCESS');
    await svc.close();
  });

  it('completes a backup whose manifest was written before the crash', async () => {
    const { svc, token, pid, volumeId, file } = await setup();
    const jobId = await createBackup(svc, token, pid, volumeId);
    const job = (await svc.app.catalog.jobs.getJobById(jobId))!;
    assert.equal(job.type, 'bksCreateBackup');
    const backupId = job.type === 'bksCreateBackup' ? job.payload.backupId : '';
    assert.ok(await svc.app.catalog.jobs.claimJob(jobId, 'dead-process', Date.now()));
    // The engine finished (manifest written), then the process died before updating the catalog.
    await svc.app.engine.backup(file, { backupId, volume: { id: volumeId, name: 'disk' }, previousId: null, full: true, signal: new AbortController().signal, onProgress: () => {} });
    const sha = await sha256File(file);
    await svc.restart({}, { runJobs: true });
    const done = await svc.waitJob(token, pid, jobId);
    assert.equal(done.status, 'SUCCESS', JSON.stringify(done));
    const b = await svc.app.catalog.backups.getBackupById(backupId);
    assert.equal(b!.status, 'available');
    // And it restores.
    const t = await svc.req({ method: 'POST', url: `/v2/${pid}/volumes`, token, payload: { volume: { size: 1, name: 't' } } });
    const target = (t.json() as { volume: { id: string } }).volume.id;
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: target } } });
    assert.equal((await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id)).status, 'SUCCESS');
    assert.equal(await sha256File((await svc.app.catalog.volumes.getVolumeById(target))!.path), sha);
    await svc.close();
  });

  it('an interrupted restore leaves the backup available and the volume error_restoring', async () => {
    const { svc, token, pid, volumeId } = await setup();
    await svc.restart({}, { runJobs: true });
    const jobId = await createBackup(svc, token, pid, volumeId);
    const created = await svc.waitJob(token, pid, jobId);
    const backupId = (created.entities as { backup_id: string }).backup_id;
    await svc.restart({}, { runJobs: false });
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: volumeId } } });
    const restoreJob = (r.json() as { job_id: string }).job_id;
    assert.ok(await svc.app.catalog.jobs.claimJob(restoreJob, 'dead-process', Date.now()));
    await svc.restart({}, { runJobs: true });
    const j = await svc.waitJob(token, pid, restoreJob);
    assert.equal(j.status, 'FAIL');
    assert.equal((await svc.app.catalog.backups.getBackupById(backupId))!.status, 'available');
    assert.equal((await svc.app.catalog.volumes.getVolumeById(volumeId))!.status, 'error_restoring');
    await svc.close();
  });

  it('runs jobs that were queued when the process stopped', async () => {
    const { svc, token, pid, volumeId } = await setup();
    const jobId = await createBackup(svc, token, pid, volumeId);
    await svc.restart({}, { runJobs: true });
    assert.equal((await svc.waitJob(token, pid, jobId)).status, 'SUCCESS');
    await svc.close();
  });
});
