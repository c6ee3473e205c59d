/**
 * Scheduled sample restores (services/sample-restore.ts): a random available backup restored for
 * real into a scratch file and checked. A whole one stays available and leaves no file; one whose
 * pack was damaged becomes error with the reason, and the metrics count both.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { listPacks, MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-sample-');
after(() => temp.cleanup());

describe('scheduled sample restores', () => {
  it('restores a random available backup and checks it; a damaged one becomes error with the reason', async () => {
    const svc = await startService(temp, { sampleRestoreHours: 0 });
    try {
      const who = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      assert.equal(await svc.app.samples.runOnce(), null, 'no backup: nothing to sample');
      const vol = await svc.createVolume(who, 'v', 1);
      await overwrite(await svc.volumePath(vol.id), 1 * MiB, randomBytesSeeded(3 * MiB, 811));
      const b = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: vol.id, name: 'b' } } });
      assert.equal(b.statusCode, 200, b.body);
      const job = await svc.waitJob(who.token, who.projectId, (b.json() as { job_id: string }).job_id);
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
      const backupId = (job.entities as { backup_id: string }).backup_id;
      const shown = async (): Promise<{ status: string; fail_reason: string | null }> =>
        ((await svc.req({ method: 'GET', url: `/v3/${who.projectId}/backups/${backupId}`, token: who.token })).json() as { backup: { status: string; fail_reason: string | null } }).backup;

      // Whole: the random pick is the only backup; it stays available; the scratch file is gone.
      const ok = await svc.app.samples.runOnce();
      assert.equal(ok?.backupId, backupId);
      assert.equal(ok?.ok, true);
      assert.equal(ok?.skipped, undefined);
      assert.ok(ok!.bytes >= 3 * MiB, `restored ${ok!.bytes} bytes`);
      assert.equal((await shown()).status, 'available');
      assert.deepEqual(await fs.readdir(path.join(svc.dataDir, 'sample-restore')), []);

      // A flipped byte in its pack: the sample finds it, the backup becomes error with the reason.
      const repo = path.join(svc.dataDir, 'repository');
      const [pack] = await listPacks(repo);
      const file = path.join(repo, pack!);
      const body = await fs.readFile(file);
      body[200]! ^= 0x40;
      await fs.writeFile(file, body);
      const bad = await svc.app.samples.runOnce();
      assert.equal(bad?.ok, false);
      const after = await shown();
      assert.equal(after.status, 'error');
      assert.match(String(after.fail_reason), /sample restore found the backup damaged/);
      assert.deepEqual(await fs.readdir(path.join(svc.dataDir, 'sample-restore')), []);
      // An error backup is not sampled again.
      assert.equal(await svc.app.samples.runOnce(), null);

      const metrics = await svc.req({ method: 'GET', url: '/metrics', token: who.token });
      assert.match(metrics.body, /haven_sample_restores_total\{result="whole"\} 1/);
      assert.match(metrics.body, /haven_sample_restores_total\{result="damaged"\} 1/);
    } finally {
      await svc.close();
    }
  });
});
