/**
 * PackWriter: gathers encoded chunks into packs of about the repository's target size and stores
 * each pack durably, a bounded number in flight. Returns what it wrote, for the chunk-map file.
 *
 * Chunks are copied into pack buffers that are reused once their pack is stored (one filling, at
 * most `maxInFlight` being written): a backup allocates no per-pack memory, so there is no garbage
 * for V8 to collect (collecting tens of MiB of transferred buffers per pack cost seconds per 4 GiB).
 * `maxInFlight` comes from the store (ObjectStore.writeConcurrency: 1 on a local disk, several to
 * S3), so a writer holds at most 1 + maxInFlight pack buffers of the target size plus 1 MiB.
 */
import { randomBytes } from 'node:crypto';
import { DIGEST_BYTES } from './chunk-digest.ts';
import { ENTRY_BYTES, PACK_TRAILER_BYTES, packKey, packTrailer, writeEntry, type PackEntries } from './pack-format.ts';
import type { Repository } from './repository.ts';
import type { Body } from '../storage/object-store.ts';

export class PackWriter {
  private readonly repo: Repository;
  private readonly targetBytes: number;
  private readonly maxInFlight: number;
  private buf: Uint8Array | null = null;
  private readonly freeBufs: Uint8Array[] = [];
  private size = 0;
  private entries: Uint8Array;
  private entryCount = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown = undefined;
  readonly written: PackEntries[] = [];
  storedBytes = 0;
  private readonly signal: AbortSignal | undefined;
  /** An add() is running (they must not overlap). */
  private adding = false;

  constructor(repo: Repository, opts: { maxInFlight?: number; signal?: AbortSignal | undefined } = {}) {
    this.repo = repo;
    this.targetBytes = repo.config.packTargetBytes;
    // The store knows how many puts it takes at once to best effect (S3: HAVEN_S3_CONCURRENCY).
    this.maxInFlight = Math.max(1, opts.maxInFlight ?? repo.store.writeConcurrency ?? 1);
    this.entries = new Uint8Array(256 * ENTRY_BYTES);
    this.signal = opts.signal;
  }

  /**
   * Adds one encoded chunk (`blob`) whose digest is digests[dOff..dOff+32]. Calls must not overlap
   * (each is awaited before the next): the buffer being filled is shared state.
   */
  async add(blob: Uint8Array, digests: Uint8Array, dOff: number, rawLength: number): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.adding) throw new Error('PackWriter.add called while a previous add is still running');
    this.adding = true;
    try {
      await this.addOne(blob, digests, dOff, rawLength);
    } finally {
      this.adding = false;
    }
  }

  private async addOne(blob: Uint8Array, digests: Uint8Array, dOff: number, rawLength: number): Promise<void> {
    if ((this.entryCount + 1) * ENTRY_BYTES > this.entries.length) {
      const bigger = new Uint8Array(this.entries.length * 2);
      bigger.set(this.entries);
      this.entries = bigger;
    }
    if (this.buf && this.size + blob.length > this.buf.length) {
      // Only a chunk larger than the room left over the target gets here: keep what was gathered.
      const bigger = new Uint8Array(this.size + blob.length);
      bigger.set(this.buf.subarray(0, this.size));
      this.repo.store.releaseBuffer?.(this.buf);
      this.buf = bigger;
    }
    if (!this.buf) {
      const free = this.freeBufs.pop();
      if (free && free.length >= blob.length) this.buf = free;
      else {
        if (free) this.repo.store.releaseBuffer?.(free); // too small for this chunk: back to the store's pool
        // From the store when it has a preferred kind (the local store: aligned for direct I/O).
        const n = Math.max(this.targetBytes + (1 << 20), blob.length);
        this.buf = (await this.repo.store.allocBuffer?.(n)) ?? new Uint8Array(n);
      }
    }
    writeEntry(this.entries, this.entryCount++, digests, dOff, this.size, blob.length, rawLength);
    this.buf.set(blob, this.size);
    this.size += blob.length;
    if (this.size >= this.targetBytes) await this.flush();
  }

  get pendingChunks(): number {
    return this.entryCount;
  }

  private async flush(): Promise<void> {
    if (this.entryCount === 0) return;
    while (this.inFlight.size >= this.maxInFlight) await Promise.race(this.inFlight);
    if (this.failure) throw this.failure;
    const entries = this.entries.slice(0, this.entryCount * ENTRY_BYTES);
    const header = this.repo.encode(entries);
    const buf = this.buf!;
    const bodyBytes = this.size + header.length + PACK_TRAILER_BYTES;
    let body: Body;
    if (bodyBytes <= buf.length) {
      // Header and trailer in the buffer's slack: one part, which an S3 PUT sends as it is instead
      // of concatenating the parts into a copy (a second pack-sized buffer per upload in flight).
      buf.set(header, this.size);
      buf.set(packTrailer(header.length), this.size + header.length);
      body = buf.subarray(0, bodyBytes);
    } else body = [buf.subarray(0, this.size), header, packTrailer(header.length)];
    this.buf = null;
    this.size = 0;
    this.entryCount = 0;
    const packId = randomBytes(16).toString('hex');
    const p = this.repo.store.put(packKey(packId), body, this.signal).then(
      () => {
        this.written.push({ packId, entries });
        this.storedBytes += bodyBytes;
      },
      (err: unknown) => {
        this.failure ??= err;
      },
    );
    const tracked = p.finally(() => {
      this.inFlight.delete(tracked);
      // Settled (stored, or failed, after which add() refuses): nothing reads the buffer any more.
      if (buf.length <= this.targetBytes + (1 << 20)) this.freeBufs.push(buf);
    });
    this.inFlight.add(tracked);
  }

  /** Flushes the last partial pack and waits until every pack is durable. */
  async finish(): Promise<PackEntries[]> {
    try {
      await this.flush();
    } finally {
      await Promise.allSettled(this.inFlight);
      this.releaseBuffers();
    }
    if (this.failure) throw this.failure;
    return this.written;
  }

  /** Waits for in-flight writes without flushing (used when aborting). */
  async drain(): Promise<void> {
    await Promise.allSettled(this.inFlight);
    this.releaseBuffers();
  }

  /** Gives the pack buffers back to the store (ObjectStore.releaseBuffer): nothing uses them any more. */
  private releaseBuffers(): void {
    if (this.buf) this.freeBufs.push(this.buf);
    this.buf = null;
    this.size = 0;
    this.entryCount = 0;
    for (const b of this.freeBufs.splice(0)) this.repo.store.releaseBuffer?.(b);
  }
}

