/**
 * verify finds damage and names exactly the backups it touches: a flipped byte inside a stored
 * chunk, a deleted pack, a damaged index segment, a damaged manifest. Restores of damaged backups
 * fail loudly; undamaged backups stay ok and restorable.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import { DIGEST_BYTES } from '../../src/engine/chunk-digest.ts';
import type { BackupManifest } from '../../src/engine/manifest.ts';
import { ENTRY_BYTES, parsePackTrailer, PACK_TRAILER_BYTES, readEntry } from '../../src/engine/pack-format.ts';
import type { Repository } from '../../src/engine/repository.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { verifyRepository, type VerifyReport } from '../../src/engine/verifier.ts';
import { backupFile, initRepo, reopenRepo, TEST_PASSWORD, engineTestContext } from '../helpers/repo.ts';
import { cliErrorMessage, listPacks, MiB, overwrite, randomBytesSeeded, runCli, writeRandomFile } from '../helpers/volumes.ts';
import { digestOfManifest, volumeDigestOfFile } from '../helpers/volume-digest.ts';

const { temp, pool } = engineTestContext('haven-verify-');

interface Fixture {
  dir: string;
  repoDir: string;
  repo: Repository;
  encrypted: boolean;
  passwordFile: string;
  /** x: volume 1; y: incremental of volume 1 with its end rewritten (shares x's first chunks); z: volume 2. */
  x: BackupManifest;
  y: BackupManifest;
  z: BackupManifest;
  /** The packs each backup wrote (relative paths under the repository). */
  packsOf: Map<string, string[]>;
}

async function buildFixture(encrypted: boolean): Promise<Fixture> {
  const dir = temp.make(encrypted ? 'enc' : 'plain');
  const repoDir = path.join(dir, 'repo');
  const repo = await initRepo(repoDir, { encrypted });
  const passwordFile = path.join(dir, 'password');
  await fs.writeFile(passwordFile, `${TEST_PASSWORD}\n`);
  const v1 = path.join(dir, 'v1.img');
  const v2 = path.join(dir, 'v2.img');
  await writeRandomFile(v1, 8 * MiB, 101);
  await writeRandomFile(v2, 8 * MiB, 102);
  const packsOf = new Map<string, string[]>();
  const tracked = async (f: () => Promise<BackupManifest>): Promise<BackupManifest> => {
    const before = new Set(await listPacks(repoDir));
    const m = await f();
    packsOf.set(m.id, (await listPacks(repoDir)).filter((p) => !before.has(p)));
    return m;
  };
  const x = await tracked(async () => (await backupFile(repo, v1, 'v1', { pool })).manifest);
  await overwrite(v1, 6 * MiB, randomBytesSeeded(2 * MiB, 103));
  const y = await tracked(async () => (await backupFile(repo, v1, 'v1', { pool, previous: x })).manifest);
  const z = await tracked(async () => (await backupFile(repo, v2, 'v2', { pool })).manifest);
  for (const m of [x, y, z]) assert.ok(packsOf.get(m.id)!.length >= 1, `backup ${m.id} wrote no pack`);
  return { dir, repoDir, repo, encrypted, passwordFile, x, y, z, packsOf };
}

/** The first entry of a pack's own header: the chunk stored at offset 0. */
async function firstEntryOfPack(repo: Repository, file: string): Promise<{ digest: Buffer; length: number }> {
  const body = await fs.readFile(file);
  const headerLen = parsePackTrailer(body.subarray(body.length - PACK_TRAILER_BYTES));
  const header = repo.decode(body.subarray(body.length - PACK_TRAILER_BYTES - headerLen, body.length - PACK_TRAILER_BYTES), 'pack header');
  assert.ok(header.length >= ENTRY_BYTES);
  const e = readEntry(header, 0);
  assert.equal(e.offset, 0);
  return { digest: Buffer.from(header.subarray(e.digestOffset, e.digestOffset + DIGEST_BYTES)), length: e.length };
}

/** Does backup `m` reference the chunk with this digest? Read from its own index. */
async function references(repo: Repository, m: BackupManifest, digest: Buffer): Promise<boolean> {
  for (const ref of m.indexSegments) {
    const seg = await repo.readIndexSegment(ref, m.id);
    for (let o = 0; o < seg.length; o += DIGEST_BYTES) if (digest.equals(seg.subarray(o, o + DIGEST_BYTES))) return true;
  }
  return false;
}

function verdict(r: VerifyReport, id: string) {
  const v = r.backups.find((b) => b.id === id);
  assert.ok(v, `backup ${id} missing from the verify report`);
  return v;
}

function cliRepoArgs(f: Fixture): string[] {
  return ['--repo', f.repoDir, ...(f.encrypted ? ['--password-file', f.passwordFile] : [])];
}

for (const encrypted of [false, true]) {
  describe(`verify (${encrypted ? 'encrypted' : 'unencrypted'})`, () => {
    it('a clean repository verifies ok, through the engine and the CLI', async () => {
      const f = await buildFixture(encrypted);
      const r = await verifyRepository(f.repo, { pool });
      assert.equal(r.ok, true);
      assert.equal(r.backups.length, 3);
      assert.ok(r.backups.every((b) => b.ok && b.missingChunks === 0 && b.damagedChunks === 0));
      assert.equal(r.damagedChunks, 0);
      assert.equal(r.missingChunks, 0);
      assert.ok(r.checkedChunks >= 128 + 32 + 128);
      const cli = await runCli(['verify', ...cliRepoArgs(f), '--json']);
      assert.equal(cli.code, 0, cli.stderr);
      assert.equal((JSON.parse(cli.stdout) as VerifyReport).ok, true);
    });

    it('one flipped byte inside a stored chunk damages exactly the backups referencing it', async () => {
      const f = await buildFixture(encrypted);
      const [pack] = f.packsOf.get(f.x.id)!;
      const packFile = path.join(f.repoDir, pack!);
      const first = await firstEntryOfPack(f.repo, packFile);
      assert.ok(first.length > 100, 'the first blob must be longer than 100 bytes');
      // Who references that chunk, from the indexes themselves: x and y (shared start), not z.
      const expected = [];
      for (const m of [f.x, f.y, f.z]) if (await references(f.repo, m, first.digest)) expected.push(m.id);
      assert.deepEqual(expected.sort(), [f.x.id, f.y.id].sort());

      const body = await fs.readFile(packFile);
      body[100]! ^= 0x01;
      await fs.writeFile(packFile, body);

      const repo = await reopenRepo(f.repoDir, encrypted);
      const r = await verifyRepository(repo, { pool });
      assert.equal(r.ok, false);
      assert.equal(r.damagedChunks, 1);
      assert.equal(r.missingChunks, 0);
      assert.deepEqual(r.backups.filter((b) => !b.ok).map((b) => b.id).sort(), expected.sort());
      for (const id of expected) {
        const v = verdict(r, id);
        assert.equal(v.damagedChunks, 1);
        assert.equal(v.missingChunks, 0);
        assert.ok(v.problems.some((p) => /damaged/.test(p)), v.problems.join('; '));
      }
      const vz = verdict(r, f.z.id);
      assert.equal(vz.ok, true);
      assert.deepEqual(vz.problems, []);

      // Verifying one backup at a time gives the same verdicts.
      assert.equal((await verifyRepository(repo, { pool, backupId: f.z.id })).ok, true);
      assert.equal((await verifyRepository(repo, { pool, backupId: f.x.id })).ok, false);

      // The CLI: exit 1, the damaged backups named in text and JSON, the undamaged one not.
      const text = await runCli(['verify', ...cliRepoArgs(f)]);
      assert.equal(text.code, 1, text.stderr);
      for (const id of expected) assert.match(text.stdout, new RegExp(`DAMAGED backup ${id}`));
      assert.doesNotMatch(text.stdout, new RegExp(f.z.id));
      const json = await runCli(['verify', ...cliRepoArgs(f), '--json']);
      assert.equal(json.code, 1, json.stderr);
      const jr = JSON.parse(json.stdout) as VerifyReport;
      assert.equal(jr.ok, false);
      assert.deepEqual(jr.backups.filter((b) => !b.ok).map((b) => b.id).sort(), expected.sort());
      assert.equal(jr.backups.find((b) => b.id === f.z.id)?.ok, true);
      const one = await runCli(['verify', ...cliRepoArgs(f), '--backup', f.z.id, '--json']);
      assert.equal(one.code, 0, one.stderr);

      // Restoring a damaged backup fails with a clear error; the undamaged one restores.
      await assert.rejects(restoreBackup(repo, f.x, path.join(f.dir, 'x.engine'), { pool }), (err: unknown) => err instanceof AppError && err.code === ErrorCode.ChunkCorrupt && err.message.includes(f.x.id));
      for (const m of [f.x, f.y]) {
        const res = await runCli(['restore', ...cliRepoArgs(f), '--backup', m.id, '--target', path.join(f.dir, `${m.id}.img`)]);
        assert.match(cliErrorMessage(res), /damaged/);
      }
      const ok = await runCli(['restore', ...cliRepoArgs(f), '--backup', f.z.id, '--target', path.join(f.dir, 'z.img'), '--json']);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(await volumeDigestOfFile(f.repo, path.join(f.dir, 'z.img')), digestOfManifest(f.z));
    });

    it('a deleted pack shows as missing chunks of exactly the backups that used it', async () => {
      const f = await buildFixture(encrypted);
      const zPacks = f.packsOf.get(f.z.id)!;
      for (const p of zPacks) await fs.rm(path.join(f.repoDir, p));
      const r = await verifyRepository(f.repo, { pool });
      assert.equal(r.ok, false);
      const vz = verdict(r, f.z.id);
      assert.equal(vz.ok, false);
      assert.equal(vz.missingChunks, f.z.chunkCount);
      assert.equal(vz.damagedChunks, 0);
      assert.ok(vz.problems.some((p) => /missing/.test(p)), vz.problems.join('; '));
      assert.equal(r.missingChunks, f.z.chunkCount);
      assert.equal(verdict(r, f.x.id).ok, true);
      assert.equal(verdict(r, f.y.id).ok, true);

      const json = await runCli(['verify', ...cliRepoArgs(f), '--json']);
      assert.equal(json.code, 1);
      const jr = JSON.parse(json.stdout) as VerifyReport;
      assert.deepEqual(jr.backups.filter((b) => !b.ok).map((b) => b.id), [f.z.id]);
      assert.equal(jr.backups.find((b) => b.id === f.z.id)?.missingChunks, f.z.chunkCount);

      await assert.rejects(restoreBackup(f.repo, f.z, path.join(f.dir, 'z.img'), { pool }), (err: unknown) => err instanceof AppError && err.code === ErrorCode.ChunkMissing);
      const res = await runCli(['restore', ...cliRepoArgs(f), '--backup', f.z.id, '--target', path.join(f.dir, 'z2.img')]);
      assert.match(cliErrorMessage(res), /missing/);
    });

    it('a damaged index segment or manifest is reported against its backup', async () => {
      const f = await buildFixture(encrypted);
      const seg = path.join(f.repoDir, ...f.y.indexSegments[0]!.key.split('/'));
      const segBody = await fs.readFile(seg);
      segBody[segBody.length >> 1]! ^= 0x40;
      await fs.writeFile(seg, segBody);
      const man = path.join(f.repoDir, 'manifests', f.z.id);
      const manBody = await fs.readFile(man);
      manBody[manBody.length >> 1]! ^= 0x40;
      await fs.writeFile(man, manBody);

      const r = await verifyRepository(f.repo, { pool });
      assert.equal(r.ok, false);
      assert.deepEqual(r.backups.filter((b) => !b.ok).map((b) => b.id).sort(), [f.y.id, f.z.id].sort());
      assert.ok(verdict(r, f.y.id).problems.some((p) => p.includes(f.y.indexSegments[0]!.key)), verdict(r, f.y.id).problems.join('; '));
      assert.ok(verdict(r, f.z.id).problems.length > 0);
      assert.equal(verdict(r, f.x.id).ok, true);
      const cli = await runCli(['verify', ...cliRepoArgs(f)]);
      assert.equal(cli.code, 1);
      assert.match(cli.stdout, new RegExp(`DAMAGED backup ${f.y.id}`));
      assert.match(cli.stdout, new RegExp(`DAMAGED backup ${f.z.id}`));
    });
  });
}
