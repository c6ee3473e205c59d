/**
 * Cancelling a running backup (Ctrl-C on the CLI, an AbortSignal in the engine): no backup appears,
 * the repository stays consistent, and gc removes what the cancelled backup wrote.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { before, describe, it } from 'node:test';
import { ErrorCode, isAppError } from '../../src/domain/errors.ts';
import { collectGarbage } from '../../src/engine/garbage-collector.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { ChunkWorkerPool } from '../../src/engine/worker-pool.ts';
import type { BackupManifest } from '../../src/engine/manifest.ts';
import type { Repository } from '../../src/engine/repository.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { backupFile, initRepo, engineTestContext } from '../helpers/repo.ts';
import { collectCli, listFilesRecursive, listPacks, MiB, sleep, spawnCli, writeRandomFile, type CliResult } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-cancel-');

interface Setup {
  dir: string;
  repoDir: string;
  repo: Repository;
  keep: BackupManifest;
  vol: string;
  packsBefore: Set<string>;
}

async function setup(volumeBytes: number): Promise<Setup> {
  const dir = temp.make();
  const repoDir = path.join(dir, 'repo');
  // Small packs: the backup has written several before it is interrupted.
  const repo = await initRepo(repoDir, { encrypted: false, packTargetBytes: 4 * MiB });
  await writeRandomFile(path.join(dir, 'keep.img'), 4 * MiB, 1);
  const keep = (await backupFile(repo, path.join(dir, 'keep.img'), 'keep', { pool })).manifest;
  const vol = path.join(dir, 'vol.img');
  await writeRandomFile(vol, volumeBytes, 2);
  return { dir, repoDir, repo, keep, vol, packsBefore: new Set(await listPacks(repoDir)) };
}

/** Starts a CLI backup and sends SIGINT once it has written `packs` new packs. */
async function interruptedCliBackup(s: Setup, packs: number): Promise<{ res: CliResult; seen: number }> {
  const before = new Set(await listPacks(s.repoDir));
  const child = spawnCli(['backup', '--repo', s.repoDir, '--volume', s.vol, '--json']);
  const done = collectCli(child, 120_000);
  let seen = 0;
  for (let i = 0; i < 6000 && child.exitCode === null; i++) {
    seen = (await listPacks(s.repoDir)).filter((p) => !before.has(p)).length;
    if (seen >= packs) break;
    await sleep(5);
  }
  child.kill('SIGINT');
  return { res: await done, seen };
}

describe('cancelling a backup', () => {
  it('Ctrl-C during a CLI backup: non-zero exit, no backup, consistent repository, leftovers collected', async () => {
    const s = await setup(128 * MiB);
    const { res, seen } = await interruptedCliBackup(s, 2);
    assert.ok(seen >= 2, 'the backup finished before it could be interrupted');
    assert.notEqual(res.code, 0, `the interrupted backup exited 0: ${res.stdout}`);
    assert.equal(res.stdout, '');
    assert.deepEqual(await s.repo.listBackupIds(), [s.keep.id]);
    const v = await verifyRepository(s.repo, { pool });
    assert.equal(v.ok, true);
    const g = await collectGarbage(s.repo);
    assert.ok(g.orphanPacksDeleted >= 2, `${g.orphanPacksDeleted} orphan packs deleted`);
    assert.deepEqual(new Set(await listPacks(s.repoDir)), s.packsBefore);
    assert.deepEqual((await listFilesRecursive(s.repoDir)).filter((f) => f.startsWith(`locks${path.sep}`)), []);
    assert.equal((await verifyRepository(s.repo, { pool })).ok, true);
  });

  it(
    'Ctrl-C always ends a CLI backup with exit 130 and the one line "haven: error: backup cancelled"',
    async () => {
      const s = await setup(64 * MiB);
      const outcomes: string[] = [];
      for (let i = 0; i < 5; i++) {
        const { res } = await interruptedCliBackup(s, 1);
        outcomes.push(`exit ${res.code}: ${JSON.stringify(res.stderr)}`);
      }
      assert.deepEqual(outcomes, Array.from({ length: 5 }, () => 'exit 130: "haven: error: backup cancelled\\n"'));
    },
  );

  it(
    'an engine backup aborted through its signal always rejects with AppError(Cancelled), and never crashes the process',
    async () => {
      const s = await setup(32 * MiB);
      const script = fileURLToPath(new URL('../helpers/abort-backups.ts', import.meta.url));
      const child = spawn(process.execPath, [script, s.repoDir, s.vol, '10', String(8 * MiB)], { stdio: ['ignore', 'pipe', 'pipe'] });
      const res = await collectCli(child, 120_000);
      const lines = res.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { attempt: number; error: { name: string; code: unknown; message: string } | null });
      assert.doesNotMatch(res.stderr, /Unexpected message from Worker/);
      assert.equal(res.code, 0, res.stderr);
      assert.equal(lines.length, 10);
      for (const l of lines) assert.equal(l.error?.code, 'CANCELLED', `attempt ${l.attempt}: ${JSON.stringify(l.error)}`);
    },
  );
});

describe('cancelling a restore', () => {
  it('ends with the cancellation when it strikes while the next index segment is read (no wait for slots the failed batches hold)', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true });
    const vol = path.join(dir, 'vol.img');
    await writeRandomFile(vol, 48 * MiB, 7); // 768 chunks: 6 batches of 128
    const { manifest } = await backupFile(repo, vol, 'vol', { pool });
    // The same backup with its index split in two segments, as a volume of more than 2^20 chunks
    // has: the first exactly as many batches as the restore has slots, so that all are in flight
    // when the restore moves on to the second.
    const digests = await repo.readIndexSegment(manifest.indexSegments[0]!, 'test');
    const cut = 4 * 128 * 32;
    const a = await repo.writeIndexSegment(`indexes/${manifest.id}/split-a`, digests.subarray(0, cut));
    const b = await repo.writeIndexSegment(`indexes/${manifest.id}/split-b`, digests.subarray(cut));
    const split: BackupManifest = { ...manifest, indexSegments: [a.ref, b.ref] };

    const onePool = new ChunkWorkerPool(1); // 4 batch slots
    const ac = new AbortController();
    const get = repo.store.get.bind(repo.store);
    repo.store.get = async (key, o) => {
      if (key === b.ref.key) {
        ac.abort(); // while the restore reads segment b, every batch of segment a is in flight...
        await sleep(800); // ...and fails before the read is done
      } else if (key.startsWith('packs/')) {
        await sleep(300); // slow reads: batches hold their slots a while
      }
      return get(key, o);
    };
    try {
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        restoreBackup(repo, split, path.join(dir, 'out.img'), { pool: onePool, signal: ac.signal }).then(
          () => 'finished',
          (e: unknown) => (isAppError(e, ErrorCode.Cancelled) ? 'cancelled' : `failed: ${String(e)}`),
        ),
        new Promise<string>((r) => (timer = setTimeout(() => r('hung'), 20_000))),
      ]);
      clearTimeout(timer);
      assert.equal(outcome, 'cancelled');
    } finally {
      repo.store.get = get;
      await onePool.close();
    }
  });
});
