/**
 * A full file system during backups and restores (small tmpfs mounts; CI runs as root):
 * - the data folder (catalog and repository) on a 24 MiB tmpfs, a 40 MiB volume of random data
 *   backed up: the job fails with a clear reason, the backup is `error` with it, the partial packs
 *   are removed by the GC that follows a failed backup, and `haven verify` is clean;
 * - with the disk filled to the last byte, requests answer 507/503 in their envelope or succeed,
 *   never a 500, and a backup asked for then fails or is refused cleanly;
 * - once space is freed (the tmpfs grown), a backup succeeds and restores bit-identical;
 * - a restore onto a volume on a full file system (a second 8 MiB tmpfs) fails clearly, leaves the
 *   volume error_restoring and the backup available, and the backup still restores bit-identical
 *   elsewhere.
 * Mounting needs root (CAP_SYS_ADMIN): without it the test skips, except under CI=true.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { listFilesRecursive, makeSparseFile, MiB, sha256File, TempDirs, writeRandomFile } from '../helpers/volumes.ts';
import { fill, mountTmpfs } from '../helpers/tmpfs.ts';
import { verifyRepo } from './serve-process.ts';

const run = promisify(execFile);
const VOLUME_BYTES = 40 * MiB;


async function packBytes(repoDir: string): Promise<number> {
  let n = 0;
  for (const f of await listFilesRecursive(repoDir)) if (f.startsWith(`packs${path.sep}`)) n += (await fs.stat(path.join(repoDir, f))).size;
  return n;
}

describe('a full file system during backups and restores', () => {
  const temp = new TempDirs('haven-faults-full-');
  const dataMount = temp.make('data-mnt');
  const volMount = temp.make('vol-mnt');
  const roots = temp.make('roots');
  const dataDir = path.join(dataMount, 'data');
  const repoDir = path.join(dataDir, 'repository');
  const mounted: string[] = [];
  let skip: string | false = false;
  let svc: TestService | undefined;
  /** Every answer the API gave in this test: none may be a 5xx other than 503/507. */
  const answers: { what: string; status: number; body: string }[] = [];
  before(async () => {
    for (const [dir, size] of [[dataMount, '24m'], [volMount, '8m']] as const) {
      const why = await mountTmpfs(dir, size);
      if (why) {
        if (process.env.CI === 'true') throw new Error(`${why}: required under CI (runs as root)`);
        skip = why;
        return;
      }
      mounted.push(dir);
    }
    svc = await startService(temp, { dataDir, volumeRoots: [roots, volMount] });
  });
  after(async () => {
    await svc?.close();
    for (const m of mounted) await run('umount', [m]);
    temp.cleanup();
  });

  const req = async (o: InjectOptions & { token?: string }): Promise<LightMyRequestResponse> => {
    const r = await svc!.req(o);
    answers.push({ what: `${o.method} ${o.url}`, status: r.statusCode, body: r.body });
    return r;
  };

  it('a backup larger than the free space fails clearly, its packs go, verify is clean; after freeing space it succeeds and restores bit-identical; a restore onto a full file system fails clearly and the backup stays available', { timeout: 180_000 }, async (t) => {
    if (skip) return t.skip(skip);
    const s = svc!;
    const who = await s.login('admin', ADMIN_PASSWORD, 'admin');
    const vol = path.join(roots, 'disk.img');
    const want = await writeRandomFile(vol, VOLUME_BYTES, 424242);
    const target = path.join(roots, 'target.img');
    await makeSparseFile(target, VOLUME_BYTES);
    const volumeId = (await s.adopt(who, vol, 'disk')).id;
    const targetId = (await s.adopt(who, target, 'target')).id;
    const backupJob = async (name: string): Promise<Record<string, unknown>> => {
      const r = await req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: volumeId, name } } });
      assert.equal(r.statusCode, 200, r.body);
      return s.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
    };

    // 1. The backup does not fit: a clear failure, the backup error with the reason.
    const failed = await backupJob('too-big');
    assert.equal(failed.status, 'FAIL', JSON.stringify(failed));
    assert.match(String(failed.fail_reason), /no space left|disk is full|ENOSPC/i);
    const failedId = (failed.entities as { backup_id: string }).backup_id;
    const shown = await req({ method: 'GET', url: `/v3/${who.projectId}/backups/${failedId}`, token: who.token });
    assert.equal(shown.statusCode, 200, shown.body);
    const b = (shown.json() as { backup: { status: string; fail_reason: string } }).backup;
    assert.equal(b.status, 'error');
    assert.match(b.fail_reason, /no space left|disk is full|ENOSPC/i);

    // 2. The GC after the failed backup removes its partial packs; the repository verifies clean.
    await s.app.engine.gcIdle();
    const left = await packBytes(repoDir);
    t.diagnostic(`packs left after the failed backup and its GC: ${left} bytes`);
    assert.ok(left < 2 * MiB, `${left} bytes of partial packs stayed`);
    const v1 = await verifyRepo(repoDir);
    assert.equal(v1.report.ok, true, v1.raw);

    // 3. The disk filled to the last byte: answers are 507/503 in the envelope or successes.
    await s.app.catalog.db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
    const filler = await fill(dataMount);
    await req({ method: 'GET', url: `/v3/${who.projectId}/backups/detail`, token: who.token });
    await req({ method: 'POST', url: `/v3/${who.projectId}/volumes`, token: who.token, payload: { volume: { size: 1, name: 'no-room' } } });
    const during = await req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: volumeId, name: 'while-full' } } });
    if (during.statusCode === 200) {
      const j = await s.waitJob(who.token, who.projectId, (during.json() as { job_id: string }).job_id);
      assert.equal(j.status, 'FAIL', JSON.stringify(j));
      assert.match(String(j.fail_reason), /no space left|disk is full|ENOSPC/i);
    } else {
      assert.equal(during.statusCode, 507, during.body);
      assert.match(during.body, /disk is full/);
    }
    await s.app.engine.gcIdle();
    await fs.rm(filler);

    // 4. The operator frees space: the backup succeeds and restores bit-identical.
    await run('mount', ['-o', 'remount,size=160m', dataMount]);
    const ok = await backupJob('fits');
    assert.equal(ok.status, 'SUCCESS', JSON.stringify(ok));
    const okId = (ok.entities as { backup_id: string }).backup_id;
    const restoreTo = async (vid: string): Promise<Record<string, unknown>> => {
      const r = await req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups/${okId}/restore`, token: who.token, payload: { restore: { volume_id: vid } } });
      assert.equal(r.statusCode, 200, r.body);
      return s.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
    };
    assert.equal((await restoreTo(targetId)).status, 'SUCCESS');
    assert.equal(await sha256File(target), want);

    // 5. A restore onto a volume whose file system cannot hold it fails clearly; the backup stays available.
    const small = path.join(volMount, 'small-fs.img');
    await makeSparseFile(small, VOLUME_BYTES);
    const smallId = (await s.adopt(who, small, 'on-small-fs')).id;
    const r = await restoreTo(smallId);
    assert.equal(r.status, 'FAIL', JSON.stringify(r));
    assert.match(String(r.fail_reason), /no space left|disk is full|ENOSPC/i);
    assert.equal((await s.app.catalog.backups.getBackupById(okId))!.status, 'available');
    assert.equal((await s.app.catalog.volumes.getVolumeById(smallId))!.status, 'error_restoring');
    await makeSparseFile(target, VOLUME_BYTES);
    assert.equal((await restoreTo(targetId)).status, 'SUCCESS');
    assert.equal(await sha256File(target), want);
    await s.app.engine.gcIdle();
    const v2 = await verifyRepo(repoDir);
    assert.equal(v2.report.ok, true, v2.raw);
    assert.deepEqual(v2.report.backups.map((x) => x.id), [okId]);

    const bad = answers.filter((a) => a.status >= 500 && a.status !== 503 && a.status !== 507);
    assert.deepEqual(bad, [], 'answers of 5xx other than 503/507');
    for (const a of answers.filter((x) => x.status === 503 || x.status === 507)) assert.match(a.body, /"(computeFault|error|overLimit|badRequest)|error_code|error_msg|message/, `not in an envelope: ${a.body}`);
    t.diagnostic(`answers: ${answers.map((a) => `${a.what} ${a.status}`).join('; ')}`);
  });
});
