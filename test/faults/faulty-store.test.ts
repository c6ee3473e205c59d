/**
 * The engine on an object store that fails, delays, truncates and reorders (test/helpers/
 * faulty-store.ts, seeded). The store conformance suite passes through delays and shuffled
 * listings unchanged. Backups, restores, verify and GC under failing puts and gets, truncated
 * bodies and a store that dies after N operations: each either succeeds with the right bytes or
 * fails with a clear error, never a wrong success; once the faults stop, verify is clean and the
 * next backup restores bit-identical.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppError, ErrorCode, isAppError } from '../../src/domain/errors.ts';
import { writeBackup } from '../../src/engine/backup-writer.ts';
import { collectGarbage, deleteBackup } from '../../src/engine/garbage-collector.ts';
import { Repository } from '../../src/engine/repository.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { FileVolumeSource } from '../../src/engine/volume-source.ts';
import { LocalObjectStore } from '../../src/storage/local-store.ts';
import { MemoryObjectStore } from '../../src/storage/memory-store.ts';
import { describeObjectStore } from '../../src/storage/store-conformance.ts';
import { FaultyStore, type FaultPlan } from '../helpers/faulty-store.ts';
import { collectStrayPoolErrors, engineTestContext } from '../helpers/repo.ts';
import { MiB, overwrite, Rng, sha256File, TEST_KDF, writeRandomFile } from '../helpers/volumes.ts';

const SEED = Number(process.env.HAVEN_FAULT_SEED ?? 1202);
const { temp, pool } = engineTestContext('haven-faults-store-');
const strayPoolErrors = collectStrayPoolErrors(pool); // failed backups abort worker tasks (see repo.ts)
const tally = { injected: 0 };

// Delays and reordering are within the contract: the conformance suite must not notice them.
let conformanceSeed = SEED;
describeObjectStore('faulty (delays up to 3 ms, shuffled listings) over local', () => {
  const dir = temp.make('conf');
  return new FaultyStore(new LocalObjectStore(dir), { seed: ++conformanceSeed, delayMs: 3, shuffleList: true });
});
describeObjectStore('faulty (delays up to 3 ms, shuffled listings) over memory', () => new FaultyStore(new MemoryObjectStore(), { seed: ++conformanceSeed, delayMs: 3, shuffleList: true }));

interface Setup {
  dir: string;
  faulty: FaultyStore;
  repo: Repository;
  vol: string;
  target: string;
}

/** A repository on a (healthy for now) faulty store over a folder, and a volume of `bytes`. */
async function setup(name: string, bytes = 6 * MiB): Promise<Setup> {
  const dir = temp.make(name);
  const faulty = new FaultyStore(new LocalObjectStore(path.join(dir, 'repo')), { seed: SEED });
  faulty.heal();
  const repo = await Repository.init(faulty, { kdf: TEST_KDF, password: 'faulty store password', packTargetBytes: MiB });
  const vol = path.join(dir, 'vol.img');
  await writeRandomFile(vol, bytes, SEED);
  return { dir, faulty, repo, vol, target: path.join(dir, 'restored.img') };
}

/** The same repository opened afresh over a healthy store (no caches of the faulty run). */
function reopen(s: Setup): Promise<Repository> {
  return Repository.open(new LocalObjectStore(path.join(s.dir, 'repo')), { password: 'faulty store password' });
}

async function backup(repo: Repository, file: string): Promise<string> {
  const src = await FileVolumeSource.open(file);
  try {
    return (await writeBackup(repo, src, { volume: { id: 'vol', name: 'vol', path: file }, pool })).manifest.id;
  } finally {
    await src.close();
  }
}

async function restore(repo: Repository, id: string, target: string): Promise<void> {
  rmSync(target, { force: true });
  await restoreBackup(repo, await repo.readManifest(id), target, { pool });
}

/** New content in about half of the volume's 256 KiB regions. */
async function mutate(file: string, bytes: number, seed: number): Promise<void> {
  const r = new Rng(seed);
  for (let off = 0; off < bytes; off += 256 * 1024) if (r.int(2) === 0) await overwrite(file, off, r.bytes(256 * 1024));
}

/** A failure must be a clear error: an Error with a message, no bare strings. */
function assertClearError(err: unknown, what: string): string {
  assert.ok(err instanceof Error, `${what} rejected with a non-Error: ${String(err)}`);
  assert.ok(err.message.length > 10, `${what}: unclear message ${JSON.stringify(err.message)}`);
  return err instanceof AppError ? `${err.code}: ${err.message}` : err.message;
}

/** With the faults over: verify clean, every listed backup restores to what it recorded, a new backup restores bit-identical. */
async function assertHealthyAfter(s: Setup, what: string): Promise<void> {
  const repo = await reopen(s);
  const v = await verifyRepository(repo, { pool });
  assert.equal(v.ok, true, `verify after ${what}: ${JSON.stringify(v)}`);
  const id = await backup(repo, s.vol);
  await restore(repo, id, s.target);
  assert.equal(await sha256File(s.target), await sha256File(s.vol), `restore after ${what}`);
}

describe('the engine on a faulty object store', () => {
  it('backups under failing puts (6 seeds): each fails clearly or succeeds whole; afterwards verify is clean', async (t) => {
    const s = await setup('put');
    let failed = 0;
    for (let k = 0; k < 6; k++) {
      await mutate(s.vol, 6 * MiB, SEED + k);
      const want = await sha256File(s.vol);
      const manifestsBefore = (await (await reopen(s)).listBackups()).manifests.length;
      s.faulty.sicken({ seed: SEED * 10 + k, failPut: 0.25, delayMs: 2 });
      let id: string | null = null;
      try {
        id = await backup(s.repo, s.vol);
      } catch (err) {
        failed++;
        t.diagnostic(`seed ${SEED * 10 + k}: ${assertClearError(err, 'backup')}`);
      }
      s.faulty.heal();
      if (id) {
        // A backup that reported success is whole.
        await restore(await reopen(s), id, s.target);
        assert.equal(await sha256File(s.target), want);
      } else {
        // A failed backup left no manifest behind.
        assert.equal((await (await reopen(s)).listBackups()).manifests.length, manifestsBefore);
      }
      await assertHealthyAfter(s, `failing puts, seed ${SEED * 10 + k}`);
    }
    tally.injected += s.faulty.counts.failed;
    assert.ok(failed >= 3, `only ${failed} of 6 backups met a failing put`);
    assert.equal(s.faulty.counts.truncated, 0);
  });

  it('a store that dies after N operations (5 points spread over a backup): the backup fails clearly, nothing half-written counts', async (t) => {
    const s = await setup('dies');
    // How many operations does a whole backup take here?
    // The repository's first backup also raises its format (three config operations): count a later one.
    await backup(s.repo, s.vol);
    await mutate(s.vol, 6 * MiB, SEED + 50);
    const before = s.faulty.ops;
    await backup(s.repo, s.vol);
    const opsPerBackup = s.faulty.ops - before;
    const backupsBefore = (await (await reopen(s)).listBackups()).manifests.length;
    for (let k = 0; k < 5; k++) {
      await mutate(s.vol, 6 * MiB, SEED + 60 + k);
      const n = Math.floor((opsPerBackup * (k + 0.5)) / 5);
      s.faulty.sicken({ seed: SEED + k, failAfterOps: s.faulty.ops + n });
      await assert.rejects(backup(s.repo, s.vol), (err) => {
        const msg = assertClearError(err, 'backup');
        t.diagnostic(`dies after ${n} of ${opsPerBackup} ops: ${msg}`);
        // The failure that stopped the backup is reported, not the lock release that failed after it.
        assert.doesNotMatch(msg, /delete locks\//);
        return true;
      });
      s.faulty.heal();
      assert.equal((await (await reopen(s)).listBackups()).manifests.length, backupsBefore + k, 'a failed backup left no manifest');
      await assertHealthyAfter(s, `a store dead after ${n} ops`);
    }
    tally.injected += s.faulty.counts.failed;
  });

  it('restores under failing and truncated gets: each fails clearly or restores bit-identical; the backup stays whole', async (t) => {
    const s = await setup('get');
    const id = await backup(s.repo, s.vol);
    const want = await sha256File(s.vol);
    const plans: FaultPlan[] = [
      { seed: SEED + 1, failGet: 0.3, only: (_op, key) => key.startsWith('packs/') },
      { seed: SEED + 2, truncateGet: 0.3, only: (_op, key) => key.startsWith('packs/') },
      { seed: SEED + 3, truncateGet: 0.5 },
      { seed: SEED + 4, failGet: 0.1, truncateGet: 0.1, delayMs: 3, shuffleList: true },
    ];
    let failed = 0;
    for (const plan of plans) {
      const repo = await Repository.open(s.faulty, { password: 'faulty store password' }).catch((err: unknown) => err);
      s.faulty.sicken(plan);
      try {
        if (repo instanceof Error) throw repo;
        await restore(repo as Repository, id, s.target);
        assert.equal(await sha256File(s.target), want, `a restore reported success with other bytes (plan seed ${plan.seed})`);
      } catch (err) {
        if (err instanceof assert.AssertionError) throw err;
        failed++;
        t.diagnostic(`plan seed ${plan.seed}: ${assertClearError(err, 'restore')}`);
        // The packs are whole: a flaky store must not be reported as damage (which marks the backup error).
        assert.ok(!isAppError(err, ErrorCode.ChunkCorrupt) && !isAppError(err, ErrorCode.ChunkMissing), `a storage failure reported as damage: ${(err as Error).message}`);
      }
      s.faulty.heal();
      const healthy = await reopen(s);
      await restore(healthy, id, s.target);
      assert.equal(await sha256File(s.target), want);
      assert.equal((await verifyRepository(healthy, { pool })).ok, true);
    }
    tally.injected += s.faulty.counts.failed + s.faulty.counts.truncated;
    assert.ok(failed >= 3, `only ${failed} of ${plans.length} restores met a fault`);
  });

  it('GC rewriting packs while gets come back truncated deletes nothing it could not copy whole', async (t) => {
    const s = await setup('gc', 8 * MiB);
    const first = await backup(s.repo, s.vol);
    await mutate(s.vol, 8 * MiB, SEED + 70);
    const second = await backup(s.repo, s.vol);
    const want = await sha256File(s.vol);
    await deleteBackup(s.repo, first); // its packs are now about half dead: GC rewrites them
    s.faulty.sicken({ seed: SEED + 5, truncateGet: 1, only: (op, key) => op === 'get' && key.startsWith('packs/') });
    try {
      const r = await collectGarbage(s.repo);
      t.diagnostic(`gc under truncated gets: ${JSON.stringify({ rewritten: r.rewrittenPacks, deleted: r.deletedPacks })}`);
    } catch (err) {
      t.diagnostic(`gc under truncated gets: ${assertClearError(err, 'gc')}`);
    }
    s.faulty.heal();
    tally.injected += s.faulty.counts.truncated;
    assert.ok(s.faulty.counts.truncated > 0, 'GC read no pack: the test did not test');
    const repo = await reopen(s);
    const v = await verifyRepository(repo, { pool });
    assert.equal(v.ok, true, `verify after GC under truncated gets: ${JSON.stringify(v)}`);
    await restore(repo, second, s.target);
    assert.equal(await sha256File(s.target), want);
    // And GC on the healthy store then reclaims the space.
    const r = await collectGarbage(repo);
    assert.ok(r.rewrittenPacks + r.deletedPacks > 0, JSON.stringify(r));
    assert.equal((await verifyRepository(repo, { pool })).ok, true);
  });

  it('verify under truncated gets never calls a damaged repository clean, and is clean again once the store is', async (t) => {
    const s = await setup('verify');
    await backup(s.repo, s.vol);
    s.faulty.sicken({ seed: SEED + 6, truncateGet: 0.5, only: (op, key) => op === 'get' && key.startsWith('packs/') });
    try {
      const v = await verifyRepository(s.repo, { pool });
      t.diagnostic(`verify under truncated gets: ok=${v.ok}`);
      if (s.faulty.counts.truncated > 0) assert.equal(v.ok, false, 'verify read truncated packs and said the repository is clean');
    } catch (err) {
      t.diagnostic(`verify under truncated gets: ${assertClearError(err, 'verify')}`);
    }
    s.faulty.heal();
    tally.injected += s.faulty.counts.truncated;
    await assertHealthyAfter(s, 'verify under truncated gets');
  });

  it('backup, restore, verify and GC with every operation delayed and every listing shuffled: all succeed, bit-identical', async (t) => {
    const s = await setup('delays');
    s.faulty.sicken({ seed: SEED + 7, delayMs: 4, shuffleList: true });
    const a = await backup(s.repo, s.vol);
    await mutate(s.vol, 6 * MiB, SEED + 80);
    const b = await backup(s.repo, s.vol);
    const want = await sha256File(s.vol);
    await deleteBackup(s.repo, a);
    const r = await collectGarbage(s.repo);
    assert.ok(r.rewrittenPacks + r.deletedPacks > 0, JSON.stringify(r));
    await restore(s.repo, b, s.target);
    assert.equal(await sha256File(s.target), want);
    assert.equal((await verifyRepository(s.repo, { pool })).ok, true);
    tally.injected += s.faulty.injected;
    t.diagnostic(`delayed ${s.faulty.counts.delayed} operations, shuffled ${s.faulty.counts.shuffled} listings`);
    t.diagnostic(`faults injected in this file so far: ${tally.injected}; stray worker errors: ${strayPoolErrors.length}`);
  });
});

describe('jobs through the API on a faulty object store', () => {
  it('a backup job meeting failing puts fails with the reason; a restore job meeting short reads fails without calling the backup damaged; healed, both succeed bit-identical', { timeout: 120_000 }, async (t) => {
    const { startService, ADMIN_PASSWORD } = await import('../helpers/service.ts');
    let faulty: FaultyStore | undefined;
    const roots = temp.make('api-roots');
    const svc = await startService(temp, { volumeRoots: [roots] }, { wrapStore: (s) => (faulty = new FaultyStore(s, { seed: SEED })) });
    try {
      faulty!.heal();
      const who = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const file = path.join(roots, 'disk.img');
      await writeRandomFile(file, 8 * MiB, SEED);
      const vol = await svc.adopt(who, file, 'disk');
      const targetFile = path.join(roots, 'target.img');
      await writeRandomFile(targetFile, 8 * MiB, SEED + 1);
      const target = await svc.adopt(who, targetFile, 'target');
      const job = async (url: string, payload: Record<string, unknown>): Promise<Record<string, unknown>> => {
        const r = await svc.req({ method: 'POST', url, token: who.token, payload });
        assert.equal(r.statusCode, 200, r.body);
        return svc.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
      };
      faulty!.sicken({ seed: SEED + 9, failPut: 1, only: (_op, key) => key.startsWith('packs/') });
      const failed = await job(`/v2/${who.projectId}/cloudbackups`, { backup: { volume_id: vol.id, name: 'fails' } });
      assert.equal(failed.status, 'FAIL');
      assert.match(String(failed.fail_reason), /connection reset by peer/);
      const failedId = (failed.entities as { backup_id: string }).backup_id;
      assert.equal((await svc.app.catalog.backups.getBackupById(failedId))!.status, 'error');
      faulty!.heal();
      await svc.app.engine.gcIdle();
      const ok = await job(`/v2/${who.projectId}/cloudbackups`, { backup: { volume_id: vol.id, name: 'works' } });
      assert.equal(ok.status, 'SUCCESS', JSON.stringify(ok));
      const okId = (ok.entities as { backup_id: string }).backup_id;

      faulty!.sicken({ seed: SEED + 10, truncateGet: 1, only: (op, key) => op === 'get' && key.startsWith('packs/') });
      const short = await job(`/v2/${who.projectId}/cloudbackups/${okId}/restore`, { restore: { volume_id: target.id } });
      assert.equal(short.status, 'FAIL');
      t.diagnostic(`restore on short reads: ${String(short.fail_reason)}`);
      assert.match(String(short.fail_reason), /storage or network failure/);
      assert.equal((await svc.app.catalog.backups.getBackupById(okId))!.status, 'available', 'a flaky store does not make a whole backup error');
      assert.equal((await svc.app.catalog.volumes.getVolumeById(target.id))!.status, 'error_restoring');
      faulty!.heal();
      const again = await job(`/v2/${who.projectId}/cloudbackups/${okId}/restore`, { restore: { volume_id: target.id } });
      assert.equal(again.status, 'SUCCESS', JSON.stringify(again));
      assert.equal(await sha256File(targetFile), await sha256File(file));
      assert.equal((await svc.app.engine.verify([okId])).ok, true);
      tally.injected += faulty!.counts.failed + faulty!.counts.truncated;
      t.diagnostic(`faults injected in this file: ${tally.injected}`);
    } finally {
      await svc.close();
    }
  });
});
