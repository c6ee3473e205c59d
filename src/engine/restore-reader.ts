/**
 * restoreBackup: writes a backup back to a file or block device, bit-identical, and proves it before
 * reporting success. A backup with a volume digest (manifest format 2): every decoded chunk is
 * hashed in the workers, over the very bytes about to be written, and must have the digest it was
 * restored under; the volume digest recomputed from those digests, in volume order with the holes,
 * must equal the manifest's (docs/design.md "Volume digest"). An older backup (format 1): the
 * whole-volume SHA-256 of the bytes written, computed in a thread of its own, must equal the
 * manifest's.
 *
 * A regular-file target is created (or truncated) and sized first, so holes stay holes (sparse); a
 * block device gets zeros written over holes, since it may hold old data. Data is written with
 * direct I/O (O_DIRECT) where the target allows it: a restore then neither evicts the host's page
 * cache nor pays the kernel for copying every byte into it (on this project's 2-core machine that
 * copy cost more CPU than decoding: 2.5 s of 2.9 GB, against 0.4 s direct). Chunks are fetched from
 * packs in coalesced ranges, decoded and digest-checked in workers, and written in volume order.
 */
import { randomUUID } from 'node:crypto';
import { constants as fsc, promises as fs } from 'node:fs';
import type { NbdClient } from '../qemu/nbd-client.ts';
import { createQcow2, QemuNbdServer } from '../qemu/qemu-tools.ts';
import { AppError, asCancelledIfAborted, ErrorCode, isAppError, throwIfAborted } from '../domain/errors.ts';
import { acceptsDirectIo, DIRECT_ALIGN, directSlot, releaseDirectSlot, type DirectSlot } from '../storage/direct-io.ts';
import { DIGEST_BYTES, digestHex, isZeroDigest } from './chunk-digest.ts';
import type { ChunkMap } from './chunk-map.ts';
import type { BackupManifest } from './manifest.ts';
import { packKey } from './pack-format.ts';
import { PackFetcher, type BatchReads, type ChunkRead, type FetchedBodies, type PlannedBatch } from './pack-fetcher.ts';
import type { Repository } from './repository.ts';
import { blockDeviceSize } from './volume-source.ts';
import { openVolumeFile, reopenSame, type VolumeFileGuard } from './volume-file.ts';
import type { DecodeIntoTask } from './chunk-worker.ts';
import { ChunkWorkerPool } from './worker-pool.ts';
import type { Progress } from './backup-writer.ts';
import { RepositoryLock } from './locks.ts';
import { SlotPool } from './slot-pool.ts';
import { StreamHasher } from './stream-hasher.ts';
import { VolumeDigest } from './volume-digest.ts';
import { quarantineQuietly, type QuarantineEntry } from './quarantine.ts';
import { writeAll } from '../storage/file-io.ts';

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
  /** Bytes fetched from packs and not yet decoded, at most (default 128 MiB; pack-fetcher.ts). */
  fetchBudgetBytes?: number;
  /**
   * The target is a service volume: it must exist, be the very file Haven adopted, under its roots,
   * and is never reached through a symbolic link (volume-file.ts). Without a guard (the operator's
   * CLI), a missing file target is created and links are followed.
   */
  guard?: VolumeFileGuard;
  /** Size a regular-file target to at least this (a volume larger than the backup); default: the backup's size. */
  targetSizeBytes?: number;
  /**
   * The target's format: raw (default) writes the bytes into the file or device; qcow2 creates a new
   * qcow2 image (written through qemu-nbd, beside the target under a temporary name, renamed over
   * the target once the restore is proved: a failed restore leaves the old file as it was); with a
   * guard (a service volume's image) the image is written in place, holes as zeros.
   */
  format?: 'raw' | 'qcow2';
}

/** What a restore proved: the volume digest (format-2 manifests) or the whole-volume SHA-256 (format 1). */
export type RestoreProof = { volumeDigest: string } | { volumeSha256: string };

export type RestoreResult = RestoreProof & {
  backupId: string;
  sizeBytes: number;
  /** Always true: a restore that cannot prove its bytes throws instead of returning. */
  verified: true;
  writtenBytes: number;
  durationMs: number;
};

interface Target {
  /** The image written through NBD (format qcow2), instead of the file handles. */
  nbd?: { client: NbdClient; server: QemuNbdServer; tmpPath: string; finalPath: string; inPlace?: boolean } | undefined;
  fh: fs.FileHandle;
  blockDevice: boolean;
  /** The same target opened with O_DIRECT, or null when the file system or device refuses it. */
  direct: fs.FileHandle | null;
  sparse: boolean;
}

/**
 * Opens and sizes a restore target. A service volume (`guard`) must be the very file Haven adopted,
 * under its roots, never reached through a link (volume-file.ts); the operator's CLI target (no
 * guard) is created when missing and links are followed. Either way the target is emptied and
 * sized through its own descriptor. Its O_DIRECT twin (null where the file system refuses direct
 * I/O: buffered writes only) is, for a service volume, that same inode reopened through
 * /proc/self/fd.
 */
async function openTarget(path: string, sizeBytes: number, fileSizeBytes: number, guard: VolumeFileGuard | undefined): Promise<Target> {
  let fh: fs.FileHandle;
  let blockDevice: boolean;
  let rdev: number;
  if (guard) {
    const opened = await openVolumeFile(path, fsc.O_RDWR, guard);
    fh = opened.fh;
    blockDevice = opened.stat.isBlockDevice();
    rdev = Number(opened.stat.rdev);
  } else {
    const st = await fs.stat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw new AppError(ErrorCode.TargetUnwritable, `cannot use restore target ${path}: ${err.message}`, { cause: err });
    });
    if (st && !st.isFile() && !st.isBlockDevice()) throw new AppError(ErrorCode.TargetUnwritable, `restore target ${path} is neither a file nor a block device`);
    try {
      fh = await fs.open(path, fsc.O_RDWR | fsc.O_CREAT, 0o600);
    } catch (err) {
      throw new AppError(ErrorCode.TargetUnwritable, `cannot write restore target ${path}: ${(err as Error).message}`, { cause: err });
    }
    blockDevice = st?.isBlockDevice() ?? false;
    rdev = st?.rdev ?? 0;
  }
  try {
    if (blockDevice) {
      const devSize = await blockDeviceSize(rdev);
      if (devSize < sizeBytes) throw new AppError(ErrorCode.TargetUnwritable, `block device ${path} holds ${devSize} bytes, the backup needs ${sizeBytes}`);
    } else {
      await fh.truncate(0);
      await fh.truncate(fileSizeBytes);
    }
    // A service volume's twin is the checked inode itself; the CLI's target is its path again.
    const direct = sizeBytes < DIRECT_ALIGN || !fsc.O_DIRECT ? null : guard ? await reopenSame(fh, fsc.O_RDWR | fsc.O_DIRECT) : await openDirect(path);
    return { fh, blockDevice, direct, sparse: !blockDevice };
  } catch (err) {
    await fh.close().catch(() => undefined);
    if (err instanceof AppError) throw err;
    throw new AppError(ErrorCode.TargetUnwritable, `cannot write restore target ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * A qcow2 target: a new image under a temporary name beside `path`, served writable by qemu-nbd
 * (holes are never written: a new image reads as zeros). `fh` holds the image file open only so the
 * code shared with file targets has a handle; nothing is written through it.
 */
async function openImageTarget(path: string, sizeBytes: number, guard: VolumeFileGuard | undefined, signal: AbortSignal | undefined): Promise<Target> {
  if (guard) return openImageInPlace(path, sizeBytes, guard, signal);
  const st = await fs.stat(path).catch(() => null);
  if (st && !st.isFile()) throw new AppError(ErrorCode.TargetUnwritable, `restore target ${path} exists and is not a file: a qcow2 restore creates a file`);
  const tmpPath = `${path}.haven-${randomUUID().slice(0, 8)}.tmp`;
  await createQcow2(tmpPath, sizeBytes, signal ? { signal } : {});
  let server: QemuNbdServer | null = null;
  try {
    server = await QemuNbdServer.start(tmpPath, { format: 'qcow2', readOnly: false, connections: 1, ...(signal ? { signal } : {}) });
    const client = await server.connect(signal ? { signal } : {});
    const fh = await fs.open(tmpPath, 'r');
    return { nbd: { client, server, tmpPath, finalPath: path }, fh, blockDevice: false, direct: null, sparse: true };
  } catch (err) {
    await server?.close();
    await fs.rm(tmpPath, { force: true });
    throw err;
  }
}

/**
 * A service volume's qcow2 image, written in place through qemu-nbd from the checked descriptor
 * (volume-file.ts), opened without a backing file. Not sparse: the image holds the volume's old
 * data, so holes are written as zeros (WRITE_ZEROES, which qcow2 records without data). An image
 * a running VM holds is refused by QEMU's locking.
 */
async function openImageInPlace(path: string, sizeBytes: number, guard: VolumeFileGuard, signal: AbortSignal | undefined): Promise<Target> {
  const { fh } = await openVolumeFile(path, fsc.O_RDWR, guard);
  let server: QemuNbdServer | null = null;
  try {
    server = await QemuNbdServer.start(path, { format: 'qcow2', readOnly: false, connections: 1, fd: fh.fd, ...(signal ? { signal } : {}) });
    const client = await server.connect(signal ? { signal } : {});
    if (client.sizeBytes < sizeBytes) {
      await client.close();
      throw new AppError(ErrorCode.TargetUnwritable, `qcow2 image ${path} holds ${client.sizeBytes} bytes, the backup needs ${sizeBytes}`);
    }
    return { nbd: { client, server, tmpPath: path, finalPath: path, inPlace: true }, fh, blockDevice: false, direct: null, sparse: false };
  } catch (err) {
    await server?.close();
    await fh.close();
    throw err;
  }
}

/**
 * Ends a qcow2 target: the server stops (after flushing), and a new image replaces the target if
 * proved, else is removed; an image written in place stays (a failed restore leaves the volume to
 * be restored again, as with raw volumes).
 */
async function closeImageTarget(target: Target, proved: boolean): Promise<void> {
  const t = target.nbd;
  if (!t) return;
  target.nbd = undefined;
  await t.client.close().catch(() => undefined);
  await t.server.close();
  if (t.inPlace) return;
  if (proved) await fs.rename(t.tmpPath, t.finalPath);
  else await fs.rm(t.tmpPath, { force: true });
}

async function openDirect(path: string): Promise<fs.FileHandle | null> {
  try {
    return await fs.open(path, fsc.O_RDWR | fsc.O_DIRECT);
  } catch {
    return null; // e.g. a file system without direct I/O: buffered writes only
  }
}

/** A batch of the restore: `n` chunks from `firstChunk`, of which those at `present` are stored (the rest are holes). */
interface BatchMeta {
  firstChunk: number;
  n: number;
  digests: Uint8Array;
  present: number[];
  reads: ChunkRead[];
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
  const what = `backup ${manifest.id}`;
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
  const ownPool = opts.pool === undefined;
  const pool = opts.pool ?? new ChunkWorkerPool();
  // Nothing touches the target before the backup is known to be whole: a restore that cannot
  // finish must not have destroyed the volume's old contents first.
  let preread: Awaited<ReturnType<typeof checkWhole>>;
  const fileSize = Math.max(manifest.sizeBytes, opts.targetSizeBytes ?? 0);
  let target: Target;
  // A failure up to here left the target as it was: the error says so (details.targetUntouched),
  // so a caller can tell a volume still whole from one half written.
  try {
    try {
      preread = await checkWhole(repo, map, manifest, what, signal);
    } catch (err) {
      // A GC that finished just before this restore's lock may have moved chunks: look once more.
      if (!isAppError(err, ErrorCode.ChunkMissing)) throw err;
      map = (await repo.loadChunkMap()).map;
      mapGeneration++;
      preread = await checkWhole(repo, map, manifest, what, signal);
    }
    target = opts.format === 'qcow2' ? await openImageTarget(targetPath, opts.guard ? manifest.sizeBytes : fileSize, opts.guard, signal) : await openTarget(targetPath, manifest.sizeBytes, fileSize, opts.guard);
  } catch (err) {
    if (ownPool) await pool.close();
    throw isAppError(err) ? new AppError(err.code, err.message, { cause: err.cause, details: { ...err.details, targetUntouched: true } }) : err;
  }
  const chunkSize = manifest.chunkSizeBytes;
  const gap = opts.coalesceGapBytes ?? 256 * 1024;
  // Format 1: the whole-volume SHA-256 of what is written; format 2: the volume digest of the
  // digests each chunk was checked against (in the workers, see fetchBatchFrom).
  const hasher = manifest.formatVersion === 1 ? new StreamHasher() : null;
  const root = manifest.formatVersion === 2 ? new VolumeDigest({ sizeBytes: manifest.sizeBytes, chunkSizeBytes: chunkSize, alg: repo.chunkDigest.alg }) : null;
  const internal = new AbortController();
  const onAbort = (): void => internal.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });

  // Pipeline, per batch of chunks decoded into a SharedArrayBuffer slot (no copies between threads):
  //   fetch pack ranges -> decode and check digests (workers, parallel) -> in volume order: feed the
  //   volume digest (format 1: hash on its own thread) and write (concurrently) -> free the slot.
  // At most `slots` batches are in flight: memory is bounded.
  const batchChunks = Math.max(1, Math.floor((8 * 1024 * 1024) / chunkSize));
  const batchBytes = batchChunks * chunkSize;
  type Slot = DirectSlot;
  const slots = new SlotPool<Slot>([]); // filled below, once it is known whether the target takes direct I/O
  const allSlots: Slot[] = []; // released once every batch has settled
  let zeros: Uint8Array | undefined; // for block devices, whose holes must be written
  let failure: unknown;
  const fail = (err: unknown): void => {
    failure ??= err;
    internal.abort(err);
    slots.fail();
  };
  let writtenBytes = 0;
  let doneBytes = 0;
  let lastCommit: Promise<unknown> = Promise.resolve();
  const settling = new Set<Promise<unknown>>();
  // Every batch's reads, in volume order, planned ahead per pack (pack-fetcher.ts): requests grow
  // with the packs touched, not with the chunks, and run ahead of decoding.
  async function* batchSource(): AsyncGenerator<BatchReads<BatchMeta>> {
    let chunkBase = 0;
    for (const ref of manifest.indexSegments) {
      const seg = preread.get(ref) ?? (await repo.readIndexSegment(ref, what));
      preread.delete(ref);
      for (let first = 0; first < ref.chunks; first += batchChunks) {
        const n = Math.min(batchChunks, ref.chunks - first);
        const digests = seg.subarray(first * DIGEST_BYTES, (first + n) * DIGEST_BYTES);
        const meta: BatchMeta = { firstChunk: chunkBase + first, n, digests, present: [], reads: [] };
        try {
          Object.assign(meta, locate(map, digests, meta.firstChunk));
        } catch (err) {
          // delivered when the restore reaches this batch, which then looks again in a fresh chunk map
          yield { meta, reads: [], digestOf: () => '', error: err };
          continue;
        }
        yield { meta, reads: meta.reads, digestOf: (k) => digestHex(digests, meta.present[k]! * DIGEST_BYTES) };
      }
      chunkBase += ref.chunks;
    }
    if (chunkBase !== manifest.chunkCount) throw new AppError(ErrorCode.RepositoryCorrupt, `index of ${what} lists ${chunkBase} chunks, manifest says ${manifest.chunkCount}`);
  }
  const fetcher = new PackFetcher(repo.store, batchSource(), {
    what,
    signal: internal.signal,
    gapBytes: gap,
    // A local read costs little and a copy does: plan each batch alone there (nothing shared, no copies).
    ...(repo.store.cheapRangeReads ? { maxWindowBatches: 1 } : {}),
    ...(opts.fetchBudgetBytes !== undefined ? { budgetBytes: opts.fetchBudgetBytes } : {}),
  });
  try {
    // Slots are page-aligned memory when the target takes direct I/O, asked once with one block
    // (a file target has just been sized, so it reads as zeros there: see acceptsDirectIo).
    const direct = target.direct !== null && (await acceptsDirectIo(target.direct, target.blockDevice));
    for (let i = 0; i < SlotPool.count(pool.threads); i++) {
      const slot = directSlot(batchBytes, direct);
      allSlots.push(slot);
      slots.give(slot);
    }
    for (;;) {
      const slot = await slots.take();
      if (failure !== undefined || slot === null) break;
      if (signal?.aborted) {
        fail(new AppError(ErrorCode.Cancelled, 'restore cancelled', { cause: signal.reason }));
        break;
      }
      const batch = await fetcher.next();
      if (batch === null) break;
      {
        const { firstChunk, n, digests } = batch.meta;
        const decoded = fetchBatch(batch, slot);
        decoded.catch(() => undefined); // surfaces through the commit below

        // In volume order: feed the batch's digests to the root (format 1: hash its bytes, the
        // hashing thread keeps the order of posts) and write it.
        const commit = lastCommit.then(async () => {
          const present = await decoded;
          // Every stored chunk of the batch now matches its digest; holes are written as zeros.
          root?.update(digests);
          const pieces: number[] = []; // (offset in slot, length); offset -1: that many zero bytes
          const writes: Promise<void>[] = [];
          const batchStart = firstChunk * chunkSize;
          const batchLen = Math.min(n * chunkSize, manifest.sizeBytes - batchStart);
          let i = 0;
          let k = 0;
          while (i < n) {
            const stored = present[k] === i;
            const runStart = i;
            while (i < n && (present[k] === i) === stored) {
              if (stored) k++;
              i++;
            }
            const off = runStart * chunkSize;
            const len = Math.min(i * chunkSize, batchLen) - off;
            if (stored) {
              pieces.push(slot.base + off, len);
              writes.push(writeData(new Uint8Array(slot.sab, slot.base + off, len), batchStart + off, slot.aligned));
              writtenBytes += len;
            } else {
              pieces.push(-1, len);
              if (target.nbd && !target.sparse) {
                writes.push(target.nbd.client.writeZeroes(batchStart + off, len));
                writtenBytes += len;
              } else if (!target.sparse) {
                zeros ??= new Uint8Array(batchBytes);
                writes.push(writeAll(target.fh, zeros.subarray(0, len), batchStart + off));
                writtenBytes += len;
              }
            }
          }
          const done = Promise.all([hasher?.updateSharedPieces(slot.sab, pieces), ...writes]).then(() => {
            slots.give(slot);
            doneBytes += batchLen;
            opts.onProgress?.({ doneBytes, totalBytes: manifest.sizeBytes });
          });
          done.catch(fail);
          settling.add(done);
          void done.finally(() => settling.delete(done)).catch(() => undefined);
        });
        commit.catch(fail);
        lastCommit = commit;
      }
    }
    await lastCommit.catch(() => undefined);
    while (settling.size) await Promise.allSettled([...settling]);
    if (signal?.aborted) failure = asCancelledIfAborted(failure, signal, 'restore');
    if (failure !== undefined) throw failure;
    fetcher.close(); // lets its pooled buffers go
    if (target.nbd) {
      // An image larger than the backup (a larger volume): past the backup's end it reads as zeros, as a raw file's would.
      const c = target.nbd.client;
      if (target.nbd.inPlace && c.sizeBytes > manifest.sizeBytes) await c.writeZeroes(manifest.sizeBytes, c.sizeBytes - manifest.sizeBytes);
      await c.flush();
    }
    else if (!target.sparse || opts.fsync) await Promise.all([target.fh.sync(), target.direct?.sync()]);
  } catch (err) {
    fail(err);
    fetcher.close(err);
    await lastCommit.catch(() => undefined);
    while (settling.size) await Promise.allSettled([...settling]);
    signal?.removeEventListener('abort', onAbort);
    await target.fh.close().catch(() => undefined); // the error below is what matters
    await target.direct?.close().catch(() => undefined);
    await closeImageTarget(target, false);
    if (ownPool) await pool.close();
    await hasher?.close();
    throw asCancelledIfAborted(err, signal, 'restore');
  }
  signal?.removeEventListener('abort', onAbort);
  // Every batch has settled (each commit awaited its decode): nothing uses a slot any more. After a
  // failure the slots are not given back (an aborted decode may still be writing into one): the
  // garbage collector takes them, and they are never reused.
  allSlots.forEach(releaseDirectSlot);
  await target.fh.close();
  await target.direct?.close();
  if (ownPool) await pool.close();
  let proof!: RestoreProof;
  let proved = false;
  try {
    if (hasher) {
      const sha = await hasher.digestHex().finally(() => hasher.close());
      if (manifest.formatVersion !== 1 || sha !== manifest.volumeSha256) {
        throw new AppError(ErrorCode.RestoreMismatch, `restored data of backup ${manifest.id} does not match its SHA-256 (${sha} != ${manifest.formatVersion === 1 ? manifest.volumeSha256 : '?'})`);
      }
      proof = { volumeSha256: sha };
    } else {
      const digest = root!.digestHex();
      if (manifest.formatVersion !== 2 || digest !== manifest.volumeDigest) {
        throw new AppError(ErrorCode.RestoreMismatch, `restored data of backup ${manifest.id} does not match its volume digest (${digest} != ${manifest.formatVersion === 2 ? manifest.volumeDigest : '?'}): its index differs from what the backup recorded; run haven verify`);
      }
      proof = { volumeDigest: digest };
    }
    proved = true;
  } finally {
    await closeImageTarget(target, proved);
  }
  opts.onProgress?.({ doneBytes: manifest.sizeBytes, totalBytes: manifest.sizeBytes });
  return { ...proof, backupId: manifest.id, sizeBytes: manifest.sizeBytes, verified: true, writtenBytes, durationMs: Math.round(performance.now() - started) };

  /** The digest check for a batch's decode (format 2): the present chunks' digests, in task order. */
  function digestCheck(digests: Uint8Array, present: number[]): DecodeIntoTask['check'] {
    if (!root) return undefined;
    const expected = new Uint8Array(present.length * DIGEST_BYTES); // a small copy: the segment stays here
    present.forEach((i, k) => expected.set(digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), k * DIGEST_BYTES));
    return { digests: expected, digest: repo.chunkDigest };
  }

  /**
   * Writes one run of decoded chunks: directly when the slot and the range are block-aligned (all
   * but a volume's unaligned tail), else through the page cache. A target that refuses a direct
   * write after all gets buffered writes from then on.
   */
  async function writeData(data: Uint8Array, position: number, aligned: boolean): Promise<void> {
    if (target.nbd) return await target.nbd.client.write(data, position);
    const direct = target.direct;
    if (direct && aligned && position % DIRECT_ALIGN === 0 && data.length % DIRECT_ALIGN === 0) {
      try {
        return await writeAll(direct, data, position);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EINVAL") throw err;
        target.direct = null;
        await direct.close().catch(() => undefined);
      }
    }
    await writeAll(target.fh, data, position);
  }

  /**
   * Fetches and decodes one batch into `slot` (chunk i at base + i * chunkSize); resolves to the
   * stored chunks' positions. A chunk not found (in the chunk map or its pack) is looked up once more
   * in a freshly loaded chunk map and read directly, outside the plan.
   */
  async function fetchBatch(batch: PlannedBatch<BatchMeta>, slot: Slot): Promise<number[]> {
    const gen = mapGeneration;
    const { digests, firstChunk } = batch.meta;
    try {
      try {
        return await decodeBatch(await batch.data(), batch.meta, slot);
      } finally {
        batch.release(); // after the decode: the spans' buffers may be reused from now on
      }
    } catch (err) {
      if (!isAppError(err, ErrorCode.ChunkMissing)) throw await quarantineFound(err);
      await refreshMap(gen);
      try {
        const fresh = locate(map, digests, firstChunk);
        const fetched = await fetcher.fetchDirect({ reads: fresh.reads, digestOf: (k) => digestHex(digests, fresh.present[k]! * DIGEST_BYTES) });
        return await decodeBatch(fetched, { digests, ...fresh }, slot);
      } catch (again) {
        throw await quarantineFound(again);
      }
    }
  }

  /** Q1: the copies a failed read found damaged or lost are quarantined; returns the error. */
  async function quarantineFound(err: unknown): Promise<unknown> {
    const found = isAppError(err) ? (err.details?.chunks as QuarantineEntry[] | undefined) : undefined;
    if (found?.length) await quarantineQuietly(repo, found.map((c) => ({ ...c, foundBy: 'restore' as const, reason: (err as Error).message })));
    return err;
  }

  /** The stored chunks of a batch and where they lie, checked against the volume's layout. */
  function locate(map: ChunkMap, digests: Uint8Array, firstChunk: number): { present: number[]; reads: ChunkRead[] } {
    const n = digests.length / DIGEST_BYTES;
    const present: number[] = [];
    const reads: ChunkRead[] = [];
    for (let i = 0; i < n; i++) {
      if (isZeroDigest(digests, i * DIGEST_BYTES)) continue;
      const loc = map.get(digests, i * DIGEST_BYTES);
      if (!loc) throw new AppError(ErrorCode.ChunkMissing, `chunk ${digestHex(digests, i * DIGEST_BYTES)} of ${what} is missing from the repository`);
      // A chunk holds chunkSize bytes, the volume's last one the rest: anything else would write
      // over its neighbour's place.
      const expect = Math.min(chunkSize, manifest.sizeBytes - (firstChunk + i) * chunkSize);
      if (loc.rawLength !== expect) {
        const chunks = [{ digest: digestHex(digests, i * DIGEST_BYTES), packId: map.packIds[loc.packNo]! }];
        throw new AppError(ErrorCode.ChunkCorrupt, `chunk ${digestHex(digests, i * DIGEST_BYTES)} of ${what} holds ${loc.rawLength} bytes where ${expect} belong`, { details: { chunks } });
      }
      present.push(i);
      reads.push({ packId: map.packIds[loc.packNo]!, offset: loc.offset, length: loc.length, rawLength: loc.rawLength });
    }
    return { present, reads };
  }

  /** Decodes (and, format 2, checks) a batch's fetched chunks into its slot; a chunk that fails is named (quarantine). */
  async function decodeBatch(fetched: FetchedBodies, b: Pick<BatchMeta, 'digests' | 'present' | 'reads'>, slot: Slot): Promise<number[]> {
    if (!b.present.length) return b.present;
    const chunks: number[] = [];
    for (let k = 0; k < b.present.length; k++) {
      const c = k * 4;
      chunks.push(fetched.chunks[c]!, fetched.chunks[c + 1]!, fetched.chunks[c + 2]!, fetched.chunks[c + 3]!, slot.base + b.present[k]! * chunkSize);
    }
    const bad = await pool.decodeInto({ bodies: fetched.bodies, chunks, out: slot.sab, encKey: repo.keys?.encKey, check: digestCheck(b.digests, b.present) }, internal.signal);
    if (bad >= 0) {
      const digest = digestHex(b.digests, b.present[bad]! * DIGEST_BYTES);
      throw new AppError(ErrorCode.ChunkCorrupt, `chunk ${digest} of ${what} is damaged`, { details: { chunks: [{ digest, packId: b.reads[bad]!.packId }] } });
    }
    return b.present;
  }
}

/** Index bytes the whole-backup check keeps for the restore itself (more is read again). */
const PREREAD_KEEP_BYTES = 64 * 1024 * 1024;

/**
 * Checks, before the first write, that a backup is whole: its index segments read and verify,
 * every stored chunk is in the chunk map with the right size, and every pack it needs is present
 * and long enough. (Chunk contents are checked as they are decoded; a damaged one still fails the
 * restore midway, which only a verify beforehand can rule out.) Returns the index segments read,
 * up to PREREAD_KEEP_BYTES, so small backups are not read twice.
 */
async function checkWhole(repo: Repository, map: ChunkMap, manifest: BackupManifest, what: string, signal: AbortSignal | undefined): Promise<Map<BackupManifest['indexSegments'][number], Buffer>> {
  const kept = new Map<BackupManifest['indexSegments'][number], Buffer>();
  let keptBytes = 0;
  const packEnd = new Map<number, number>(); // pack number -> bytes it must hold
  const chunkSize = manifest.chunkSizeBytes;
  let chunkBase = 0;
  for (const ref of manifest.indexSegments) {
    throwIfAborted(signal);
    const seg = await repo.readIndexSegment(ref, what);
    for (let i = 0; i < ref.chunks; i++) {
      const at = i * DIGEST_BYTES;
      if (isZeroDigest(seg, at)) continue;
      const loc = map.get(seg, at);
      if (!loc) throw new AppError(ErrorCode.ChunkMissing, `chunk ${digestHex(seg, at)} of ${what} is missing from the repository; the restore target was not touched`);
      const expect = Math.min(chunkSize, manifest.sizeBytes - (chunkBase + i) * chunkSize);
      if (loc.rawLength !== expect) throw new AppError(ErrorCode.ChunkCorrupt, `chunk ${digestHex(seg, at)} of ${what} holds ${loc.rawLength} bytes where ${expect} belong; the restore target was not touched`);
      const end = loc.offset + loc.length;
      if ((packEnd.get(loc.packNo) ?? 0) < end) packEnd.set(loc.packNo, end);
    }
    chunkBase += ref.chunks;
    if (keptBytes + seg.length <= PREREAD_KEEP_BYTES) {
      kept.set(ref, seg);
      keptBytes += seg.length;
    }
  }
  if (chunkBase !== manifest.chunkCount) throw new AppError(ErrorCode.RepositoryCorrupt, `index of ${what} lists ${chunkBase} chunks, manifest says ${manifest.chunkCount}; the restore target was not touched`);
  const packs = [...packEnd];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < packs.length) {
      const [packNo, end] = packs[next++]!;
      throwIfAborted(signal);
      const key = packKey(map.packIds[packNo]!);
      const info = await repo.store.head(key);
      if (!info) throw new AppError(ErrorCode.ChunkMissing, `pack ${key} needed by ${what} is missing; the restore target was not touched`);
      if (info.sizeBytes < end) throw new AppError(ErrorCode.ChunkCorrupt, `pack ${key} needed by ${what} is truncated (${info.sizeBytes} bytes, needs ${end}); the restore target was not touched`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, packs.length) }, worker));
  return kept;
}
