/**
 * Scale-out: two Haven processes with data folders of their own (as on two hosts), sharing a
 * PostgreSQL catalog and a chunk repository in an S3-compatible object store. A backup taken
 * through one is listed and restored bit-identical through the other, nothing of the repository
 * is in either data folder, and an encrypted repository created by the first is opened by the
 * second with the same password.
 */
import assert from 'node:assert/strict';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { collectKeys } from '../../src/storage/object-store.ts';
import { freshDatabase } from '../helpers/postgres.ts';
import { S3_BUCKET, S3_CREDENTIALS, startS3, type TestS3 } from '../helpers/s3-server.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';

describe('scale-out: PostgreSQL catalog and S3 repository shared by two processes', async () => {
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : false;
  const temp = new TempDirs('haven-scale-');
  let s3: TestS3;
  const svcs: TestService[] = [];
  before(async () => {
    if ('skip' in db) return;
    s3 = await startS3(temp);
    // The AWS SDK's default credential chain, as a deployment would set it.
    process.env.AWS_ACCESS_KEY_ID = S3_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3_CREDENTIALS.secretAccessKey;
    const passwordFile = path.join(temp.make('secrets'), 'repo-password');
    await fs.writeFile(passwordFile, 'shared repository password\n', { mode: 0o600 });
    const shared = { catalogUrl: db.url, repositoryUrl: `s3://${S3_BUCKET}/haven`, s3Endpoint: s3.endpoint, repoPasswordFile: passwordFile };
    for (let i = 0; i < 2; i++) svcs.push(await startService(temp, shared));
  });
  after(async () => {
    if ('skip' in db) return;
    for (const s of svcs) await s.close();
    await s3.close();
    await db.drop();
    temp.cleanup();
  });

  it('a backup through one process restores bit-identical through the other', { skip }, async () => {
    const [one, two] = svcs as [TestService, TestService];
    const a = await one.login('admin', ADMIN_PASSWORD, 'admin');
    const vol = await one.createVolume(a, 'web1', 1);
    const file = await one.volumePath(vol.id);
    await overwrite(file, 5 * MiB, randomBytesSeeded(6 * MiB, 21));
    const want = await sha256File(file);
    const b = await one.req({ method: 'POST', url: `/v2/${a.projectId}/cloudbackups`, token: a.token, payload: { backup: { volume_id: vol.id, name: 'web1_s3' } } });
    assert.equal(b.statusCode, 200, b.body);
    const job = await one.waitJob(a.token, a.projectId, (b.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    const backupId = (job.entities as { backup_id: string }).backup_id;

    // The second process: its own token, its own data folder, the same catalog and repository.
    const t = await two.login('admin', ADMIN_PASSWORD, 'admin');
    const listed = (await two.req({ method: 'GET', url: `/v3/${t.projectId}/backups/detail`, token: t.token })).json() as { backups: { id: string; status: string }[] };
    assert.deepEqual(listed.backups.map((x) => [x.id, x.status]), [[backupId, 'available']]);
    const dst = await two.createVolume(t, 'web1-copy', 1);
    assert.ok((await two.volumePath(dst.id)).startsWith(two.dataDir));
    const r = await two.req({ method: 'POST', url: `/v2/${t.projectId}/cloudbackups/${backupId}/restore`, token: t.token, payload: { restore: { volume_id: dst.id } } });
    assert.equal(r.statusCode, 200, r.body);
    assert.equal((await two.waitJob(t.token, t.projectId, (r.json() as { job_id: string }).job_id)).status, 'SUCCESS');
    assert.equal(await sha256File(await two.volumePath(dst.id)), want);

    // The chunks are in the bucket, encrypted (one config), and in neither data folder.
    const objects = await collectKeys(s3.store('haven'), '');
    assert.equal(objects.filter((o) => o.key === 'config').length, 1);
    assert.ok(objects.some((o) => o.key.startsWith('packs/')));
    assert.ok(objects.some((o) => o.key === `manifests/${backupId}`));
    for (const s of svcs) assert.equal(existsSync(path.join(s.dataDir, 'repository')), false);
  });
});
