/**
 * Backup sharing over HTTP (vbs.md §9, S1-S5): the owner shares a backup with other projects,
 * which then see it (S3 share_to_me, S5, N4) and restore it into their own volumes byte for byte;
 * any other project sees nothing and restores nothing. Recipients can neither delete the backup
 * nor cancel the sharing; the owner cancels one sharing or all of them, and deleting the backup
 * removes its sharings.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { TempDirs, MiB, overwrite, randomBytesSeeded, sha256File } from '../helpers/volumes.ts';
import { startService, type TestService } from '../helpers/service.ts';

type Json = Record<string, unknown>;
type Who = { token: string; projectId: string };
type SharingItem = { id: string; backup_id: string; from_project_id: string; to_project_id: string; created_at: string; updated_at: string; deleted_at: null; deleted: null; backup?: Json | null };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MICROS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$/;

describe('VBS backup sharing over HTTP', () => {
  const temp = new TempDirs('haven-api-sharing-');
  let svc: TestService;
  let owner: Who;
  let b: Who;
  let c: Who;
  let d: Who;
  let srcVolume: string;
  let backupId: string;
  let shaAtBackup: string;

  const call = (who: Who, method: 'GET' | 'POST' | 'DELETE', path: string, payload?: unknown) =>
    svc.req({ method, url: `/v2/${who.projectId}${path}`, token: who.token, ...(payload === undefined ? {} : { payload: payload as Json }) });
  const expectError = (r: LightMyRequestResponse, status: number, code?: string) => {
    assert.equal(r.statusCode, status, r.body);
    const e = (r.json() as { error: { code: string; message: string } }).error;
    assert.equal(typeof e.code, 'string', r.body);
    if (code) assert.equal(e.code, code, r.body);
    assert.ok(e.message.length > 0);
  };
  const createVolume = async (who: Who, name: string): Promise<string> => (await svc.createVolume(who, name)).id;
  const volumePath = (id: string) => svc.volumePath(id);
  const volumeStatus = async (who: Who, id: string) => {
    const r = await call(who, 'GET', `/volumes/${id}`);
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { volume: { status: string } }).volume.status;
  };
  const share = (who: Who, backup: string, to: string[]) => call(who, 'POST', '/os-vendor-backup-sharing', { shared: { backup_id: backup, to_project_ids: to } });
  const shareOk = async (who: Who, backup: string, to: string[]): Promise<SharingItem[]> => {
    const r = await share(who, backup, to);
    assert.equal(r.statusCode, 200, r.body);
    const list = (r.json() as { shared: SharingItem[] }).shared;
    assert.ok(Array.isArray(list), 'S1 answers a list');
    return list;
  };
  const detail = async (who: Who, query = ''): Promise<SharingItem[]> => {
    const r = await call(who, 'GET', `/os-vendor-backup-sharing/detail${query}`);
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { shared: SharingItem[] }).shared;
  };
  const count = async (who: Who, query = ''): Promise<number> => {
    const r = await call(who, 'GET', `/os-vendor-backup-sharing/count${query}`);
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as { count: number };
    assert.deepEqual(Object.keys(body), ['count']);
    return body.count;
  };
  /**
   * SHA-256 of the first 4 MiB: enough to tell a volume was left alone (any restore of the shared
   * backup rewrites the start with its data), without hashing the whole 1 GiB file.
   */
  const headSha = async (file: string) => {
    const fh = await fs.open(file, 'r');
    try {
      const buf = Buffer.alloc(4 * MiB);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      return createHash('sha256').update(buf.subarray(0, bytesRead)).digest('hex');
    } finally {
      await fh.close();
    }
  };
  const restore = (who: Who, backup: string, volume: string) => call(who, 'POST', `/cloudbackups/${backup}/restore`, { restore: { volume_id: volume } });
  const makeBackup = async (who: Who, volume: string, name: string): Promise<string> => {
    const r = await call(who, 'POST', '/cloudbackups', { backup: { volume_id: volume, name } });
    assert.equal(r.statusCode, 200, r.body);
    const job = await svc.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    return (job.entities as Record<string, string>).backup_id!;
  };

  before(async () => {
    svc = await startService(temp);
    owner = await svc.tenant('owner');
    b = await svc.tenant('tenant-b');
    c = await svc.tenant('tenant-c');
    d = await svc.tenant('tenant-d');
    srcVolume = await createVolume(owner, 'shared-src');
    const file = await volumePath(srcVolume);
    await overwrite(file, 0, randomBytesSeeded(3 * MiB, 11));
    await overwrite(file, 500 * MiB, randomBytesSeeded(2 * MiB, 12));
    backupId = await makeBackup(owner, srcVolume, 'to-share');
    shaAtBackup = await sha256File(file);
    // The source moves on: restores must give the data of the backup, not of the volume now.
    await overwrite(file, 0, randomBytesSeeded(1 * MiB, 13));
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  it('S1 shares a backup with B and C: one sharing per project', async () => {
    const list = await shareOk(owner, backupId, [b.projectId, c.projectId]);
    assert.equal(list.length, 2);
    assert.deepEqual(list.map((s) => s.to_project_id), [b.projectId, c.projectId]);
    for (const s of list) {
      assert.match(s.id, UUID);
      assert.equal(s.backup_id, backupId);
      assert.equal(s.from_project_id, owner.projectId);
      assert.match(s.created_at, MICROS);
      assert.equal(s.deleted, null);
      for (const k of ['id', 'backup_id', 'from_project_id', 'to_project_id', 'created_at', 'deleted']) assert.ok(k in s, `sharing item lacks ${k}`);
    }
    assert.notEqual(list[0]!.id, list[1]!.id);
    // Sharing again with B answers the existing sharing and adds nothing.
    const again = await shareOk(owner, backupId, [b.projectId]);
    assert.equal(again.length, 1);
    assert.equal(again[0]!.id, list[0]!.id);
    assert.equal(await count(owner), 2);
    const rows = await svc.app.catalog.policies.listSharings({ backupId });
    assert.deepEqual(rows.map((r) => r.toProjectId).sort(), [b.projectId, c.projectId].sort());

    // The owner's S3 (shared by me) lists both, with the backup.
    const mine = await detail(owner);
    assert.deepEqual(mine.map((s) => s.to_project_id).sort(), [b.projectId, c.projectId].sort());
    for (const s of mine) assert.equal(s.backup?.id, backupId);
    assert.deepEqual(await detail(owner, '?share_to_me=true'), [], 'nothing is shared to the owner');
  });

  it('B (and C) see the shared backup: S3 share_to_me, S5, S4 and N4', async () => {
    for (const who of [b, c]) {
      const list = await detail(who, '?share_to_me=true');
      assert.equal(list.length, 1);
      const s = list[0]!;
      assert.equal(s.backup_id, backupId);
      assert.equal(s.from_project_id, owner.projectId);
      assert.equal(s.to_project_id, who.projectId);
      const bk = s.backup!;
      assert.equal(bk.id, backupId);
      assert.equal(bk.name, 'to-share');
      assert.equal(bk.status, 'available');
      assert.equal(bk.volume_id, srcVolume);
      assert.equal(bk.size, 1);
      assert.equal(bk.is_incremental, false);
      assert.match(String(bk.created_at), MICROS);

      const shown = await call(who, 'GET', `/os-vendor-backup-sharing/${s.id}`);
      assert.equal(shown.statusCode, 200, shown.body);
      const one = (shown.json() as { shared: SharingItem }).shared;
      assert.equal(Array.isArray(one), false, 'S5 answers an object');
      assert.equal(one.id, s.id);
      assert.equal(one.backup_id, backupId);
      assert.equal(one.backup?.id, backupId);

      assert.equal(await count(who, '?share_to_me=true'), 1);
      assert.deepEqual(await detail(who), [], 'B shared nothing itself');

      for (const v of ['v2', 'v3']) {
        const n4 = await svc.req({ method: 'GET', url: `/${v}/${who.projectId}/backups/${backupId}`, token: who.token });
        assert.equal(n4.statusCode, 200, n4.body);
        assert.equal((n4.json() as { backup: { id: string } }).backup.id, backupId);
      }
    }
    // The owner can filter its sharings.
    assert.equal(await count(owner), 2);
    assert.equal(await count(owner, `?to_project_id=${b.projectId}`), 1);
    assert.equal(await count(owner, `?backup_id=${backupId}`), 2);
    assert.equal(await count(owner, `?backup_id=${randomUUID()}`), 0);
    assert.deepEqual((await detail(owner, `?to_project_id=${c.projectId}`)).map((s) => s.to_project_id), [c.projectId]);
  });

  it('B restores the shared backup into its own volume, byte for byte', async () => {
    const target = await createVolume(b, 'b-target');
    await overwrite(await volumePath(target), 0, randomBytesSeeded(1 * MiB, 21));
    const r = await restore(b, backupId, target);
    assert.equal(r.statusCode, 200, r.body);
    const jobId = (r.json() as { job_id: string }).job_id;
    const job = await svc.waitJob(b.token, b.projectId, jobId);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    assert.equal(job.job_type, 'bksRestoreBackup');
    assert.equal(await sha256File(await volumePath(target)), shaAtBackup);
    assert.equal(await volumeStatus(b, target), 'available');
    assert.equal((await svc.app.catalog.backups.getBackupById(backupId))?.status, 'available');
    // The job belongs to B, not to the owner.
    assert.equal((await svc.req({ method: 'GET', url: `/v1/${owner.projectId}/jobs/${jobId}`, token: owner.token })).statusCode, 404);
  });

  it('a project it was not shared with (D) can neither see nor restore it', async () => {
    const mine = await createVolume(d, 'd-volume');
    const file = await volumePath(mine);
    await overwrite(file, 0, randomBytesSeeded(2 * MiB, 31));
    const before = await headSha(file);

    assert.equal((await svc.req({ method: 'GET', url: `/v2/${d.projectId}/backups/${backupId}`, token: d.token })).statusCode, 404);
    assert.equal((await svc.req({ method: 'GET', url: `/v3/${d.projectId}/backups/${backupId}`, token: d.token })).statusCode, 404);
    assert.deepEqual(await detail(d, '?share_to_me=true'), []);
    assert.equal(await count(d, '?share_to_me=true'), 0);
    const bSharing = (await detail(b, '?share_to_me=true'))[0]!;
    expectError(await call(d, 'GET', `/os-vendor-backup-sharing/${bSharing.id}`), 404);

    expectError(await restore(d, backupId, mine), 404);
    const native = await svc.req({ method: 'POST', url: `/v2/${d.projectId}/backups/${backupId}/restore`, token: d.token, payload: { restore: { volume_id: mine } } });
    assert.equal(native.statusCode, 404, native.body);
    // D cannot share it onwards nor cancel B's sharing.
    expectError(await share(d, backupId, [b.projectId]), 404);
    expectError(await call(d, 'DELETE', `/os-vendor-backup-sharing/${bSharing.id}`), 404);
    await svc.app.runner.idle();
    assert.equal(await headSha(file), before, "D's volume is unchanged");
    assert.equal(await volumeStatus(d, mine), 'available');
    assert.equal(await count(owner), 2);
  });

  it('B can neither delete the backup, nor cancel the sharing, nor share it onwards', async () => {
    expectError(await call(b, 'POST', `/cloudbackups/${backupId}`), 404);
    expectError(await call(b, 'DELETE', `/cloudbackups/${backupId}`), 404);
    for (const v of ['v2', 'v3']) {
      const n5 = await svc.req({ method: 'DELETE', url: `/${v}/${b.projectId}/backups/${backupId}`, token: b.token });
      assert.equal(n5.statusCode, 404, n5.body);
    }
    const bSharing = (await detail(b, '?share_to_me=true'))[0]!;
    expectError(await call(b, 'DELETE', `/os-vendor-backup-sharing/${bSharing.id}`), 404);
    expectError(await call(b, 'DELETE', `/os-vendor-backup-sharing/${backupId}?is_backup_id=true`), 404);
    expectError(await share(b, backupId, [d.projectId]), 404);

    await svc.app.runner.idle();
    const row = await svc.app.catalog.backups.getBackupById(backupId);
    assert.equal(row?.status, 'available');
    assert.equal(await count(owner), 2);
    assert.equal(await count(d, '?share_to_me=true'), 0);
    const shown = await call(owner, 'GET', `/backups/${backupId}`);
    assert.equal(shown.statusCode, 200, shown.body);
  });

  it('S1 refuses unknown backups, unknown projects and the own project, and creates nothing', async () => {
    expectError(await share(owner, randomUUID(), [b.projectId]), 404);
    const ghostProject = randomBytes(16).toString('hex');
    expectError(await share(owner, backupId, [ghostProject]), 400);
    // A valid and an unknown project together: all or nothing.
    expectError(await share(owner, backupId, [d.projectId, ghostProject]), 400);
    expectError(await share(owner, backupId, [owner.projectId]), 400);
    expectError(await call(owner, 'POST', '/os-vendor-backup-sharing', { shared: { backup_id: backupId, to_project_ids: [] } }), 400);
    expectError(await call(owner, 'POST', '/os-vendor-backup-sharing', { shared: { to_project_ids: [d.projectId] } }), 400);
    assert.equal(await count(owner), 2);
    assert.equal(await count(d, '?share_to_me=true'), 0);
    assert.deepEqual((await svc.app.catalog.policies.listSharings({ backupId })).map((s) => s.toProjectId).sort(), [b.projectId, c.projectId].sort());
  });

  it('S2 cancels one sharing: B loses the backup, C keeps it', async () => {
    const bSharing = (await detail(b, '?share_to_me=true'))[0]!;
    const bTarget = await createVolume(b, 'b-after-cancel');
    const file = await volumePath(bTarget);
    await overwrite(file, 0, randomBytesSeeded(1 * MiB, 41));
    const before = await headSha(file);

    const r = await call(owner, 'DELETE', `/os-vendor-backup-sharing/${bSharing.id}`);
    assert.equal(r.statusCode, 200, r.body);
    assert.deepEqual(await detail(b, '?share_to_me=true'), []);
    assert.equal(await count(b, '?share_to_me=true'), 0);
    expectError(await call(b, 'GET', `/os-vendor-backup-sharing/${bSharing.id}`), 404);
    assert.equal((await svc.req({ method: 'GET', url: `/v2/${b.projectId}/backups/${backupId}`, token: b.token })).statusCode, 404);
    expectError(await restore(b, backupId, bTarget), 404);
    await svc.app.runner.idle();
    assert.equal(await headSha(file), before, "B's volume is unchanged");
    assert.equal(await volumeStatus(b, bTarget), 'available');

    // C still has it; the owner has one sharing left.
    assert.equal((await detail(c, '?share_to_me=true')).length, 1);
    assert.equal((await svc.req({ method: 'GET', url: `/v2/${c.projectId}/backups/${backupId}`, token: c.token })).statusCode, 200);
    assert.deepEqual((await detail(owner)).map((s) => s.to_project_id), [c.projectId]);
    // Cancelling it again: gone.
    expectError(await call(owner, 'DELETE', `/os-vendor-backup-sharing/${bSharing.id}`), 404);
    expectError(await call(owner, 'DELETE', `/os-vendor-backup-sharing/${randomUUID()}`), 404);
  });

  it('S2 with is_backup_id=true cancels every sharing of the backup', async () => {
    await shareOk(owner, backupId, [b.projectId, d.projectId]);
    assert.equal(await count(owner), 3);
    const r = await call(owner, 'DELETE', `/os-vendor-backup-sharing/${backupId}?is_backup_id=true`);
    assert.equal(r.statusCode, 200, r.body);
    assert.equal(await count(owner), 0);
    for (const who of [b, c, d]) {
      assert.deepEqual(await detail(who, '?share_to_me=true'), []);
      assert.equal((await svc.req({ method: 'GET', url: `/v2/${who.projectId}/backups/${backupId}`, token: who.token })).statusCode, 404);
    }
    assert.deepEqual(await svc.app.catalog.policies.listSharings({ backupId }), []);
    // Nothing left to cancel; the backup itself is untouched.
    expectError(await call(owner, 'DELETE', `/os-vendor-backup-sharing/${backupId}?is_backup_id=true`), 404);
    assert.equal((await svc.app.catalog.backups.getBackupById(backupId))?.status, 'available');
  });

  it('S3 pages, sorts and filters the sharings of several backups', async () => {
    const second = await makeBackup(owner, srcVolume, 'second-share');
    await shareOk(owner, backupId, [b.projectId]);
    await shareOk(owner, second, [b.projectId]);
    const all = await detail(b, '?share_to_me=true');
    assert.deepEqual(all.map((s) => s.backup_id).sort(), [backupId, second].sort());
    const asc = await detail(b, '?share_to_me=true&sort_key=name&sort_dir=asc');
    assert.deepEqual(asc.map((s) => s.backup?.name), ['second-share', 'to-share']);
    const descByName = await detail(b, '?share_to_me=true&sort_key=name&sort_dir=desc');
    assert.deepEqual(descByName.map((s) => s.backup?.name), ['to-share', 'second-share']);
    const p1 = await detail(b, '?share_to_me=true&sort_key=name&sort_dir=asc&limit=1');
    const p2 = await detail(b, '?share_to_me=true&sort_key=name&sort_dir=asc&limit=1&offset=1');
    assert.deepEqual([...p1, ...p2].map((s) => s.id), asc.map((s) => s.id));
    assert.deepEqual((await detail(b, `?share_to_me=true&backup_id=${second}`)).map((s) => s.backup_id), [second]);
    assert.deepEqual((await detail(b, '?share_to_me=true&name=second')).map((s) => s.backup_id), [second]);
    assert.equal(await count(b, '?share_to_me=true'), 2);
    assert.equal(await count(b, '?share_to_me=true&name=second'), 1);
    assert.equal(await count(b, `?share_to_me=true&from_project_id=${owner.projectId}`), 2);
    assert.equal(await count(b, `?share_to_me=true&from_project_id=${d.projectId}`), 0);
    assert.equal(await count(owner, `?volume_id=${srcVolume}`), 2);
  });

  it('deleting a shared backup removes its sharings', async () => {
    const shared = (await detail(b, '?share_to_me=true')).find((s) => s.backup_id === backupId)!;
    assert.ok(shared);
    const del = await call(owner, 'POST', `/cloudbackups/${backupId}`);
    assert.equal(del.statusCode, 200, del.body);
    const job = await svc.waitJob(owner.token, owner.projectId, (del.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    assert.deepEqual(await svc.app.catalog.policies.listSharings({ backupId }), []);
    assert.deepEqual((await detail(b, '?share_to_me=true')).map((s) => s.backup_id), (await detail(owner)).map((s) => s.backup_id));
    assert.equal((await detail(b, '?share_to_me=true')).some((s) => s.backup_id === backupId), false);
    assert.equal((await detail(owner)).some((s) => s.backup_id === backupId), false);
    expectError(await call(b, 'GET', `/os-vendor-backup-sharing/${shared.id}`), 404);
    expectError(await call(owner, 'GET', `/os-vendor-backup-sharing/${shared.id}`), 404);
    assert.equal(await count(b, '?share_to_me=true'), 1, 'the other shared backup stays shared');
  });
});
