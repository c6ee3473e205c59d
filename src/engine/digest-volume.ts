/**
 * digestVolume: the volume digest of a volume as it is now, as a backup of it into a repository
 * would record it (`haven digest`), without storing anything: a disk can be compared with a backup
 * without restoring it. Chunks are named in the workers, batch by batch, and their digests fed to
 * the root in volume order; reading stays one batch per worker ahead.
 */
import { AppError, ErrorCode, throwIfAborted } from '../domain/errors.ts';
import type { Repository } from './repository.ts';
import { VolumeDigest } from './volume-digest.ts';
import type { VolumeSource } from './volume-source.ts';
import type { ChunkWorkerPool } from './worker-pool.ts';

export async function digestVolume(repo: Repository, source: VolumeSource, opts: { pool: ChunkWorkerPool; signal?: AbortSignal | undefined }): Promise<string> {
  const chunkSize = repo.config.chunkSizeBytes;
  const size = source.sizeBytes;
  const root = new VolumeDigest({ sizeBytes: size, chunkSizeBytes: chunkSize, alg: repo.chunkDigest.alg });
  const batchBytes = Math.max(1, Math.floor((8 * 1024 * 1024) / chunkSize)) * chunkSize;
  const depth = opts.pool.threads + 1;
  const free = Array.from({ length: Math.min(depth, Math.ceil(size / batchBytes)) }, () => new SharedArrayBuffer(batchBytes));
  const inFlight: Promise<{ digests: Uint8Array; sab: SharedArrayBuffer }>[] = [];
  const settleOldest = async (): Promise<void> => {
    const done = await inFlight.shift()!;
    root.update(done.digests);
    free.push(done.sab);
  };
  try {
    for (let pos = 0; pos < size; pos += batchBytes) {
      if (!free.length) await settleOldest();
      throwIfAborted(opts.signal);
      const sab = free.pop()!;
      const len = Math.min(batchBytes, size - pos);
      let got: number;
      try {
        got = await source.read(new Uint8Array(sab, 0, len), len, pos);
      } catch (err) {
        throw new AppError(ErrorCode.VolumeUnreadable, `reading the volume at byte ${pos} failed: ${(err as Error).message}`, { cause: err });
      }
      if (got !== len) throw new AppError(ErrorCode.VolumeChanged, `the volume shrank while it was being read (short read at byte ${pos + got})`);
      const p = opts.pool.hash({ sab, offset: 0, length: len, chunkSizeBytes: chunkSize, digest: repo.chunkDigest }, opts.signal).then((digests) => ({ digests, sab }));
      p.catch(() => undefined); // awaited in order below
      inFlight.push(p);
    }
    while (inFlight.length) await settleOldest();
  } finally {
    await Promise.allSettled(inFlight); // no worker still writes digests of a slot when we return
  }
  return root.digestHex();
}
