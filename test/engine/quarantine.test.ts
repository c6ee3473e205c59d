/**
 * Quarantine (docs/design.md Q1-Q5): a stored chunk found damaged is never deduplicated against
 * again; a full backup checks what it reuses; a pack put back releases the quarantine; verify names
 * the backups a damaged chunk affects; `verify --repair --from` stores the chunks again from a
 * volume and the damaged backups verify clean.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import { writeBackup, type BackupResult } from '../../src/engine/backup-writer.ts';
import { DIGEST_BYTES } from '../../src/engine/chunk-digest.ts';
import { collectGarbage, deleteBackup } from '../../src/engine/garbage-collector.ts';
import type { BackupManifest } from '../../src/engine/manifest.ts';
import { ENTRY_BYTES, parsePackTrailer, PACK_TRAILER_BYTES, readEntry } from '../../src/engine/pack-format.ts';
import { loadQuarantine, QUARANTINE_PREFIX } from '../../src/engine/quarantine.ts';
import type { Repository } from '../../src/engine/repository.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { verifyRepository, type VerifyReport } from '../../src/engine/verifier.ts';
import { FileVolumeSource } from '../../src/engine/volume-source.ts';
import { backupFile, engineTestContext, initRepo, reopenRepo, TEST_PASSWORD } from '../helpers/repo.ts';
import { listFilesRecursive, listPacks, MiB, randomBytesSeeded, runCli, writeRandomFile, writeVolume } from '../helpers/volumes.ts';
import { digestOfManifest, volumeDigestOfFile } from '../helpers/volume-digest.ts';

const { temp, pool } = engineTestContext('haven-quarantine-');

interface Fixture {
  dir: string;
  repoDir: string;
  repo: Repository;
  encrypted: boolean;
  /** The volume of x and y (unchanged since). */
  volume: string;
  /** x: the volume; y: an incremental of it; both use every chunk of x's pack. */
  x: BackupManifest;
  y: BackupManifest;
  /** x's pack, a copy of it as written, and the digest of its first chunk (the one damaged). */
  packFile: string;
  packCopy: Buffer;
  digest: string;
}

async function damagedFixture(encrypted: boolean): Promise<Fixture> {
  const dir = temp.make(encrypted ? 'enc' : 'plain');
  const repoDir = path.join(dir, 'repo');
  const repo = await initRepo(repoDir, { encrypted });
  const volume = path.join(dir, 'v.img');
  await writeRandomFile(volume, 4 * MiB, 301);
  const x = (await backupFile(repo, volume, 'v', { pool })).manifest;
  const y = (await backupFile(repo, volume, 'v', { pool, previous: x })).manifest;
  assert.equal(y.stats.newChunks, 0);
  const packs = await listPacks(repoDir);
  assert.equal(packs.length, 1);
  const packFile = path.join(repoDir, packs[0]!);
  const packCopy = await fs.readFile(packFile);
  const headerLen = parsePackTrailer(packCopy.subarray(packCopy.length - PACK_TRAILER_BYTES));
  const header = repo.decode(packCopy.subarray(packCopy.length - PACK_TRAILER_BYTES - headerLen, packCopy.length - PACK_TRAILER_BYTES), 'pack header');
  assert.ok(header.length >= ENTRY_BYTES);
  const first = readEntry(header, 0);
  assert.equal(first.offset, 0);
  const digest = Buffer.from(header.subarray(first.digestOffset, first.digestOffset + DIGEST_BYTES)).toString('hex');
  const damaged = Buffer.from(packCopy);
  damaged[100]! ^= 0x01; // inside the first chunk's blob
  await fs.writeFile(packFile, damaged);
  return { dir, repoDir, repo: await reopenRepo(repoDir, encrypted), encrypted, volume, x, y, packFile, packCopy, digest };
}

function badIds(r: VerifyReport): string[] {
  return r.backups.filter((b) => !b.ok).map((b) => b.id).sort();
}

async function assertRestores(repo: Repository, m: BackupManifest, dir: string): Promise<void> {
  const target = path.join(dir, `r-${m.id}.img`);
  await restoreBackup(repo, m, target, { pool });
  assert.equal(await volumeDigestOfFile(repo, target), digestOfManifest(m));
  await fs.rm(target);
}

for (const encrypted of [false, true]) {
  describe(`quarantine (${encrypted ? 'encrypted' : 'unencrypted'})`, () => {
    it('verify quarantines a damaged chunk and names its backups; the next backup stores it fresh and is whole', async () => {
      const f = await damagedFixture(encrypted);
      const r = await verifyRepository(f.repo, { pool });
      assert.deepEqual(badIds(r), [f.x.id, f.y.id].sort());
      assert.equal(r.quarantined, 1);
      assert.deepEqual(r.chunks.map((c) => ({ digest: c.digest, problem: c.problem, backups: [...c.backups].sort() })), [{ digest: f.digest, problem: 'damaged', backups: [f.x.id, f.y.id].sort() }]);
      const q = [...(await loadQuarantine(f.repo)).entries()];
      assert.deepEqual(q.map((e) => e.digest), [f.digest]);
      // The CLI says which backups the chunk affects.
      const cli = await runCli(['verify', '--repo', f.repoDir, ...(f.encrypted ? ['--password-file', await pwFile(f.dir)] : [])]);
      assert.equal(cli.code, 1, cli.stderr);
      assert.match(cli.stdout, new RegExp(`DAMAGED chunk ${f.digest} .*used by backup\\(s\\) (${f.x.id}, ${f.y.id}|${f.y.id}, ${f.x.id})`));

      // An ordinary incremental backup of the same data: the quarantined copy counts as absent.
      const z = await backupFile(f.repo, f.volume, 'v', { pool, previous: f.y });
      assert.equal(z.stats.newChunks, 1, 'the damaged chunk is stored again');
      const rz = await verifyRepository(f.repo, { pool, backupId: z.manifest.id });
      assert.equal(rz.ok, true, JSON.stringify(rz.backups));
      await assertRestores(f.repo, z.manifest, f.dir);
      // Its fresh copy is the one the chunk map chooses now: x and y are whole again too.
      const all = await verifyRepository(f.repo, { pool });
      assert.equal(all.ok, true, JSON.stringify(all.backups));
      await assertRestores(f.repo, f.x, f.dir);
      // GC drops the damaged copy (a duplicate now) and, with it, its quarantine entry (Q5).
      const gc = await collectGarbage(f.repo);
      assert.equal(gc.quarantineReleased, 1);
      assert.equal((await listFilesRecursive(path.join(f.repoDir, 'quarantine')).catch(() => [])).length, 0);
      assert.equal((await verifyRepository(f.repo, { pool })).ok, true);
    });

    it('a full backup checks every chunk it reuses, once: a damaged one is quarantined and stored again', async () => {
      const f = await damagedFixture(encrypted);
      // No verify first: the damage is unknown. The volume holds x's data twice, so each stored
      // chunk is met twice but checked once.
      const twice = path.join(f.dir, 'twice.img');
      const data = await fs.readFile(f.volume);
      await writeVolume(twice, Buffer.concat([data, data]));
      const full = await backupChecked(f.repo, twice, 'twice');
      assert.equal(full.checkedChunks, f.x.chunkCount, 'each stored chunk checked once');
      assert.equal(full.damagedChunks, 1);
      assert.equal(full.stats.newChunks, 1);
      assert.deepEqual([...(await loadQuarantine(f.repo)).entries()].map((e) => e.digest), [f.digest]);
      const r = await verifyRepository(f.repo, { pool, backupId: full.manifest.id });
      assert.equal(r.ok, true, JSON.stringify(r.backups));
      await assertRestores(f.repo, full.manifest, f.dir);
      // Without the check, a full backup would have reused the damaged copy.
      const plain = await backupFile(f.repo, f.volume, 'v', { pool, full: true });
      assert.equal(plain.checkedChunks, 0);
    });

    it('a restore that meets a damaged chunk quarantines it; the pack put back and verified releases it', async () => {
      const f = await damagedFixture(encrypted);
      await assert.rejects(restoreBackup(f.repo, f.x, path.join(f.dir, 'x.img'), { pool }), (err: unknown) => err instanceof AppError && err.code === ErrorCode.ChunkCorrupt);
      assert.deepEqual([...(await loadQuarantine(f.repo)).entries()].map((e) => e.digest), [f.digest]);
      await fs.writeFile(f.packFile, f.packCopy); // the pack put back
      const r = await verifyRepository(f.repo, { pool });
      assert.equal(r.ok, true);
      assert.equal(r.released, 1);
      assert.equal([...(await loadQuarantine(f.repo)).entries()].length, 0);
      // Released: the next backup reuses the (sound) copy again.
      const z = await backupFile(f.repo, f.volume, 'v', { pool, previous: f.y });
      assert.equal(z.stats.newChunks, 0);
    });

    it('verify --repair --from <volume> stores the quarantined chunk again; every backup verifies clean', async () => {
      const f = await damagedFixture(encrypted);
      const repoArgs = ['--repo', f.repoDir, ...(f.encrypted ? ['--password-file', await pwFile(f.dir)] : [])];
      const noFrom = await runCli(['verify', ...repoArgs, '--repair']);
      assert.notEqual(noFrom.code, 0);
      assert.match(noFrom.stderr, /--from/);
      // A volume that lacks the data repairs nothing.
      const other = path.join(f.dir, 'other.img');
      await writeRandomFile(other, MiB, 999);
      const none = await runCli(['verify', ...repoArgs, '--repair', '--from', other, '--json']);
      assert.equal(none.code, 1, none.stderr);
      const nr = JSON.parse(none.stdout) as VerifyReport & { repair: { restoredChunks: number; stillWanted: string[] } };
      assert.equal(nr.repair.restoredChunks, 0);
      assert.deepEqual(nr.repair.stillWanted, [f.digest]);
      assert.deepEqual(badIds(nr), [f.x.id, f.y.id].sort());

      const res = await runCli(['verify', ...repoArgs, '--repair', '--from', other, '--from', f.volume, '--json']);
      assert.equal(res.code, 0, res.stdout + res.stderr);
      const rr = JSON.parse(res.stdout) as VerifyReport & { repair: { restoredChunks: number; wantedChunks: number } };
      assert.equal(rr.ok, true);
      assert.equal(rr.repair.wantedChunks, 1);
      assert.equal(rr.repair.restoredChunks, 1);
      const repo = await reopenRepo(f.repoDir, f.encrypted);
      await assertRestores(repo, f.x, f.dir);
      await assertRestores(repo, f.y, f.dir);
    });
  });
}

describe('quarantine and GC', () => {
  it('a mostly dead pack holding a quarantined live copy is kept, not rewritten', async () => {
    const dir = temp.make('gc');
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    const a = randomBytesSeeded(4 * MiB, 311);
    await writeVolume(path.join(dir, 'a.img'), a);
    await writeVolume(path.join(dir, 'b.img'), a.subarray(0, 512 * 1024)); // b keeps 1/8 of a's pack alive
    const ma = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    const mb = (await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool })).manifest;
    const [pack] = await listPacks(repoDir);
    const file = path.join(repoDir, pack!);
    const body = await fs.readFile(file);
    body[100]! ^= 0x01; // damages a's and b's first chunk
    await fs.writeFile(file, body);
    assert.equal((await verifyRepository(repo, { pool })).quarantined, 1);
    await deleteBackup(repo, ma.id);
    const gc = await collectGarbage(repo);
    assert.equal(gc.rewrittenPacks, 0, 'the damaged copy must not move out of the quarantine');
    assert.deepEqual(await listPacks(repoDir), [pack]);
    assert.ok(gc.deadBytes >= 3 * MiB, `deadBytes ${gc.deadBytes}`);
    assert.equal((await listFilesRecursive(repoDir)).filter((k) => k.startsWith(QUARANTINE_PREFIX)).length, 1);
    // A backup of b's data stores the chunk again; the next GC rewrites the pack.
    await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool, previous: mb });
    const gc2 = await collectGarbage(repo);
    assert.equal(gc2.rewrittenPacks, 1);
    assert.equal(gc2.quarantineReleased, 1);
    assert.equal((await verifyRepository(repo, { pool })).ok, true);
  });
});

/** A full backup that checks what it reuses (what `haven backup --full` and FullBackup run). */
async function backupChecked(repo: Repository, file: string, name: string): Promise<BackupResult> {
  const source = await FileVolumeSource.open(file);
  try {
    return await writeBackup(repo, source, { volume: { id: name, name }, full: true, checkReused: true, pool });
  } finally {
    await source.close();
  }
}

async function pwFile(dir: string): Promise<string> {
  const f = path.join(dir, 'password');
  await fs.writeFile(f, `${TEST_PASSWORD}\n`);
  return f;
}
