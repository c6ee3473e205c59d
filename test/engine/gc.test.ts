/**
 * delete + gc: space comes back, surviving backups stay intact, partly dead packs are rewritten,
 * leftovers of a killed backup are removed, and the grace rules protect chunks that a running backup
 * may still reference.
 */
import assert from 'node:assert/strict';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import { collectGarbage, deleteBackup } from '../../src/engine/garbage-collector.ts';
import { RepositoryLock } from '../../src/engine/locks.ts';
import type { BackupManifest } from '../../src/engine/manifest.ts';
import { DEFAULT_CHUNK_SIZE, Repository } from '../../src/engine/repository.ts';
import { verifyRepository, type VerifyReport } from '../../src/engine/verifier.ts';
import { LocalObjectStore } from '../../src/storage/local-store.ts';
import { HookStore } from '../helpers/hook-store.ts';
import { backupFile, initRepo, restoreTo, TEST_PASSWORD, engineTestContext } from '../helpers/repo.ts';
import { collectCli, dirBytes, listFilesRecursive, listPacks, MiB, randomBytesSeeded, sleep, spawnCli, writeRandomFile, writeVolume } from '../helpers/volumes.ts';
import { digestOfManifest, volumeDigestOfFile } from '../helpers/volume-digest.ts';

const CHUNK = DEFAULT_CHUNK_SIZE;
const { temp, pool } = engineTestContext('haven-gc-');

async function assertRestores(repo: Repository, m: BackupManifest, dir: string): Promise<void> {
  const target = path.join(dir, `restore-${m.id}.img`);
  await restoreTo(repo, m.id, target, pool);
  // The restored bytes, named afresh, have the volume digest the backup computed from the source.
  assert.equal(await volumeDigestOfFile(repo, target), digestOfManifest(m));
  await fs.rm(target);
}

async function assertVerifies(repo: Repository, backups: number): Promise<void> {
  const r = await verifyRepository(repo, { pool });
  assert.equal(r.ok, true, JSON.stringify(r.backups.filter((b) => !b.ok)));
  assert.equal(r.backups.length, backups);
}

describe('garbage collection', () => {
  it('delete one of two volumes, gc: space comes back, the other backup stays whole', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true });
    await writeRandomFile(path.join(dir, 'a.img'), 16 * MiB, 1);
    await writeRandomFile(path.join(dir, 'b.img'), 16 * MiB, 2);
    const a = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    const b = (await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool })).manifest;
    const aPacksBefore = (await listPacks(repoDir)).length;
    const before = await dirBytes(repoDir);

    await deleteBackup(repo, a.id);
    assert.deepEqual(await repo.listBackupIds(), [b.id]);
    assert.equal(existsSync(path.join(repoDir, 'indexes', a.id)) && (await fs.readdir(path.join(repoDir, 'indexes', a.id))).length > 0, false);
    const seen: { phase: string; doneBytes: number; totalBytes: number }[] = [];
    const r = await collectGarbage(repo, { onProgress: (phase, p) => seen.push({ phase, ...p }) });
    // Progress: marking b's index (its chunk list), then sweeping every pack, each up to its total.
    const last = (phase: string) => seen.filter((x) => x.phase === phase).at(-1);
    assert.deepEqual(last('mark'), { phase: 'mark', doneBytes: b.chunkCount * 32, totalBytes: b.chunkCount * 32 });
    assert.ok(last('sweep')!.totalBytes >= 32 * MiB && last('sweep')!.doneBytes === last('sweep')!.totalBytes);
    assert.equal(seen.findIndex((x) => x.phase === 'sweep') > seen.findLastIndex((x) => x.phase === 'mark'), true, 'mark, then sweep');
    assert.equal(r.deferred, false);
    assert.equal(r.backups, 1);
    assert.equal(r.deletedChunks, a.chunkCount);
    assert.equal(r.referencedChunks, b.chunkCount);
    assert.equal(r.pendingChunks, 0);
    assert.ok(r.deletedPacks >= 1);
    assert.equal((await listPacks(repoDir)).length, aPacksBefore - r.deletedPacks);
    const afterBytes = await dirBytes(repoDir);
    assert.ok(before - afterBytes >= 16 * MiB, `gc reclaimed only ${before - afterBytes} bytes (before ${before}, after ${afterBytes})`);
    assert.ok(r.reclaimedBytes >= 16 * MiB);

    await assertRestores(repo, b, dir);
    await assertVerifies(repo, 1);

    // A second run finds nothing to do.
    const again = await collectGarbage(repo);
    assert.equal(again.deletedChunks, 0);
    assert.equal(again.deletedPacks, 0);
    assert.equal(again.rewrittenPacks, 0);
    assert.equal(await dirBytes(repoDir), afterBytes);
  });

  it('a pack that is half dead is rewritten with only its live chunks', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    const a = randomBytesSeeded(16 * MiB, 3);
    const b = Buffer.concat([a.subarray(0, 8 * MiB), randomBytesSeeded(8 * MiB, 4)]); // shares a's first half
    await writeVolume(path.join(dir, 'a.img'), a);
    await writeVolume(path.join(dir, 'b.img'), b);
    const ma = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    const aPacks = await listPacks(repoDir);
    assert.equal(aPacks.length, 1);
    const mb = (await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool })).manifest;
    const before = await dirBytes(repoDir);

    await deleteBackup(repo, ma.id);
    const r = await collectGarbage(repo);
    assert.equal(r.deletedChunks, 8 * MiB / CHUNK);
    assert.equal(r.rewrittenPacks, 1);
    assert.equal(r.writtenPacks, 1);
    assert.equal(r.deletedPacks, 0);
    assert.equal(r.referencedChunks, 16 * MiB / CHUNK);
    const packs = await listPacks(repoDir);
    assert.ok(!packs.includes(aPacks[0]!), 'the half-dead pack should be gone');
    assert.equal(packs.length, 2);
    const reclaimed = before - (await dirBytes(repoDir));
    assert.ok(reclaimed >= 8 * MiB && reclaimed < 9 * MiB, `reclaimed ${reclaimed} bytes, expected about 8 MiB`);
    await assertRestores(repo, mb, dir);
    await assertVerifies(repo, 1);
    const again = await collectGarbage(repo);
    assert.equal(again.rewrittenPacks + again.deletedPacks + again.deletedChunks, 0);
  });

  it('a pack with a little dead space is kept, its dead chunks forgotten (re-stored when needed again)', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true });
    const a = randomBytesSeeded(16 * MiB, 5);
    const b = Buffer.concat([a.subarray(0, 15 * MiB), randomBytesSeeded(MiB, 6)]);
    await writeVolume(path.join(dir, 'a.img'), a);
    await writeVolume(path.join(dir, 'b.img'), b);
    const ma = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    const mb = (await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool })).manifest;
    const packs = await listPacks(repoDir);
    await deleteBackup(repo, ma.id);
    const r = await collectGarbage(repo);
    assert.equal(r.deletedChunks, MiB / CHUNK);
    assert.equal(r.rewrittenPacks, 0);
    assert.equal(r.deletedPacks, 0);
    assert.deepEqual(await listPacks(repoDir), packs);
    await assertRestores(repo, mb, dir);
    await assertVerifies(repo, 1);
    // The forgotten chunks are stored again by the next backup that needs them.
    const ma2 = await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool });
    assert.equal(ma2.stats.newBytes, MiB);
    await assertRestores(repo, ma2.manifest, dir);
    await assertVerifies(repo, 2);
  });

  it('gc after a killed backup removes its leftovers and its stale lock; verify stays clean', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    // Small packs, so the killed backup has written several before it dies.
    const repo = await initRepo(repoDir, { encrypted: false, packTargetBytes: 4 * MiB });
    await writeRandomFile(path.join(dir, 'keep.img'), 8 * MiB, 7);
    const keep = (await backupFile(repo, path.join(dir, 'keep.img'), 'keep', { pool })).manifest;
    const packsBefore = new Set(await listPacks(repoDir));
    await writeRandomFile(path.join(dir, 'big.img'), 160 * MiB, 8);

    const child = spawnCli(['backup', '--repo', repoDir, '--volume', path.join(dir, 'big.img'), '--json']);
    const done = collectCli(child, 120_000);
    let orphans: string[] = [];
    for (let i = 0; i < 3000 && child.exitCode === null; i++) {
      orphans = (await listPacks(repoDir)).filter((p) => !packsBefore.has(p));
      if (orphans.length >= 3) break;
      await sleep(10);
    }
    child.kill('SIGKILL');
    const res = await done;
    assert.equal(res.signal, 'SIGKILL', `the backup was not killed mid-way (exit ${res.code}): ${res.stdout}`);
    assert.ok(orphans.length >= 3);
    assert.deepEqual(await repo.listBackupIds(), [keep.id]);
    const locks = (await listFilesRecursive(repoDir)).filter((p) => p.startsWith(`locks${path.sep}backup-`));
    assert.equal(locks.length, 1, 'the killed backup should have left its lock');

    await assertVerifies(repo, 1);
    const r = await collectGarbage(repo);
    assert.equal(r.deferred, false);
    assert.equal(r.staleLocksRemoved, 1);
    assert.ok(r.orphanPacksDeleted >= orphans.length, `${r.orphanPacksDeleted} orphan packs deleted, ${orphans.length} seen`);
    assert.equal(r.orphanIndexesDeleted, 0, 'a 160 MiB backup has a single index segment, written at the end');
    assert.deepEqual(new Set(await listPacks(repoDir)), packsBefore);
    assert.equal((await listFilesRecursive(repoDir)).filter((p) => p.startsWith(`locks${path.sep}`)).length, 0);
    await assertVerifies(repo, 1);
    await assertRestores(repo, keep, dir);
  });

  it('gc refuses to run when a manifest is unreadable, and deletes nothing', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    await writeRandomFile(path.join(dir, 'a.img'), 4 * MiB, 9);
    await writeRandomFile(path.join(dir, 'b.img'), 4 * MiB, 10);
    const a = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool });
    await deleteBackup(repo, a.id); // something gc would delete
    const man = path.join(repoDir, 'manifests', (await repo.listBackupIds())[0]!);
    const body = await fs.readFile(man);
    body[body.length >> 1]! ^= 0xff;
    await fs.writeFile(man, body);
    const files = await listFilesRecursive(repoDir);
    await assert.rejects(collectGarbage(repo), (err: unknown) => err instanceof AppError && err.code === ErrorCode.RepositoryCorrupt);
    assert.deepEqual(await listFilesRecursive(repoDir), files);
  });
});

describe('garbage collection: no work when there is nothing to collect', () => {
  it(
    'a fully live pack of highly compressible chunks is left alone',
    async () => {
      const dir = temp.make();
      const repoDir = path.join(dir, 'repo');
      const repo = await initRepo(repoDir, { encrypted: false });
      const data = Buffer.alloc(64 * CHUNK);
      for (let i = 0; i < 64; i++) data.fill(i + 1, i * CHUNK, (i + 1) * CHUNK); // 64 distinct chunks, ~20 bytes each compressed
      await writeVolume(path.join(dir, 'v.img'), data);
      const m = (await backupFile(repo, path.join(dir, 'v.img'), 'v', { pool })).manifest;
      const packs = await listPacks(repoDir);
      const r = await collectGarbage(repo);
      assert.equal(r.deletedChunks, 0);
      assert.equal(r.rewrittenPacks, 0, 'a pack with no dead chunk was rewritten');
      assert.deepEqual(await listPacks(repoDir), packs);
      await assertRestores(repo, m, dir);
    },
  );

  it('a gc run with nothing to collect reports nothing reclaimed', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    await writeRandomFile(path.join(dir, 'a.img'), MiB, 15);
    await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool });
    const before = await dirBytes(repoDir);
    const r = await collectGarbage(repo);
    assert.equal(await dirBytes(repoDir), before);
    assert.equal(r.repositoryBytesBefore, before);
    assert.equal(r.reclaimedBytes, 0);
  });
});

describe('garbage collection and concurrent backups', () => {
  it('chunks only a running backup could reference are kept until it ends', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true });
    await writeRandomFile(path.join(dir, 'a.img'), 8 * MiB, 11);
    const a = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    const packs = await listPacks(repoDir);
    await deleteBackup(repo, a.id); // a's chunks are now unreferenced

    // A backup "started before" and still running: it may have read the chunk map and reuse them.
    const lock = await RepositoryLock.acquire(repo.store, 'backup', { backupId: '00000000-0000-4000-8000-000000000000' });
    try {
      for (let run = 0; run < 2; run++) {
        const r = await collectGarbage(repo);
        assert.equal(r.unreferencedChunks, a.chunkCount);
        assert.equal(r.pendingChunks, a.chunkCount, `run ${run}`);
        assert.equal(r.deletedChunks, 0, `run ${run}`);
        assert.equal(r.deletedPacks, 0);
        assert.deepEqual(await listPacks(repoDir), packs);
      }
      const { map } = await repo.loadChunkMap();
      assert.equal(map.size, a.chunkCount, 'pending chunks must stay in the chunk map');
    } finally {
      await lock.release();
    }

    const first = await collectGarbage(repo);
    const second = await collectGarbage(repo);
    assert.equal(first.deletedChunks + second.deletedChunks, a.chunkCount);
    assert.equal(second.pendingChunks, 0);
    assert.deepEqual(await listPacks(repoDir), []);
    assert.equal((await repo.loadChunkMap()).map.size, 0);
    assert.equal(existsSync(path.join(repoDir, 'gc', 'condemned')), false);
  });

  it('chunks condemned before a running backup started are deleted despite it', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    await writeRandomFile(path.join(dir, 'a.img'), 4 * MiB, 12);
    const a = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    await deleteBackup(repo, a.id);
    const lock = await RepositoryLock.acquire(repo.store, 'backup');
    try {
      // The first run condemns the chunks "10 minutes ago", long before the running backup started.
      const tenMinutesAgo = Date.now() - 10 * 60_000;
      const r1 = await collectGarbage(repo, { nowMs: () => tenMinutesAgo });
      assert.equal(r1.pendingChunks, a.chunkCount);
      assert.equal(r1.deletedChunks, 0);
      // That backup read the condemned set when it started, so it avoided those chunks.
      const r2 = await collectGarbage(repo);
      assert.equal(r2.deletedChunks, a.chunkCount);
      assert.equal(r2.pendingChunks, 0);
      assert.deepEqual(await listPacks(repoDir), []);
    } finally {
      await lock.release();
    }
  });

  it('a backup starting while chunks are condemned stores fresh copies, and gc keeps those', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true });
    const vol = path.join(dir, 'a.img');
    await writeRandomFile(vol, 8 * MiB, 13);
    const a = (await backupFile(repo, vol, 'a', { pool })).manifest;
    const oldPacks = await listPacks(repoDir);
    await deleteBackup(repo, a.id);
    const lock = await RepositoryLock.acquire(repo.store, 'backup');
    let again: BackupManifest;
    try {
      const r = await collectGarbage(repo);
      assert.equal(r.pendingChunks, a.chunkCount);
      // Same content again: the condemned chunks must not be reused.
      const res = await backupFile(repo, vol, 'a', { pool });
      assert.equal(res.stats.newBytes, 8 * MiB);
      assert.equal(res.stats.reusedChunks, 0);
      again = res.manifest;
    } finally {
      await lock.release();
    }
    const r = await collectGarbage(repo);
    assert.equal(r.referencedChunks, again.chunkCount);
    const packs = await listPacks(repoDir);
    for (const p of oldPacks) assert.ok(!packs.includes(p), `old pack ${p} should be gone`);
    assert.ok(packs.length >= 1);
    await assertRestores(repo, again, dir);
    await assertVerifies(repo, 1);
  });

  it('a running restore or verify (read lock) defers the sweep', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    await writeRandomFile(path.join(dir, 'a.img'), 4 * MiB, 14);
    const a = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    await deleteBackup(repo, a.id);
    const packs = await listPacks(repoDir);
    const lock = await RepositoryLock.acquire(repo.store, 'read');
    try {
      const r = await collectGarbage(repo);
      assert.equal(r.deferred, true);
      assert.equal(r.deletedChunks, 0);
      assert.deepEqual(await listPacks(repoDir), packs);
    } finally {
      await lock.release();
    }
    const r = await collectGarbage(repo);
    assert.equal(r.deferred, false);
    assert.equal(r.deletedChunks, a.chunkCount);
    assert.deepEqual(await listPacks(repoDir), []);
  });

  it('a backup that completes while gc runs, reusing chunks gc found unreferenced, keeps them', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    const vol = path.join(dir, 'a.img');
    await writeRandomFile(vol, 4 * MiB, 16);
    const a = (await backupFile(repo, vol, 'a', { pool })).manifest;
    await deleteBackup(repo, a.id);
    // gc marks (no backup references a's chunks), then, before it condemns them, a backup of the
    // same content starts, reuses them and completes.
    const hooked = new HookStore(new LocalObjectStore(repoDir));
    const gcRepo = await Repository.open(hooked);
    let again: BackupManifest | undefined;
    hooked.afterList('manifests/', async () => {
      const res = await backupFile(repo, vol, 'a', { pool });
      assert.equal(res.stats.newBytes, 0, 'the backup should reuse the stored chunks');
      again = res.manifest;
    });
    const r = await collectGarbage(gcRepo);
    assert.ok(again, 'the hook did not run');
    assert.equal(r.deletedChunks, 0);
    assert.equal(r.backups, 1);
    await assertVerifies(repo, 1);
    await collectGarbage(repo);
    await assertRestores(repo, again, dir);
  });

  it(
    'a backup that completes between gc listing packs and listing chunk maps survives',
    async () => {
      const dir = temp.make();
      const repoDir = path.join(dir, 'repo');
      const repo = await initRepo(repoDir, { encrypted: false });
      await writeRandomFile(path.join(dir, 'a.img'), 4 * MiB, 17);
      await writeRandomFile(path.join(dir, 'b.img'), 4 * MiB, 18);
      await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool });
      const hooked = new HookStore(new LocalObjectStore(repoDir));
      const gcRepo = await Repository.open(hooked);
      let b: BackupManifest | undefined;
      hooked.afterList('packs/', async () => {
        b = (await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool })).manifest;
      });
      await collectGarbage(gcRepo);
      assert.ok(b, 'the hook did not run');
      await assertVerifies(repo, 2);
      await collectGarbage(repo);
      await assertVerifies(repo, 2);
      await assertRestores(repo, b, dir);
    },
  );
});

describe('garbage collection and concurrent readers', () => {
  it(
    'a verify that starts after gc checked for readers is not disturbed by the pack rewrite',
    async () => {
      const dir = temp.make();
      const repoDir = path.join(dir, 'repo');
      const repo = await initRepo(repoDir, { encrypted: false });
      const a = randomBytesSeeded(8 * MiB, 23);
      const b = Buffer.concat([a.subarray(0, 4 * MiB), randomBytesSeeded(4 * MiB, 24)]);
      await writeVolume(path.join(dir, 'a.img'), a);
      await writeVolume(path.join(dir, 'b.img'), b);
      const ma = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
      const mb = (await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool })).manifest;
      await deleteBackup(repo, ma.id); // a's pack is half dead: gc will rewrite it

      const gcStore = new HookStore(new LocalObjectStore(repoDir));
      const vStore = new HookStore(new LocalObjectStore(repoDir));
      let gcDone!: () => void;
      const gcFinished = new Promise<void>((r) => (gcDone = r));
      let reached!: () => void;
      const verifyLoadedMap = new Promise<void>((r) => (reached = r));
      let verifyP: Promise<VerifyReport> | undefined;
      // gc step D (its second chunk-map listing) comes after its reader check: start a verify there,
      // let it load the chunk map, then let gc sweep before the verify reads any pack.
      gcStore.afterList('chunkmaps/', async () => {
        verifyP = verifyRepository(await Repository.open(vStore), { pool });
        await verifyLoadedMap;
      }, 2);
      vStore.afterList('manifests/', async () => {
        reached();
        await gcFinished;
      });
      const r = await collectGarbage(await Repository.open(gcStore));
      gcDone();
      assert.equal(r.rewrittenPacks, 1);
      assert.ok(verifyP, 'the hook did not run');
      const report = await verifyP;
      await assertVerifies(repo, 1); // the data is fine
      await assertRestores(repo, mb, dir);
      assert.equal(report.ok, true, `verify running alongside gc reported damage: ${JSON.stringify(report.backups)}`);
    },
  );
});

describe('garbage collection interrupted', () => {
  it('a gc run that dies at any of its writes or deletes leaves a consistent repository, finished by the next run', async (t) => {
    // The template: a (16 MiB) deleted, b shares a's first half: gc rewrites one pack, deletes chunk
    // maps, a pack and the condemned set.
    const base = temp.make('template');
    const template = path.join(base, 'repo');
    const repo0 = await initRepo(template, { encrypted: true });
    const a = randomBytesSeeded(16 * MiB, 21);
    const b = Buffer.concat([a.subarray(0, 8 * MiB), randomBytesSeeded(8 * MiB, 22)]);
    await writeVolume(path.join(base, 'a.img'), a);
    await writeVolume(path.join(base, 'b.img'), b);
    const ma = (await backupFile(repo0, path.join(base, 'a.img'), 'a', { pool })).manifest;
    const mb = (await backupFile(repo0, path.join(base, 'b.img'), 'b', { pool })).manifest;
    await deleteBackup(repo0, ma.id);

    let completed = false;
    let crashes = 0;
    for (let n = 0; n < 50 && !completed; n++) {
      const dir = temp.make(`crash${n}`);
      const repoDir = path.join(dir, 'repo');
      await fs.cp(template, repoDir, { recursive: true });
      const hooked = new HookStore(new LocalObjectStore(repoDir));
      hooked.crashAfterMutations = n;
      const gcRepo = await Repository.open(hooked, { password: TEST_PASSWORD });
      try {
        await collectGarbage(gcRepo);
        completed = !hooked.crashed;
      } catch (err) {
        assert.ok(hooked.crashed, `gc failed without a simulated crash: ${String(err)}`);
        crashes++;
      }
      if (completed) break;
      // The dead process's gc lock would be stale; remove it as the next gc would.
      await fs.rm(path.join(repoDir, 'locks'), { recursive: true, force: true });
      const repo = await Repository.open(new LocalObjectStore(repoDir), { password: TEST_PASSWORD });
      await assertVerifies(repo, 1);
      const r = await collectGarbage(repo);
      assert.equal(r.backups, 1);
      await assertVerifies(repo, 1);
      await assertRestores(repo, mb, dir);
      let packBytes = 0;
      for (const p of await listPacks(repoDir)) packBytes += (await fs.stat(path.join(repoDir, p))).size;
      assert.ok(packBytes < 16.5 * MiB, `after crash point ${n} and a clean gc, ${packBytes} bytes of packs remain for 16 MiB of live data`);
      await fs.rm(dir, { recursive: true });
    }
    t.diagnostic(`${crashes} crash points exercised`);
    assert.ok(completed, 'gc never completed');
    assert.ok(crashes >= 5, `only ${crashes} crash points exercised`);
  });
});
