/**
 * restoreBackup: writes a backup back to a file or block device, bit-identical, and proves it by
 * recomputing the whole-volume SHA-256 before reporting success.
 *
 * A regular-file target is created (or truncated) and sized first, so holes stay holes (sparse); a
 * block device gets zeros written over holes, since it may hold old data. Chunks are fetched from
 * packs in coalesced ranges, decoded and digest-checked in workers, and written in volume order.
 */
import { promises as fs } from 'node:fs';
import { AppError, asCancelledIfAborted, ErrorCode, isAppError, throwIfAborted } from '../domain/errors.ts';
import { ObjectNotFoundError } from '../storage/object-store.ts';
import { DIGEST_BYTES, digestHex, isZeroDigest } from './chunk-digest.ts';
import type { ChunkMap } from './chunk-map.ts';
import type { BackupManifest } from './manifest.ts';
import { packKey } from './pack-format.ts';
import type { Repository } from './repository.ts';
import { blockDeviceSize } from './volume-source.ts';
import { ChunkWorkerPool } from './worker-pool.ts';
import type { Progress } from './backup-writer.ts';
import { RepositoryLock } from './locks.ts';
import { StreamHasher } from './stream-hasher.ts';
import { releaseGarbage } from './memory.ts';

export interface RestoreOptions {
  pool?: ChunkWorkerPool;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** A loaded chunk map, when the caller has one. */
  map?: ChunkMap;
  /**
   * fsync the target before reporting success. Always done for block devices (a VM disk must be on
   * the device, not in the buffer cache, when the restore says it is done); for files only on request,
   * like cp, restic and borg (the data is in the page cache and written back by the kernel).
   */
  fsync?: boolean;
  /** Read gap (bytes) under which two chunk reads from one pack are merged into one. */
  coalesceGapBytes?: number;
}

export interface RestoreResult {
  backupId: string;
  sizeBytes: number;
  volumeSha256: string;
  writtenBytes: number;
  durationMs: number;
}

interface Target {
  fh: fs.FileHandle;
  sparse: boolean;
}

async function openTarget(path: string, sizeBytes: number): Promise<Target> {
  const st = await fs.stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw new AppError(ErrorCode.TargetUnwritable, `cannot use restore target ${path}: ${err.message}`, { cause: err });
  });
  try {
    if (st?.isBlockDevice()) {
      const devSize = await blockDeviceSize(st.rdev);
      if (devSize < sizeBytes) throw new AppError(ErrorCode.TargetUnwritable, `block device ${path} holds ${devSize} bytes, the backup needs ${sizeBytes}`);
      return { fh: await fs.open(path, 'r+'), sparse: false };
    }
    if (st && !st.isFile()) throw new AppError(ErrorCode.TargetUnwritable, `restore target ${path} is neither a file nor a block device`);
    const fh = await fs.open(path, 'w', 0o600);
    await fh.truncate(sizeBytes);
    return { fh, sparse: true };
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw new AppError(ErrorCode.TargetUnwritable, `cannot write restore target ${path}: ${(err as Error).message}`, { cause: err });
  }
}

interface ReadRun {
  packNo: number;
  offset: number;
  length: number;
}

export async function restoreBackup(repo: Repository, manifest: BackupManifest, targetPath: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  // A read lock keeps GC from moving packs under this restore (docs/locking.md).
  const lock = await RepositoryLock.acquire(repo.store, 'read', { backupId: manifest.id });
  try {
    return await restoreLocked(repo, manifest, targetPath, opts);
  } finally {
    await lock.release();
  }
}

async function restoreLocked(repo: Repository, manifest: BackupManifest, targetPath: string, opts: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const signal = opts.signal;
  throwIfAborted(signal);
  let map = opts.map ?? (await repo.loadChunkMap()).map;
  // A GC that ran meanwhile may have rewritten a pack: it writes the new chunk map before deleting
  // the old pack (G4), so a chunk not found is looked up once more in a freshly loaded chunk map.
  let mapGeneration = 0;
  let reloading: Promise<void> | null = null;
  const refreshMap = async (seenGeneration: number): Promise<void> => {
    if (mapGeneration !== seenGeneration) return;
    reloading ??= repo.loadChunkMap().then((r) => {
      map = r.map;
      mapGeneration++;
      reloading = null;
    });
    await reloading;
  };
  const fetchBatch = async (digests: Uint8Array, firstChunk: number): Promise<() => Promise<void>> => {
    const gen = mapGeneration;
    try {
      return await fetchBatchFrom(map, digests, firstChunk);
    } catch (err) {
      if (!isAppError(err, ErrorCode.ChunkMissing)) throw err;
      await refreshMap(gen);
      return fetchBatchFrom(map, digests, firstChunk);
    }
  };
  const ownPool = opts.pool === undefined;
  const pool = opts.pool ?? new ChunkWorkerPool();
  const target = await openTarget(targetPath, manifest.sizeBytes);
  const chunkSize = manifest.chunkSizeBytes;
  const gap = opts.coalesceGapBytes ?? 256 * 1024;
  const zero = new Uint8Array(chunkSize);
  const hasher = new StreamHasher();
  let lastHashed: Promise<void> = Promise.resolve();
  const batchChunks = Math.max(1, Math.floor((8 * 1024 * 1024) / chunkSize));
  const maxInFlight = pool.threads * 2;
  let writtenBytes = 0;
  let doneBytes = 0;
  try {
    const inFlight: Promise<() => Promise<void>>[] = [];
    let chunkBase = 0;
    const what = `backup ${manifest.id}`;
    for (const ref of manifest.indexSegments) {
      const seg = await repo.readIndexSegment(ref, what);
      for (let first = 0; first < ref.chunks; first += batchChunks) {
        throwIfAborted(signal);
        const n = Math.min(batchChunks, ref.chunks - first);
        const p = fetchBatch(seg.subarray(first * DIGEST_BYTES, (first + n) * DIGEST_BYTES), chunkBase + first);
        p.catch(() => undefined); // rejections surface when this batch's turn to be written comes
        inFlight.push(p);
        if (inFlight.length >= maxInFlight) await (await inFlight.shift()!)();
      }
      chunkBase += ref.chunks;
    }
    while (inFlight.length) await (await inFlight.shift()!)();
    await lastHashed;
    if (chunkBase !== manifest.chunkCount) throw new AppError(ErrorCode.RepositoryCorrupt, `index of ${what} lists ${chunkBase} chunks, manifest says ${manifest.chunkCount}`);
    if (!target.sparse || opts.fsync) await target.fh.sync();
  } catch (err) {
    await target.fh.close().catch(() => undefined); // the error below is what matters
    if (ownPool) await pool.close();
    await hasher.close();
    throw asCancelledIfAborted(err, signal, 'restore');
  }
  await target.fh.close();
  if (ownPool) await pool.close();
  const sha = await hasher.digestHex().finally(() => hasher.close());
  if (sha !== manifest.volumeSha256) {
    throw new AppError(ErrorCode.RestoreMismatch, `restored data of backup ${manifest.id} does not match its SHA-256 (${sha} != ${manifest.volumeSha256})`);
  }
  opts.onProgress?.({ doneBytes: manifest.sizeBytes, totalBytes: manifest.sizeBytes });
  return { backupId: manifest.id, sizeBytes: manifest.sizeBytes, volumeSha256: sha, writtenBytes, durationMs: Math.round(performance.now() - started) };

  /** Fetches and decodes one batch; resolves to a function that writes it (called in order). */
  async function fetchBatchFrom(map: ChunkMap, digests: Uint8Array, firstChunk: number): Promise<() => Promise<void>> {
    const n = digests.length / DIGEST_BYTES;
    const present: number[] = [];
    const locs: { packNo: number; offset: number; length: number; rawLength: number }[] = [];
    for (let i = 0; i < n; i++) {
      if (isZeroDigest(digests, i * DIGEST_BYTES)) continue;
      const loc = map.get(digests, i * DIGEST_BYTES);
      if (!loc) throw new AppError(ErrorCode.ChunkMissing, `chunk ${digestHex(digests, i * DIGEST_BYTES)} of backup ${manifest.id} is missing from the repository`);
      present.push(i);
      locs.push(loc);
    }
    // Coalesce reads: chunks of one pack that lie close together come in one request.
    const runs: ReadRun[] = [];
    const runOf: number[] = [];
    for (let k = 0; k < locs.length; k++) {
      const l = locs[k]!;
      const r = runs[runs.length - 1];
      if (r && r.packNo === l.packNo && l.offset >= r.offset + r.length && l.offset - (r.offset + r.length) <= gap) {
        r.length = l.offset + l.length - r.offset;
      } else {
        runs.push({ packNo: l.packNo, offset: l.offset, length: l.length });
      }
      runOf.push(runs.length - 1);
    }
    const bodies = await Promise.all(
      runs.map(async (r) => {
        const key = packKey(map.packIds[r.packNo]!);
        try {
          return await repo.store.get(key, { offset: r.offset, length: r.length, ...(signal ? { signal } : {}) });
        } catch (err) {
          if (err instanceof ObjectNotFoundError) throw new AppError(ErrorCode.ChunkMissing, `pack ${key} needed by backup ${manifest.id} is missing`, { cause: err });
          throw err;
        }
      }),
    );
    let total = 0;
    for (const l of locs) total += l.length;
    const blobs = new Uint8Array(total);
    const wantDigests = new Uint8Array(present.length * DIGEST_BYTES);
    let o = 0;
    for (let k = 0; k < locs.length; k++) {
      const l = locs[k]!;
      const r = runs[runOf[k]!]!;
      const body = bodies[runOf[k]!]!;
      const from = l.offset - r.offset;
      if (from + l.length > body.length) throw new AppError(ErrorCode.ChunkCorrupt, `pack ${map.packIds[l.packNo]} is truncated`);
      blobs.set(body.subarray(from, from + l.length), o);
      o += l.length;
      wantDigests.set(digests.subarray(present[k]! * DIGEST_BYTES, (present[k]! + 1) * DIGEST_BYTES), k * DIGEST_BYTES);
    }
    const decoded = present.length
      ? await pool.decode({ data: blobs, lengths: locs.map((l) => l.length), rawLengths: locs.map((l) => l.rawLength), digests: wantDigests, encKey: repo.keys?.encKey, macKey: repo.keys?.macKey, returnData: true, checkDigests: false }, signal, true)
      : { data: new Uint8Array(0), damaged: [] as number[] };
    const bad = decoded.damaged.indexOf(1);
    if (bad >= 0) throw new AppError(ErrorCode.ChunkCorrupt, `chunk ${digestHex(wantDigests, bad * DIGEST_BYTES)} of backup ${manifest.id} is damaged`);

    return async () => {
      // Consecutive stored chunks are contiguous in decoded.data: write each run with one call.
      const pieces: number[] = [];
      let rawOff = 0;
      let k = 0;
      let i = 0;
      while (i < n) {
        const pos = (firstChunk + i) * chunkSize;
        if (present[k] === i) {
          const runStart = rawOff;
          let runLen = 0;
          while (i < n && present[k] === i) {
            const len = Math.min(chunkSize, manifest.sizeBytes - (firstChunk + i) * chunkSize);
            runLen += len;
            rawOff += locs[k]!.rawLength;
            k++;
            i++;
          }
          const data = decoded.data.subarray(runStart, runStart + runLen);
          pieces.push(decoded.data.byteOffset + runStart, runLen);
          await writeAll(target.fh, data, pos);
          writtenBytes += runLen;
          doneBytes += runLen;
        } else {
          const len = Math.min(chunkSize, manifest.sizeBytes - pos);
          const z = zero.subarray(0, len);
          if (pieces.length && pieces[pieces.length - 2] === -1) pieces[pieces.length - 1]! += len;
          else pieces.push(-1, len);
          if (!target.sparse) {
            await writeAll(target.fh, z, pos);
            writtenBytes += len;
          }
          doneBytes += len;
          i++;
        }
      }
      // Hash in volume order in the hashing thread, one batch behind at most (bounded memory).
      await lastHashed;
      lastHashed = hasher.updatePieces(decoded.data.buffer as ArrayBuffer, pieces);
      lastHashed.catch(() => undefined); // awaited with the next batch or at the end
      releaseGarbage(total + rawOff); // this batch's fetched blobs are garbage now (memory.ts)
      opts.onProgress?.({ doneBytes, totalBytes: manifest.sizeBytes });
    };
  }
}

async function writeAll(fh: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}

