/**
 * Child-process helper (not a test file): runs `count` engine backups of a volume, aborting each
 * through its AbortSignal once `abortAfterBytes` have been processed, and prints one JSON line per
 * attempt: { attempt, error: { name, code, message } | null }.
 *
 * It runs in its own process because cancelling a backup can end in an uncaught exception from the
 * worker pool (see test/engine/cancel.test.ts), which must not take the test runner down with it.
 *
 * usage: node abort-backups.ts <repo dir> <volume file> <count> <abortAfterBytes>
 */
import { writeBackup } from '../../src/engine/backup-writer.ts';
import { FileVolumeSource } from '../../src/engine/volume-source.ts';
import { ChunkWorkerPool } from '../../src/engine/worker-pool.ts';
import { reopenRepo } from './repo.ts';

const [repoDir, vol, countArg, afterArg] = process.argv.slice(2);
if (!repoDir || !vol || !countArg || !afterArg) throw new Error('usage: abort-backups.ts <repo> <volume> <count> <abortAfterBytes>');
const count = Number(countArg);
const abortAfter = Number(afterArg);

const repo = await reopenRepo(repoDir, false);
const pool = new ChunkWorkerPool(2);
try {
  for (let attempt = 0; attempt < count; attempt++) {
    const ac = new AbortController();
    const source = await FileVolumeSource.open(vol);
    let error: { name: string; code: unknown; message: string } | null = null;
    try {
      await writeBackup(repo, source, {
        volume: { id: 'vol', name: 'vol' },
        pool,
        signal: ac.signal,
        onProgress: ({ doneBytes }) => {
          if (doneBytes >= abortAfter && !ac.signal.aborted) ac.abort(new Error('stop'));
        },
      });
    } catch (err) {
      const e = err as { name?: unknown; code?: unknown; message?: unknown };
      error = { name: String(e.name), code: e.code, message: String(e.message) };
    } finally {
      await source.close();
    }
    process.stdout.write(`${JSON.stringify({ attempt, error })}\n`);
  }
} finally {
  await pool.close();
}
