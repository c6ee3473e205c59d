/**
 * The end-to-end path, over HTTP only: an operator adopts an existing disk image with known
 * data (os-volume-manage), associates it with a policy, executes the policy, polls the policy task
 * and the backup job until done, restores the backup into a new volume and compares the bytes.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { makeSparseFile, MiB, GiB, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';

describe('adopt a disk, back it up by policy, restore it', () => {
  const temp = new TempDirs('haven-e2e-');
  let svc: TestService;
  let root: string;
  before(async () => {
    root = temp.make('images');
    svc = await startService(temp, { volumeRoots: [root] });
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  it('restores the adopted disk bit-identical', async () => {
    const { token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const image = path.join(root, 'web1.img');
    await makeSparseFile(image, 1 * GiB + 3 * 64 * 1024, [
      { offset: 0, data: randomBytesSeeded(2 * MiB, 1) },
      { offset: 300 * MiB, data: Buffer.alloc(5 * MiB, 'log line 2026-11-25 INFO ok\n') },
      { offset: 1 * GiB, data: randomBytesSeeded(3 * 64 * 1024, 2) },
    ]);
    const want = await sha256File(image);

    const vol = await svc.adopt({ token, projectId: pid }, image, 'web1');
    assert.equal(vol.status, 'available');
    assert.equal(vol.size, 2); // 1 GiB + 192 KiB rounds up

    const created = await svc.req({
      method: 'POST', url: `/v2/${pid}/backuppolicy`, token,
      payload: { backup_policy_name: 'nightly', scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 7, remain_first_backup_of_curMonth: 'N', status: 'ON' }, tags: [{ key: 'app', value: 'web' }] },
    });
    assert.equal(created.statusCode, 200, created.body);
    const policyId = (created.json() as { backup_policy_id: string }).backup_policy_id;
    const assoc = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicyresources`, token, payload: { backup_policy_id: policyId, resources: [{ resource_id: vol.id, resource_type: 'volume' }] } });
    assert.equal(assoc.statusCode, 200, assoc.body);
    assert.equal((assoc.json() as { success_resources: unknown[] }).success_resources.length, 1);

    // Execute now, as otcextensions sends it: an empty body with a JSON content type.
    const exec = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicy/${policyId}/action`, token, headers: { 'content-type': 'application/json' }, payload: '' });
    assert.equal(exec.statusCode, 204, exec.body);

    let task: Record<string, string> | undefined;
    for (let i = 0; i < 2400 && task?.status !== 'EXECUTE_SUCCESS'; i++) {
      const t = await svc.req({ method: 'GET', url: `/v2/${pid}/backuppolicy/${policyId}/backuptasks`, token });
      assert.equal(t.statusCode, 200);
      task = (t.json() as { tasks: Record<string, string>[] }).tasks[0];
      assert.notEqual(task?.status, 'EXECUTE_FAIL', JSON.stringify(task));
      if (task?.status !== 'EXECUTE_SUCCESS') await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(task!.status, 'EXECUTE_SUCCESS');
    assert.match(task!.backup_name!, /^autobk_[0-9a-f]{4}$/);
    const job = await svc.waitJob(token, pid, task!.vbs_job_id!);
    assert.equal(job.status, 'SUCCESS');
    const backupId = (job.entities as Record<string, string>).backup_id!;
    const shown = await svc.req({ method: 'GET', url: `/v3/${pid}/backups/${backupId}`, token });
    assert.equal((shown.json() as { backup: { status: string; name: string } }).backup.status, 'available');

    const target = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 2, name: 'web1-restored' } } });
    const targetId = (target.json() as { volume: { id: string } }).volume.id;
    const restore = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: targetId } } });
    assert.equal(restore.statusCode, 200, restore.body);
    assert.equal((await svc.waitJob(token, pid, (restore.json() as { job_id: string }).job_id)).status, 'SUCCESS');
    // The new volume is 2 GiB: its first 1 GiB + 192 KiB are the image's bytes, the rest zeros.
    const file = (await svc.app.catalog.volumes.getVolumeById(targetId))!.path;
    const { createHash } = await import('node:crypto');
    const { createReadStream } = await import('node:fs');
    const h = createHash('sha256');
    for await (const chunk of createReadStream(file, { start: 0, end: 1 * GiB + 3 * 64 * 1024 - 1 })) h.update(chunk as Buffer);
    assert.equal(h.digest('hex'), want);
    const { stat } = await import('node:fs/promises');
    assert.equal((await stat(file)).size, 2 * GiB, 'the volume keeps its size');
    // The adopted image itself was only read.
    assert.equal(await sha256File(image), want);
  });
});
