/**
 * Repository integrity through the HTTP API (issue 11): a full backup (`FullBackup: "true"`) never
 * reuses a damaged chunk; a restore that meets damage fails, marks the backup `error` and the volume
 * `error_restoring`, and names the other backups using the chunk; once the chunk is stored again the
 * service's verify at start makes the backup `available` again; a restore whose bytes do not match
 * (RestoreMismatch) fails the same way; a backup that fails midway leaves no pack behind (the
 * service runs GC after it).
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import type { Body } from '../../src/storage/object-store.ts';
import { DelegatingStore } from '../helpers/delegating-store.ts';
import { forgeFirstChunk } from '../helpers/forge.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { listPacks, MiB, overwrite, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-integrity-');
after(() => temp.cleanup());

interface Who {
  token: string;
  projectId: string;
}

async function admin(svc: TestService): Promise<Who> {
  const { token, projectId } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
  return { token, projectId };
}

/** A 1 GB volume holding `data` at its start. */
async function volumeWith(svc: TestService, who: Who, name: string, data: Buffer): Promise<{ id: string; file: string }> {
  const v = await svc.createVolume(who, name, 1);
  const file = await svc.volumePath(v.id);
  await overwrite(file, 0, data);
  return { id: v.id, file };
}

async function backup(svc: TestService, who: Who, volumeId: string, full = false): Promise<{ id: string; job: Record<string, unknown> }> {
  const r = await svc.req({
    method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token,
    payload: { backup: { volume_id: volumeId, name: 'b', ...(full ? { extend_param: { FullBackup: 'true' } } : {}) } },
  });
  assert.equal(r.statusCode, 200, r.body);
  const job = await svc.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
  return { id: String((job.entities as Record<string, string>).backup_id), job };
}

async function restore(svc: TestService, who: Who, backupId: string, volumeId: string): Promise<Record<string, unknown>> {
  const r = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups/${backupId}/restore`, token: who.token, payload: { restore: { volume_id: volumeId } } });
  assert.equal(r.statusCode, 200, r.body);
  return svc.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
}

async function status(svc: TestService, who: Who, kind: 'backups' | 'volumes', id: string): Promise<string> {
  const r = await svc.req({ method: 'GET', url: `/v3/${who.projectId}/${kind}/${id}`, token: who.token });
  assert.equal(r.statusCode, 200, r.body);
  return String((r.json() as Record<string, { status: string }>)[kind === 'backups' ? 'backup' : 'volume']!.status);
}

/** The service's repository folder and its only pack (the tests' volumes fit in one). */
async function onlyPack(svc: TestService): Promise<string> {
  const repoDir = path.join(svc.dataDir, 'repository');
  const packs = await listPacks(repoDir);
  assert.equal(packs.length, 1, `expected one pack, found ${packs.join(', ')}`);
  return path.join(repoDir, packs[0]!);
}

async function flipByte(file: string, at: number): Promise<void> {
  const body = await fs.readFile(file);
  body[at]! ^= 0x01;
  await fs.writeFile(file, body);
}

describe('repository integrity over the API', () => {
  it('FullBackup "true" checks the chunks it would reuse: a damaged one is stored again, the backup is whole', async () => {
    const svc = await startService(temp);
    try {
      const who = await admin(svc);
      const data = randomBytesSeeded(4 * MiB, 601);
      const v = await volumeWith(svc, who, 'v', data);
      const b1 = await backup(svc, who, v.id);
      assert.equal(b1.job.status, 'SUCCESS');
      await flipByte(await onlyPack(svc), 100); // nobody has read it since: the damage is unknown
      const full = await backup(svc, who, v.id, true);
      assert.equal(full.job.status, 'SUCCESS', JSON.stringify(full.job));
      assert.equal(await status(svc, who, 'backups', full.id), 'available');
      // Whole without a verify having run first: verify and a restore agree.
      const report = await svc.app.engine.verify([full.id]);
      assert.equal(report.ok, true, JSON.stringify(report.backups));
      const target = await svc.createVolume(who, 't', 1);
      const rj = await restore(svc, who, full.id, target.id);
      assert.equal(rj.status, 'SUCCESS', JSON.stringify(rj));
      const restored = await fs.open(await svc.volumePath(target.id));
      const head = Buffer.alloc(data.length);
      await restored.read(head, 0, head.length, 0);
      await restored.close();
      assert.ok(head.equals(data), 'the full backup restores the volume bit-identical');
    } finally {
      await svc.close();
    }
  });

  it('a restore that meets a damaged chunk: backup error, volume error_restoring, other users named; whole again -> available', async () => {
    const svc = await startService(temp);
    try {
      const who = await admin(svc);
      const v = await volumeWith(svc, who, 'v', randomBytesSeeded(4 * MiB, 602));
      const shaBefore = await sha256File(v.file);
      const b1 = await backup(svc, who, v.id);
      const b2 = await backup(svc, who, v.id); // an incremental sharing every chunk
      assert.equal(b2.job.status, 'SUCCESS');
      const pack = await onlyPack(svc);
      const original = await fs.readFile(pack);
      await flipByte(pack, 100);

      const target = await svc.createVolume(who, 't', 1);
      const rj = await restore(svc, who, b1.id, target.id);
      assert.equal(rj.status, 'FAIL');
      assert.match(String(rj.fail_reason), /damaged/);
      assert.match(String(rj.fail_reason), new RegExp(`also used by backup\\(s\\) ${b2.id}`));
      assert.equal(await status(svc, who, 'backups', b1.id), 'error');
      assert.equal(await status(svc, who, 'volumes', target.id), 'error_restoring');

      // The pack is put back; the service verifies its error backups when it starts.
      await fs.writeFile(pack, original);
      await svc.restart();
      await svc.app.engine.gcIdle();
      let s = '';
      for (let i = 0; i < 400 && s !== 'available'; i++) {
        s = await status(svc, who, 'backups', b1.id);
        if (s !== 'available') await new Promise((r) => setTimeout(r, 25));
      }
      assert.equal(s, 'available');
      const again = await restore(svc, who, b1.id, target.id);
      assert.equal(again.status, 'SUCCESS', JSON.stringify(again));
      assert.equal(await status(svc, who, 'volumes', target.id), 'available');
      const file = await svc.volumePath(target.id);
      const st = await fs.stat(file);
      // The target is the volume's size (1 GB); the backup's data is its whole content.
      assert.equal(st.size, (await fs.stat(v.file)).size);
      assert.equal(await sha256File(file), shaBefore);
    } finally {
      await svc.close();
    }
  });

  it('a restore that meets a forged chunk (ChunkCorrupt, named): job FAIL, backup error, volume error_restoring', async () => {
    const svc = await startService(temp);
    try {
      const who = await admin(svc);
      const v = await volumeWith(svc, who, 'v', randomBytesSeeded(2 * MiB, 603));
      const b = await backup(svc, who, v.id);
      // A chunk changed with its CRC fixed: it decodes cleanly, and the restore's per-chunk digest check names it.
      await forgeFirstChunk(await onlyPack(svc));
      const rj = await restore(svc, who, b.id, v.id);
      assert.equal(rj.status, 'FAIL', JSON.stringify(rj));
      assert.match(String(rj.fail_reason), /chunk [0-9a-f]{64} of backup [0-9a-f-]+ is damaged/);
      assert.equal(await status(svc, who, 'backups', b.id), 'error');
      assert.equal(await status(svc, who, 'volumes', v.id), 'error_restoring');
    } finally {
      await svc.close();
    }
  });

  it('a backup that fails midway leaves no pack behind once its job has ended (GC after failure)', async () => {
    let store: FailPacksStore | undefined;
    const svc = await startService(temp, {}, { wrapStore: (s) => (store = new FailPacksStore(s)) });
    try {
      const who = await admin(svc);
      const repoDir = path.join(svc.dataDir, 'repository');
      const keep = await volumeWith(svc, who, 'keep', randomBytesSeeded(2 * MiB, 604));
      const kept = await backup(svc, who, keep.id);
      assert.equal(kept.job.status, 'SUCCESS');
      const packsBefore = await listPacks(repoDir);
      // 80 MiB of new data: the first 32 MiB pack is stored, the second put fails.
      const big = await volumeWith(svc, who, 'big', randomBytesSeeded(80 * MiB, 605));
      store!.failPacksAfter = 1;
      const failed = await backup(svc, who, big.id);
      assert.equal(failed.job.status, 'FAIL', JSON.stringify(failed.job));
      assert.equal(store!.packsStored, 1, 'one pack was stored before the failure');
      store!.failPacksAfter = undefined;
      await svc.app.engine.gcIdle();
      assert.deepEqual(await listPacks(repoDir), packsBefore, 'the failed backup\'s pack is gone');
      assert.equal((await svc.app.engine.verify([kept.id])).ok, true);
    } finally {
      await svc.close();
    }
  });
});

/** Fails every pack put after the first `failPacksAfter` (counted from when it is set). */
class FailPacksStore extends DelegatingStore {
  failPacksAfter: number | undefined;
  packsStored = 0;

  override async put(key: string, body: Body, signal?: AbortSignal): Promise<void> {
    if (key.startsWith('packs/') && this.failPacksAfter !== undefined) {
      if (this.packsStored >= this.failPacksAfter) throw new Error(`injected failure writing ${key}`);
      this.packsStored++;
    }
    return this.inner.put(key, body, signal);
  }
}
