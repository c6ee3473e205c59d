/**
 * Repositories from before the volume digest (format 1, and format 2 with keyed BLAKE3) keep
 * working: their backups restore the old way, proved by the whole-volume SHA-256; their next backup
 * raises the repository to format 3, changing only the version's digit in the config; old and new
 * backups then live side by side. Two processes raising it at once leave the config one would.
 *
 * The old repositories are made with `makeOldFormat`: today's writer stores the packs, chunk map
 * and index exactly as before (only the manifest changed), so turning its manifest back into the
 * format-1 shape (volumeSha256 instead of volumeDigest) and putting back the config as init wrote
 * it gives what a build from before wrote.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import type { BackupManifest, BackupManifestV1 } from '../../src/engine/manifest.ts';
import type { Repository } from '../../src/engine/repository.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { backupFile, engineTestContext, initRepo, reopenRepo, TEST_PASSWORD } from '../helpers/repo.ts';
import { volumeDigestOfFile } from '../helpers/volume-digest.ts';
import { MiB, overwrite, randomBytesSeeded, runCliJson, sha256File, writeRandomFile } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-upgrade-');

interface OldRepo {
  dir: string;
  repoDir: string;
  vol: string;
  /** the config as init wrote it (format 1 or 2) */
  config: Buffer;
  old: BackupManifestV1;
  oldSha: string;
}

/** A repository and one backup of a 6 MiB volume, as a build from before the volume digest made them. */
async function makeOldFormat(encrypted: boolean, seed: number): Promise<OldRepo> {
  const dir = temp.make();
  const repoDir = path.join(dir, 'repo');
  const vol = path.join(dir, 'v.img');
  const oldSha = await writeRandomFile(vol, 6 * MiB + 4097, seed);
  const repo = await initRepo(repoDir, { encrypted });
  const config = Buffer.from(await repo.store.get('config'));
  const { manifest } = await backupFile(repo, vol, 'v', { pool });
  const { volumeDigest: _dropped, formatVersion: _two, ...rest } = manifest;
  const old: BackupManifestV1 = { ...rest, formatVersion: 1, volumeSha256: oldSha };
  await repo.writeManifest(old);
  await repo.store.put('config', config);
  return { dir, repoDir, vol, config, old, oldSha };
}

async function restoreFile(repo: Repository, m: BackupManifest, target: string) {
  return restoreBackup(repo, await repo.readManifest(m.id), target, { pool });
}

/** The config `makeOldFormat` started from, raised to format 3: only the version's digit differs. */
function raised(config: Buffer): string {
  const text = config.toString('utf8');
  const v = JSON.parse(text) as { version: number };
  const out = text.replace(`"version": ${v.version},`, '"version": 3,');
  assert.notEqual(out, text);
  return out;
}

describe('repositories from before the volume digest', () => {
  for (const encrypted of [false, true]) {
    it(`format ${encrypted ? 2 : 1} (${encrypted ? 'encrypted' : 'unencrypted'}): old backups restore by their SHA-256; the next backup raises the format, old and new restore and verify`, async () => {
      const o = await makeOldFormat(encrypted, 700 + Number(encrypted));
      const repo = await reopenRepo(o.repoDir, encrypted);
      assert.equal(repo.config.version, encrypted ? 2 : 1);
      assert.equal((await repo.readManifest(o.old.id)).formatVersion, 1);

      // Restored the old way: the whole-volume SHA-256 of the bytes written.
      const target = path.join(o.dir, 'old.img');
      const r = await restoreFile(repo, o.old, target);
      assert.deepEqual({ sha: 'volumeSha256' in r && r.volumeSha256, digest: 'volumeDigest' in r, verified: r.verified }, { sha: o.oldSha, digest: false, verified: true });
      assert.equal(await sha256File(target), o.oldSha);
      assert.equal((await verifyRepository(repo, { pool })).ok, true);
      // ... and that check still bites: a format-1 manifest recording another SHA-256 fails.
      await repo.writeManifest({ ...o.old, volumeSha256: 'f'.repeat(64) });
      await assert.rejects(restoreFile(repo, o.old, path.join(o.dir, 'bad.img')), (err: unknown) => err instanceof AppError && err.code === ErrorCode.RestoreMismatch && /does not match its SHA-256/.test(err.message));
      await repo.writeManifest(o.old);
      assert.deepEqual(Buffer.from(await repo.store.get('config')), o.config, 'restores and verify leave the format as it was');

      // The next backup, an incremental of the old one: the repository is raised to format 3.
      await overwrite(o.vol, 2 * MiB + 5, randomBytesSeeded(100 * 1024, 701));
      const next = await backupFile(repo, o.vol, 'v', { pool, previous: o.old });
      assert.equal(next.manifest.formatVersion, 2);
      assert.equal(next.manifest.parentId, o.old.id);
      assert.ok(next.stats.newBytes <= 3 * 64 * 1024, `only the changed chunks are new (${next.stats.newBytes} bytes)`);
      assert.equal(next.manifest.volumeDigest, await volumeDigestOfFile(repo, o.vol));
      assert.equal(Buffer.from(await repo.store.get('config')).toString('utf8'), raised(o.config));
      assert.equal(repo.config.version, 3);

      // Opened afresh, both backups restore, each its own way, and verify.
      const again = await reopenRepo(o.repoDir, encrypted);
      assert.equal(again.config.version, 3);
      const r1 = await restoreFile(again, o.old, target);
      assert.equal('volumeSha256' in r1 && r1.volumeSha256, o.oldSha);
      assert.equal(await sha256File(target), o.oldSha);
      const newTarget = path.join(o.dir, 'new.img');
      const r2 = await restoreFile(again, next.manifest, newTarget);
      assert.equal('volumeDigest' in r2 && r2.volumeDigest, next.manifest.volumeDigest);
      assert.equal(await sha256File(newTarget), await sha256File(o.vol));
      const report = await verifyRepository(again, { pool });
      assert.equal(report.ok, true, JSON.stringify(report.backups));
      assert.equal(report.backups.length, 2);

      // haven list says which proof each backup carries.
      const pw = path.join(o.dir, 'password');
      await fs.writeFile(pw, TEST_PASSWORD);
      const listed = await runCliJson<{ id: string; volumeDigest: string | null; volumeSha256?: string }[]>(['list', '--repo', o.repoDir, '--json', ...(encrypted ? ['--password-file', pw] : [])]);
      const byId = new Map(listed.map((l) => [l.id, l]));
      assert.deepEqual(byId.get(o.old.id), { ...byId.get(o.old.id), volumeDigest: null, volumeSha256: o.oldSha });
      assert.equal(byId.get(next.manifest.id)!.volumeDigest, next.manifest.volumeDigest);
      assert.equal(byId.get(next.manifest.id)!.volumeSha256, undefined);
    });
  }

  it('two processes backing up into a format-1 repository at once raise it once: the config is what one raise gives, every backup restores', async () => {
    const o = await makeOldFormat(false, 710);
    const [a, b] = [await reopenRepo(o.repoDir, false), await reopenRepo(o.repoDir, false)];
    const volB = path.join(o.dir, 'b.img');
    const shaB = await writeRandomFile(volB, 3 * MiB, 711);
    const [ra, rb] = await Promise.all([backupFile(a, o.vol, 'v', { pool }), backupFile(b, volB, 'b', { pool })]);
    assert.equal(Buffer.from(await a.store.get('config')).toString('utf8'), raised(o.config));
    const fresh = await reopenRepo(o.repoDir, false);
    for (const [m, sha] of [[ra.manifest, o.oldSha], [rb.manifest, shaB], [o.old, o.oldSha]] as const) {
      const target = path.join(o.dir, `r-${m.id}.img`);
      await restoreFile(fresh, m, target);
      assert.equal(await sha256File(target), sha);
    }
  });

  it('a repository of a format newer than this build reads is refused on open, naming both versions, and left as it was', async () => {
    const o = await makeOldFormat(false, 720);
    const text = Buffer.from(o.config.toString('utf8').replace(/"version": \d+/, '"version": 4'));
    await fs.writeFile(path.join(o.repoDir, 'config'), text);
    await assert.rejects(reopenRepo(o.repoDir, false), /format version 4, newer than this Haven reads \(up to 3\): upgrade Haven/);
    assert.deepEqual(await fs.readFile(path.join(o.repoDir, 'config')), text);
  });
});
