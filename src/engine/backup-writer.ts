/**
 * writeBackup: reads a volume and stores it as a backup: chunks, chunk map, index, manifest.
 *
 * The engine knows bytes, not records: it takes a source, an open repository, an optional previous
 * manifest and an AbortSignal, and returns the manifest and stats. Write order (docs/design.md W1-W3):
 * packs durable -> chunk-map file -> last index segment -> manifest. A crash before the manifest
 * leaves only unreferenced objects, which GC removes; the backup simply does not exist.
 *
 * Pipeline, per batch of chunks held in a slot (a SharedArrayBuffer for the volume's bytes and one
 * for their encoded form, so no bytes are copied between threads):
 *   read (in order) -> digest (workers, parallel) -> decide new/reused/hole and feed the volume
 *   digest (in order) -> encode new chunks (workers, parallel) -> pack (in order)
 * At most `slots` batches are in flight, which bounds memory whatever the volume size. The volume
 * digest (volume-digest.ts) takes the chunk digests the decide stage has anyway, 32 bytes per chunk:
 * no stage reads every byte in order.
 */
import { randomUUID } from 'node:crypto';
import { AppError, asCancelledIfAborted, ErrorCode, throwIfAborted } from '../domain/errors.ts';
import { DIGEST_BYTES, digestHex, isZeroDigest } from './chunk-digest.ts';
import { DEFAULT_ZSTD_LEVEL, maxEncodedBytes } from './blob-codec.ts';
import { checkStoredChunks } from './chunk-check.ts';
import { readCondemned, type CondemnedSet } from './gc-state.ts';
import { loadQuarantine, quarantineQuietly, type Quarantine, type QuarantineFinding } from './quarantine.ts';
import { RepositoryLock } from './locks.ts';
import { indexSegmentKey, type BackupManifest, type BackupManifestV2, type BackupStats, type IndexSegmentRef } from './manifest.ts';
import { PackWriter } from './pack-writer.ts';
import { INDEX_SEGMENT_CHUNKS, type Repository } from './repository.ts';
import type { VolumeSource } from './volume-source.ts';
import { isHole, type Extent } from './volume-extents.ts';
import { ChunkAction, fetchPreviousChunks, ParentIndex, planBatch, sampleUnchanged, type ChangedBlocks } from './changed-blocks.ts';
import { ChunkMap } from './chunk-map.ts';
import { SlotPool } from './slot-pool.ts';
import { VolumeDigest } from './volume-digest.ts';
import { ChunkWorkerPool } from './worker-pool.ts';

export interface Progress {
  doneBytes: number;
  totalBytes: number;
}

export interface BackupOptions {
  volume: { id: string; name: string; path?: string; projectId?: string };
  /**
   * The volume's previous backup, recorded as the parent. Unchanged chunks are found in the chunk
   * map like any other stored chunk, so the parent's index is not needed to skip them.
   */
  previous?: BackupManifest | null | undefined;
  /** Record a full backup: no parent is used. Deduplication against the repository still applies. */
  full?: boolean;
  /**
   * Deduplicate only against stored chunks this backup has read and checked (decoded, digest
   * compared), once per chunk; damaged or missing ones are quarantined and stored again (Q3). What
   * the user's "full backup" asks for: a backup that is whole without a verify.
   */
  checkReused?: boolean;
  backupId?: string;
  pool?: ChunkWorkerPool;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** Chunks per batch (default: 8 MiB worth). */
  batchChunks?: number;
}

export interface BackupResult {
  manifest: BackupManifestV2;
  /** Stats including the manifest object itself. */
  stats: BackupStats;
  /** With checkReused: stored chunks read and checked, and those found damaged or missing (stored again). */
  checkedChunks: number;
  damagedChunks: number;
  /** Bytes read from the source (holes and, with changed-block tracking, unchanged chunks are not read). */
  readBytes: number;
  /** True when only the blocks the source reported changed since the parent were read. */
  changedBlockTracking: boolean;
  /** Why the source's changes were not used though it had them: a sampled unchanged chunk differed. */
  changedBlockTrackingDistrusted?: string;
}

const NEW_LOC = { packNo: 0xfffffffe, offset: 0, length: 0, rawLength: 0 };

export async function writeBackup(repo: Repository, source: VolumeSource, opts: BackupOptions): Promise<BackupResult> {
  const started = performance.now();
  const createdAt = new Date().toISOString();
  const backupId = opts.backupId ?? randomUUID();
  const signal = opts.signal;
  throwIfAborted(signal);
  const chunkSize = repo.config.chunkSizeBytes;
  const sizeBytes = source.sizeBytes;
  const chunkCount = Math.ceil(sizeBytes / chunkSize);
  const ownPool = opts.pool === undefined;
  const pool = opts.pool ?? new ChunkWorkerPool();
  // The lock goes first: a GC that does not see it has already written its condemned set, which we
  // read below (docs/design.md "Garbage collection", rule G2).
  const lock = await RepositoryLock.acquire(repo.store, 'backup', { backupId });
  const packs = new PackWriter(repo, { signal });
  const internal = new AbortController();
  const onAbort = (): void => internal.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    // A format-2 manifest needs a repository of version 3: raised before anything is written.
    await repo.raiseToVolumeDigest();
    const root = new VolumeDigest({ sizeBytes, chunkSizeBytes: chunkSize, alg: repo.chunkDigest.alg });
    // Q2: quarantined copies count as absent, like condemned ones.
    const [{ map }, condemned, quarantine] = await Promise.all([repo.loadChunkMap(), readCondemned(repo), loadQuarantine(repo)]);
    const checker = opts.checkReused ? new ReuseChecker(repo, map, pool, condemned, quarantine, internal.signal) : null;
    const parent = !opts.full && opts.previous && opts.previous.chunkSizeBytes === chunkSize ? opts.previous : null;
    const encKey = repo.keys?.encKey;

    const stats: BackupStats = { newBytes: 0, storedBytes: 0, zeroBytes: 0, dedupBytes: 0, newChunks: 0, reusedChunks: 0, holeChunks: 0, packsWritten: 0, objectsWritten: 0, durationMs: 0 };
    const segments: IndexSegmentRef[] = [];
    let segBuf = new Uint8Array(Math.min(INDEX_SEGMENT_CHUNKS, Math.max(chunkCount, 0)) * DIGEST_BYTES);
    let segFill = 0;
    let indexStoredBytes = 0;
    const flushSegment = async (): Promise<void> => {
      const { ref, storedBytes } = await repo.writeIndexSegment(indexSegmentKey(backupId, segments.length), segBuf.subarray(0, segFill * DIGEST_BYTES));
      segments.push(ref);
      indexStoredBytes += storedBytes;
      segFill = 0;
    };

    const batchChunks = opts.batchChunks ?? Math.max(1, Math.floor((8 * 1024 * 1024) / chunkSize));
    const batchBytes = batchChunks * chunkSize;
    interface Slot {
      data: SharedArrayBuffer;
      encoded: SharedArrayBuffer;
    }
    const encodedBytes = batchChunks * maxEncodedBytes(chunkSize, { encKey });
    const newSlot = (): Slot => ({ data: new SharedArrayBuffer(batchBytes), encoded: new SharedArrayBuffer(encodedBytes) });
    const slots = new SlotPool(Array.from({ length: SlotPool.count(pool.threads) }, newSlot));

    let failure: unknown;
    const fail = (err: unknown): void => {
      failure ??= err;
      internal.abort(err);
      slots.fail(); // the reader, if it waits for a slot, gets none and sees the failure
    };
    let doneBytes = 0;
    let lastDecide: Promise<unknown> = Promise.resolve();
    let lastAppend: Promise<unknown> = Promise.resolve();
    const sessionNew = new ChunkMap();

    // Bytes outside these read as zeros: chunks wholly outside are holes, never read or hashed.
    const extents = (await source.dataExtents?.(internal.signal)) ?? null;
    // Changed-block tracking (changed-blocks.ts): only when the source's changes are counted from
    // this very parent, of the same size.
    let readBytes = 0;
    let cbt: { changes: ChangedBlocks; parent: ParentIndex; cursor: { next: number } } | null = null;
    if (parent && parent.sizeBytes === sizeBytes) {
      const changes = (await source.changedBlocks?.(internal.signal)) ?? null;
      if (changes && changes.sinceBackupId === parent.id) cbt = { changes, parent: new ParentIndex(repo, parent), cursor: { next: 0 } };
    }
    // The changes are checked against a random sample of chunks they call unchanged; one that
    // differs means the tracking missed a change, and the whole volume is read.
    let cbtDistrusted: string | null = null;
    if (cbt) {
      const sample = await sampleUnchanged(source, new ParentIndex(repo, cbt.parent.manifest), cbt.changes, {
        sizeBytes, chunkSize, isHole: (start, length) => extents !== null && isHole(extents, start, length), pool, digest: repo.chunkDigest, signal: internal.signal,
      });
      readBytes += sample.readBytes;
      if (sample.mismatch !== null) {
        cbtDistrusted = `chunk ${sample.mismatch} changed though the changed-block tracking said it had not; the whole volume was read`;
        cbt = null;
      }
    }
    const usable = (d: Uint8Array, off: number): boolean => map.has(d, off) && !condemned.digests.has(d, off) && !quarantine.applies(map, d, off);
    for (let pos = 0; pos < sizeBytes && failure === undefined; pos += batchBytes) {
      const batchSlot = await slots.take();
      if (failure !== undefined || batchSlot === null) break;
      const slot = batchSlot.data;
      if (signal?.aborted) {
        fail(new AppError(ErrorCode.Cancelled, 'backup cancelled', { cause: signal.reason }));
        break;
      }
      const len = Math.min(batchBytes, sizeBytes - pos);
      const n = Math.ceil(len / chunkSize);
      const firstChunk = pos / chunkSize;
      // Per chunk: a hole (never read or hashed), read from the disk, or (changed-block tracking)
      // the previous backup's unchanged chunk, or its stored copy patched with the dirty ranges.
      let actions: Uint8Array;
      let patches = new Map<number, Extent[]>();
      let preset: Uint8Array | null = null; // digests of unchanged chunks, from the previous backup's index
      let parentDigests: Uint8Array | null = null;
      const fetchAt: number[] = []; // patched chunks completed from their stored copy
      const holeAt = (start: number, length: number): boolean => extents !== null && isHole(extents, start, length);
      if (cbt) {
        parentDigests = await cbt.parent.digests(firstChunk, n);
        ({ actions, patches } = planBatch(pos, len, chunkSize, holeAt, cbt.changes, cbt.cursor, parentDigests, usable));
        preset = new Uint8Array(n * DIGEST_BYTES);
        for (let i = 0; i < n; i++) {
          if (actions[i] === ChunkAction.Clean) preset.set(parentDigests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), i * DIGEST_BYTES);
          else if (actions[i] === ChunkAction.Patch) {
            if (isZeroDigest(parentDigests, i * DIGEST_BYTES)) new Uint8Array(slot, i * chunkSize, Math.min(chunkSize, len - i * chunkSize)).fill(0);
            else fetchAt.push(i);
          }
        }
      } else {
        actions = new Uint8Array(n).fill(ChunkAction.Read);
        for (let i = 0; i < n; i++) if (holeAt(pos + i * chunkSize, Math.min(chunkSize, len - i * chunkSize))) actions[i] = ChunkAction.Hole;
      }
      // Fills the slot: stored copies of patched chunks first, then the reads from the disk. Resolves
      // to the runs of chunks to hash ([first, count]).
      const fill = async (): Promise<Array<[number, number]>> => {
        if (fetchAt.length) {
          const unusable = await fetchPreviousChunks(repo, map, parentDigests!, fetchAt, slot, fetchAt.map((i) => i * chunkSize), batchSlot.encoded, pool, internal.signal);
          for (const k of unusable) {
            actions[fetchAt[k]!] = ChunkAction.Read; // its stored copy is gone or damaged: read it whole
            patches.delete(fetchAt[k]!);
          }
        }
        const runs: Array<[number, number]> = [];
        const reads: Array<[number, number]> = []; // (offset in batch, length)
        for (let i = 0; i < n; i++) {
          const a = actions[i]!;
          if (a !== ChunkAction.Read && a !== ChunkAction.Patch) continue;
          const last = runs[runs.length - 1];
          if (last && last[0] + last[1] === i) last[1]++;
          else runs.push([i, 1]);
          if (a === ChunkAction.Read) {
            const off = i * chunkSize;
            const rl = Math.min(chunkSize, len - off);
            const lr = reads[reads.length - 1];
            if (lr && lr[0] + lr[1] === off) lr[1] += rl;
            else reads.push([off, rl]);
          } else {
            for (const r of patches.get(i)!) reads.push([r.start - pos, r.length]);
          }
        }
        const readOne = async ([off, rl]: [number, number]): Promise<void> => {
          let got: number;
          try {
            got = await source.read(new Uint8Array(slot, off, rl), rl, pos + off);
          } catch (err) {
            throw new AppError(ErrorCode.VolumeUnreadable, `reading the volume at byte ${pos + off} failed: ${(err as Error).message}`, { cause: err });
          }
          readBytes += got;
          if (got !== rl) throw new AppError(ErrorCode.VolumeChanged, `the volume shrank while it was being backed up (short read at byte ${pos + off + got})`);
        };
        // Whole runs in order, one at a time; the scattered dirty ranges of changed-block tracking
        // all at once (an NBD source pipelines them on its connection).
        if (cbt && reads.length > 1) {
          const rs = await Promise.allSettled(reads.map(readOne));
          const bad = rs.find((r) => r.status === 'rejected');
          if (bad) throw bad.reason;
        } else {
          for (const r of reads) await readOne(r);
        }
        return runs;
      };
      // A full read fills batches one after the other (a disk read in order); with changed-block
      // tracking a batch's fetches and scattered reads run while the next batches are planned (the
      // slots bound how many), and a failure reaches the decide stage through the hashing.
      let runsP: Promise<Array<[number, number]>>;
      if (cbt) {
        runsP = fill();
      } else {
        try {
          runsP = Promise.resolve(await fill());
        } catch (err) {
          fail(err);
          break;
        }
      }
      const hashP: Promise<Uint8Array> = runsP.then((runs) => {
        if (runs.length === 1 && runs[0]![1] === n) return pool.hash({ sab: slot, offset: 0, length: len, chunkSizeBytes: chunkSize, digest: repo.chunkDigest }, internal.signal);
        if (preset) {
          // Changed-block tracking: the batch's scattered dirty chunks in one task, the unchanged
          // ones' digests from the previous backup's index.
          const only = new Uint8Array(n);
          for (const [i, c] of runs) only.fill(1, i, i + c);
          return pool.hash({ sab: slot, offset: 0, length: len, chunkSizeBytes: chunkSize, digest: repo.chunkDigest, only }, internal.signal).then((d) => {
            for (let i = 0; i < n; i++) if (!only[i]) d.set(preset.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), i * DIGEST_BYTES);
            return d;
          });
        }
        return Promise.all(
          runs.map(([i, c]) =>
            pool.hash({ sab: slot, offset: i * chunkSize, length: Math.min((i + c) * chunkSize, len) - i * chunkSize, chunkSizeBytes: chunkSize, digest: repo.chunkDigest }, internal.signal),
          ),
        ).then((parts) => {
          const all = new Uint8Array(n * DIGEST_BYTES); // holes: the all-zero digest
          parts.forEach((d, k) => all.set(d.subarray(0, runs[k]![1] * DIGEST_BYTES), runs[k]![0] * DIGEST_BYTES));
          return all;
        });
      });
      hashP.catch(() => undefined); // handled through decideP
      // Full backups: check the stored copies this batch would reuse, alongside the ordered stages.
      const checkP = checker ? hashP.then((d) => checker.checkBatch(d, n)) : null;
      checkP?.catch(() => undefined); // handled through decideP

      // Decide, strictly in batch order: which chunks are holes, reused, or new.
      const decideP = lastDecide.then(async () => {
        const digests = await hashP;
        if (checkP) await checkP;
        root.update(digests.subarray(0, n * DIGEST_BYTES));
        const ranges: number[] = [];
        const newAt: number[] = [];
        for (let i = 0; i < n; i++) {
          const dOff = i * DIGEST_BYTES;
          const cLen = Math.min(chunkSize, len - i * chunkSize);
          let hole = true;
          for (let k = 0; k < DIGEST_BYTES; k++) if (digests[dOff + k] !== 0) { hole = false; break; }
          if (hole) {
            stats.holeChunks++;
            stats.zeroBytes += cLen;
          } else if (
            sessionNew.has(digests, dOff) ||
            (map.has(digests, dOff) && !condemned.digests.has(digests, dOff) && !quarantine.applies(map, digests, dOff) && (checker === null || checker.isSound(digests, dOff)))
          ) {
            // Stored already (condemned chunks count as absent: GC may be about to remove them;
            // quarantined ones too, and, in a checked backup, any copy not checked sound).
            stats.reusedChunks++;
            stats.dedupBytes += cLen;
          } else {
            sessionNew.set(digests, dOff, NEW_LOC);
            stats.newChunks++;
            stats.newBytes += cLen;
            ranges.push(i * chunkSize, cLen);
            newAt.push(i);
          }
          segBuf.set(digests.subarray(dOff, dOff + DIGEST_BYTES), segFill * DIGEST_BYTES);
          segFill++;
          if (segFill * DIGEST_BYTES === segBuf.length && firstChunk + i + 1 < chunkCount) {
            await flushSegment();
            segBuf = new Uint8Array(Math.min(INDEX_SEGMENT_CHUNKS, chunkCount - (firstChunk + i + 1)) * DIGEST_BYTES);
          }
        }
        const encodeP = ranges.length ? pool.encode({ sab: slot, ranges, encKey, level: DEFAULT_ZSTD_LEVEL, out: batchSlot.encoded }, internal.signal) : null;
        encodeP?.catch(() => undefined); // handled through appendP
        return { digests, newAt, ranges, encodeP };
      });
      decideP.catch(fail);
      lastDecide = decideP;

      // Append encoded chunks to packs, strictly in batch order, then free the slot.
      const appendP = lastAppend.then(async () => {
        const d = await decideP;
        if (d.encodeP) {
          const enc = await d.encodeP;
          let off = 0;
          for (let k = 0; k < d.newAt.length; k++) {
            const l = enc.lengths[k]!;
            await packs.add(enc.data.subarray(off, off + l), d.digests, d.newAt[k]! * DIGEST_BYTES, d.ranges[k * 2 + 1]!);
            off += l;
          }
        }
        slots.give(batchSlot);
        doneBytes += len;
        opts.onProgress?.({ doneBytes, totalBytes: sizeBytes });
      });
      appendP.catch(fail);
      lastAppend = appendP;
    }
    await Promise.allSettled([lastDecide, lastAppend]);
    if (signal?.aborted) failure = asCancelledIfAborted(failure, signal, 'backup');
    if (failure !== undefined) {
      await packs.drain();
      throw failure;
    }
    if (sizeBytes === 0) opts.onProgress?.({ doneBytes: 0, totalBytes: 0 });

    // W1: every pack is durable before anything refers to it.
    const written = await packs.finish();
    let chunkMapBytes = 0;
    if (written.length) chunkMapBytes = (await repo.writeChunkMapFile(written)).storedBytes;
    // W2: the index (last segment) before the manifest.
    if (segFill > 0 || segments.length === 0) await flushSegment();
    throwIfAborted(signal);

    const volumeDigest = root.digestHex();
    stats.packsWritten = written.length;
    stats.storedBytes = packs.storedBytes + chunkMapBytes + indexStoredBytes;
    stats.objectsWritten = written.length + (written.length ? 1 : 0) + segments.length;
    stats.durationMs = Math.round(performance.now() - started);
    const manifest: BackupManifestV2 = {
      formatVersion: 2,
      id: backupId,
      volume: opts.volume,
      sizeBytes,
      chunkSizeBytes: chunkSize,
      chunkCount,
      indexSegments: segments,
      volumeDigest,
      parentId: parent?.id ?? null,
      kind: parent ? 'incremental' : 'full',
      createdAt,
      completedAt: new Date().toISOString(),
      stats: { ...stats },
    };
    // W3: the manifest last; from here on the backup exists.
    const manifestBytes = await repo.writeManifest(manifest);
    stats.storedBytes += manifestBytes;
    stats.objectsWritten += 1;
    stats.durationMs = Math.round(performance.now() - started);
    return { manifest, stats, checkedChunks: checker?.checkedChunks ?? 0, damagedChunks: checker?.damagedChunks ?? 0, readBytes, changedBlockTracking: cbt !== null, ...(cbtDistrusted ? { changedBlockTrackingDistrusted: cbtDistrusted } : {}) };
  } finally {
    signal?.removeEventListener('abort', onAbort);
    if (ownPool) await pool.close();
    await lock.release();
  }
}

/**
 * A checked backup's reuse decisions (Q3): each stored chunk it would deduplicate against is read
 * and checked once; sound ones are reused, damaged or missing ones quarantined (so that other
 * backups stop using them too) and stored again. Batches are checked concurrently, out of order;
 * a chunk met again while its check runs waits for that check.
 */
class ReuseChecker {
  private readonly sound = new ChunkMap();
  private readonly bad = new ChunkMap();
  private readonly inFlight = new Map<string, Promise<void>>();
  checkedChunks = 0;
  damagedChunks = 0;
  private readonly repo: Repository;
  private readonly map: ChunkMap;
  private readonly pool: ChunkWorkerPool;
  private readonly condemned: CondemnedSet;
  private readonly quarantine: Quarantine;
  private readonly signal: AbortSignal;

  constructor(repo: Repository, map: ChunkMap, pool: ChunkWorkerPool, condemned: CondemnedSet, quarantine: Quarantine, signal: AbortSignal) {
    this.repo = repo;
    this.map = map;
    this.pool = pool;
    this.condemned = condemned;
    this.quarantine = quarantine;
    this.signal = signal;
  }

  isSound(digests: Uint8Array, off: number): boolean {
    return this.sound.has(digests, off);
  }

  async checkBatch(digests: Uint8Array, n: number): Promise<void> {
    const waits: Promise<void>[] = [];
    const entries: number[] = [];
    const hexes: string[] = [];
    for (let i = 0; i < n; i++) {
      const off = i * DIGEST_BYTES;
      if (this.sound.has(digests, off) || this.bad.has(digests, off)) continue;
      const e = this.map.find(digests, off);
      if (e < 0 || this.condemned.digests.has(digests, off) || this.quarantine.applies(this.map, digests, off)) continue; // stored again anyway
      const hex = digestHex(digests, off);
      const running = this.inFlight.get(hex);
      if (running) {
        waits.push(running);
        continue;
      }
      entries.push(e);
      hexes.push(hex);
    }
    if (entries.length) {
      const run = this.runChecks(entries).finally(() => {
        for (const h of hexes) this.inFlight.delete(h);
      });
      for (const h of hexes) this.inFlight.set(h, run);
      waits.push(run);
    }
    await Promise.all(waits);
  }

  private async runChecks(entries: number[]): Promise<void> {
    const result = await checkStoredChunks(this.repo, this.map, entries, this.pool, this.signal);
    const findings: QuarantineFinding[] = [];
    for (const [e, cond] of result) {
      const digest = this.map.digestOf(e);
      this.checkedChunks++;
      if (cond === 0) {
        this.sound.set(digest, 0, NEW_LOC);
        continue;
      }
      this.bad.set(digest, 0, NEW_LOC);
      this.damagedChunks++;
      findings.push({ digest: digestHex(digest), packId: this.map.packIds[this.map.locationOf(e).packNo]!, foundBy: 'backup', reason: cond === 1 ? 'damaged (a full backup\'s check)' : 'missing (a full backup\'s check)' });
    }
    if (findings.length) await quarantineQuietly(this.repo, findings);
  }
}
