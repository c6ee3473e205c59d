/**
 * End to end through the HTTP API: a volume with known data is backed up (VBS B1, job polled to
 * SUCCESS), changed and backed up again (incremental), restored into a new volume (B3) and
 * compared byte for byte; then deleted (B2) until it is gone.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TempDirs, MiB, overwrite, randomBytesSeeded, sha256File } from '../helpers/volumes.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';

describe('VBS backup, restore and delete over HTTP', () => {
  const temp = new TempDirs('haven-api-');
  let svc: TestService;
  let token: string;
  let pid: string;
  before(async () => {
    svc = await startService(temp);
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const createVolume = async (sizeGb: number, name: string) => {
    const v = await svc.createVolume({ token, projectId: pid }, name, sizeGb);
    assert.equal(v.status, 'available');
    return v.id;
  };
  const volumePath = (id: string) => svc.volumePath(id);

  it('backs up, backs up incrementally, restores bit-identical and deletes', async () => {
    const src = await createVolume(1, 'data');
    const file = await volumePath(src);
    await overwrite(file, 0, randomBytesSeeded(3 * MiB, 1));
    await overwrite(file, 700 * MiB, randomBytesSeeded(2 * MiB, 2));
    const first = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: src, name: 'first', description: 'day one', tags: [{ key: 'env', value: 'test' }] } } });
    assert.equal(first.statusCode, 200, first.body);
    const job1 = await svc.waitJob(token, pid, (first.json() as { job_id: string }).job_id);
    assert.equal(job1.status, 'SUCCESS', JSON.stringify(job1));
    assert.equal(job1.job_type, 'bksCreateBackup');
    const entities = job1.entities as Record<string, string>;
    for (const v of Object.values(entities)) assert.equal(typeof v, 'string');
    const backup1 = entities.backup_id!;
    assert.match(String(job1.begin_time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const shaAtFirst = await sha256File(file);

    const shown = await svc.req({ method: 'GET', url: `/v2/${pid}/backups/${backup1}`, token });
    assert.equal(shown.statusCode, 200);
    const b1 = (shown.json() as { backup: Record<string, unknown> }).backup;
    assert.equal(b1.status, 'available');
    assert.equal(b1.volume_id, src);
    assert.equal(b1.is_incremental, false);
    assert.equal(b1['os-bak-tenant-attr:tenant_id'], pid);
    assert.deepEqual(JSON.parse(String(b1.description)), { DESC: 'day one', INC: 0 });
    assert.match(String(b1.created_at), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$/);

    // Change 1 MiB and back up again: incremental, only the change is new.
    await overwrite(file, 100 * MiB, randomBytesSeeded(1 * MiB, 3));
    const second = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: src, name: 'second' } } });
    const job2 = await svc.waitJob(token, pid, (second.json() as { job_id: string }).job_id);
    assert.equal(job2.status, 'SUCCESS', JSON.stringify(job2));
    const backup2 = (job2.entities as Record<string, string>).backup_id!;
    const b2row = await svc.app.catalog.backups.getBackupById(backup2);
    assert.equal(b2row!.fullBackup, false);
    assert.equal(b2row!.parentId, backup1);
    assert.ok(b2row!.newBytes <= 1 * MiB, `incremental stored ${b2row!.newBytes} new bytes`);
    const shaAtSecond = await sha256File(file);

    // Restore the first backup into a new volume: byte-identical to the volume at that time.
    const target = await createVolume(1, 'target');
    const rest = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backup1}/restore`, token, payload: { restore: { volume_id: target } } });
    assert.equal(rest.statusCode, 200, rest.body);
    const job3 = await svc.waitJob(token, pid, (rest.json() as { job_id: string }).job_id);
    assert.equal(job3.status, 'SUCCESS', JSON.stringify(job3));
    assert.equal(job3.job_type, 'bksRestoreBackup');
    assert.equal(await sha256File(await volumePath(target)), shaAtFirst);
    const tv = await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${target}`, token });
    assert.equal((tv.json() as { volume: { status: string } }).volume.status, 'available');

    // Native restore of the second backup onto the source volume after more changes.
    await overwrite(file, 0, randomBytesSeeded(4 * MiB, 9));
    const nat = await svc.req({ method: 'POST', url: `/v3/${pid}/backups/${backup2}/restore`, token, payload: { restore: { volume_id: src } } });
    assert.equal(nat.statusCode, 202, nat.body);
    assert.deepEqual(nat.json(), { restore: { backup_id: backup2, volume_id: src, volume_name: 'data' } });
    const after2 = await svc.waitBackup(token, pid, backup2);
    assert.equal(after2!.status, 'available');
    await svc.app.runner.idle();
    assert.equal(await sha256File(file), shaAtSecond);

    // Delete the first backup (B2): the second still restores.
    const del = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backup1}`, token });
    assert.equal(del.statusCode, 200, del.body);
    const job4 = await svc.waitJob(token, pid, (del.json() as { job_id: string }).job_id);
    assert.equal(job4.status, 'SUCCESS', JSON.stringify(job4));
    assert.equal(job4.job_type, 'bksDeleteBackup');
    assert.equal((await svc.req({ method: 'GET', url: `/v2/${pid}/backups/${backup1}`, token })).statusCode, 404);
    await svc.app.engine.collectGarbage();
    const t2 = await createVolume(1, 'target2');
    const r2 = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backup2}/restore`, token, payload: { restore: { volume_id: t2 } } });
    const job5 = await svc.waitJob(token, pid, (r2.json() as { job_id: string }).job_id);
    assert.equal(job5.status, 'SUCCESS', JSON.stringify(job5));
    assert.equal(await sha256File(await volumePath(t2)), shaAtSecond);
  });
});
