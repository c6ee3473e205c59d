/**
 * G4 across GC runs: a pack's dead bytes are its size minus its live chunks, whatever earlier runs
 * dropped from the chunk map. Two deletions, each leaving a pack below the rewrite threshold, are
 * reclaimed together by the second run.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { collectGarbage, deleteBackup, REWRITE_DEAD_RATIO, type GcReport } from '../../src/engine/garbage-collector.ts';
import { DEFAULT_CHUNK_SIZE } from '../../src/engine/repository.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { backupFile, engineTestContext, initRepo, restoreTo } from '../helpers/repo.ts';
import { dirBytes, listPacks, MiB, randomBytesSeeded, runCli, writeVolume } from '../helpers/volumes.ts';
import { digestOfManifest, volumeDigestOfFile } from '../helpers/volume-digest.ts';

const { temp, pool } = engineTestContext('haven-gc-dead-');

describe('gc dead space across runs (G4)', () => {
  it('two deletions, each below the rewrite threshold alone, are reclaimed by the second run', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    const data = randomBytesSeeded(16 * MiB, 401);
    // a: the whole 16 MiB (one pack); m: its first 14 MiB; k: its first 12 MiB. Deleting a leaves
    // 2 MiB (12.5 %) dead, deleting m 2 MiB more: 25 % together, over the 20 % threshold.
    await writeVolume(path.join(dir, 'a.img'), data);
    await writeVolume(path.join(dir, 'm.img'), data.subarray(0, 14 * MiB));
    await writeVolume(path.join(dir, 'k.img'), data.subarray(0, 12 * MiB));
    const a = (await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool })).manifest;
    const m = (await backupFile(repo, path.join(dir, 'm.img'), 'm', { pool })).manifest;
    const k = (await backupFile(repo, path.join(dir, 'k.img'), 'k', { pool })).manifest;
    const packs = await listPacks(repoDir);
    assert.equal(packs.length, 1);
    assert.ok(2 / 16 < REWRITE_DEAD_RATIO && 4 / 16 > REWRITE_DEAD_RATIO);

    await deleteBackup(repo, a.id);
    const first = await collectGarbage(repo);
    assert.equal(first.deletedChunks, (2 * MiB) / DEFAULT_CHUNK_SIZE);
    assert.equal(first.rewrittenPacks, 0, 'below the threshold: the pack stays');
    assert.deepEqual(await listPacks(repoDir), packs);
    // Header entries are estimated (a compressed header is a little smaller): within 16 KiB.
    assert.ok(Math.abs(first.deadBytes - 2 * MiB) < 16 * 1024, `deadBytes after the first run: ${first.deadBytes}`);

    await deleteBackup(repo, m.id);
    const before = await dirBytes(repoDir);
    const cli = await runCli(['gc', '--repo', repoDir, '--json']);
    assert.equal(cli.code, 0, cli.stderr);
    const second = JSON.parse(cli.stdout) as GcReport;
    for (const key of ['deferred', 'backups', 'deletedChunks', 'deletedPacks', 'rewrittenPacks', 'reclaimedBytes', 'repositoryBytesBefore', 'repositoryBytesAfter', 'deadBytes']) {
      assert.ok(key in second, `gc --json lacks ${key}`);
    }
    assert.equal(second.deletedChunks, (2 * MiB) / DEFAULT_CHUNK_SIZE);
    assert.equal(second.rewrittenPacks, 1, 'dead space from both runs counts: the pack is rewritten');
    assert.ok(second.reclaimedBytes >= 4 * MiB, `reclaimed ${second.reclaimedBytes}`);
    assert.ok(second.deadBytes < 64 * 1024, `deadBytes after the rewrite: ${second.deadBytes}`);
    const after = await dirBytes(repoDir);
    assert.ok(before - after >= 4 * MiB, `the repository shrank by only ${before - after} bytes`);
    assert.ok(!(await listPacks(repoDir)).includes(packs[0]!));

    // The remaining backup restores bit-identical and verifies; a third run has nothing to do.
    const target = path.join(dir, 'k.restored');
    await restoreTo(repo, k.id, target, pool);
    assert.equal(await volumeDigestOfFile(repo, target), digestOfManifest(k));
    assert.equal((await verifyRepository(repo, { pool })).ok, true);
    const third = await collectGarbage(repo);
    assert.equal(third.rewrittenPacks + third.deletedPacks + third.reclaimedBytes, 0);
  });
});
