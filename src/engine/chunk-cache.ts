/**
 * ChunkCache: decoded chunks kept for random reads (backup-image.ts), in one shared arena of
 * chunk-sized slots that is reused, never reallocated. On the small VMs Haven runs on, the first
 * touch of fresh memory costs about 25 µs per 4 KiB page (see pack-fetcher.ts): a reader that
 * decoded every chunk into new memory paid more in page faults than in decoding (1 GiB through NBD:
 * 75,000 faults, 2.3 s of system time). Chunks are decoded straight into their slots by the
 * workers (the arena is a SharedArrayBuffer).
 *
 * A slot is pinned while its chunk is being decoded and while a reader uses its bytes (a reply on
 * its way into a socket, a write into a file): a pinned slot is never evicted or reused. Unpinned
 * cached slots go least recently used first. When every slot is pinned, a chunk is decoded into
 * private memory instead and not cached (slot -1).
 *
 * A chunk being fetched is known by its digest: a second reader waits for the first fetch, and its
 * pin is taken for it when the chunk lands.
 */

import { alignedMemory } from '../storage/aligned-memory.ts';

/** A chunk's decoded bytes; `slot` -1: private memory, not cached (nothing to unpin). */
export interface CachedChunk {
  data: Uint8Array;
  slot: number;
}

interface Inflight {
  /** The fetch that will land it (only that one may abandon it). */
  owner: object;
  /** Made when the first reader waits (a read-ahead's chunks mostly land before anyone asks). */
  waiting: PromiseWithResolvers<CachedChunk> | null;
  /** Readers waiting that take a pin when the chunk lands. */
  pending: number;
}

export class ChunkCache {
  readonly slotBytes: number;
  private readonly slots: number;
  private arena: SharedArrayBuffer | null = null;
  private readonly free: number[] = [];
  private readonly pins: Int32Array;
  private readonly keyOf: (string | null)[];
  private readonly lengthOf: Int32Array;
  /** Cached (decoded) chunks, least recently used first. */
  private readonly lru = new Map<string, number>();
  private readonly inflight = new Map<string, Inflight>();

  constructor(capacityBytes: number, slotBytes: number) {
    this.slotBytes = slotBytes;
    this.slots = Math.max(1, Math.floor(capacityBytes / slotBytes));
    this.pins = new Int32Array(this.slots);
    this.lengthOf = new Int32Array(this.slots);
    this.keyOf = new Array<string | null>(this.slots).fill(null);
    for (let i = this.slots - 1; i >= 0; i--) this.free.push(i);
  }

  /**
   * The arena (allocated at the first fetch; its pages are touched as slots are first used):
   * page-aligned memory where it can be had (aligned-memory.ts), so that slots can be written to
   * disk with direct I/O (a live restore).
   */
  get memory(): SharedArrayBuffer {
    if (!this.arena) {
      const n = this.slots * this.slotBytes;
      const aligned = alignedMemory.acquireShared(n);
      this.aligned = aligned !== null;
      this.arena = aligned?.memory ?? new SharedArrayBuffer(n);
    }
    return this.arena;
  }

  /** Whether the arena is page-aligned (known once it is allocated). */
  aligned = false;

  private view(slot: number): Uint8Array {
    return new Uint8Array(this.memory, slot * this.slotBytes, this.lengthOf[slot]!);
  }

  /**
   * A chunk known here: cached (returned, pinned when `pin`), or being fetched (its promise; the
   * pin is taken when it lands). Undefined: the caller fetches it (begin()).
   */
  take(key: string, pin: boolean): CachedChunk | Promise<CachedChunk> | undefined {
    const slot = this.touch(key);
    if (slot !== undefined) {
      if (pin) this.pins[slot]!++;
      return { data: this.view(slot), slot };
    }
    const f = this.inflight.get(key);
    if (f) {
      if (pin) f.pending++;
      if (!f.waiting) {
        f.waiting = Promise.withResolvers<CachedChunk>();
        f.waiting.promise.catch(() => undefined);
      }
      return f.waiting.promise;
    }
    return undefined;
  }

  /** Whether `key` is cached (then made the most recently used) or being fetched. */
  known(key: string): boolean {
    return this.touch(key) !== undefined || this.inflight.has(key);
  }

  /** The slot of a cached `key`, made the most recently used. */
  private touch(key: string): number | undefined {
    const slot = this.lru.get(key);
    if (slot !== undefined) {
      this.lru.delete(key);
      this.lru.set(key, slot);
    }
    return slot;
  }

  /**
   * Announces a fetch of `key` by `owner` (take() returned undefined); readers wait for it with
   * take() (its `pin` is then taken when it lands).
   */
  begin(key: string, owner: object): void {
    this.inflight.set(key, { owner, waiting: null, pending: 0 });
  }

  /** Whether `owner`'s fetch of `key` has yet to land. */
  awaits(key: string, owner: object): boolean {
    return this.inflight.get(key)?.owner === owner;
  }

  /**
   * `n` slots for chunks about to be decoded (pinned until land() or abandon()), or null when not
   * that many can be freed: the caller decodes into private memory.
   */
  allocate(n: number): number[] | null {
    const out: number[] = [];
    while (out.length < n && this.free.length) out.push(this.free.pop()!);
    if (out.length < n) {
      for (const [key, slot] of this.lru) {
        if (out.length === n) break;
        if (this.pins[slot] !== 0) continue;
        this.lru.delete(key);
        this.keyOf[slot] = null;
        out.push(slot);
      }
    }
    if (out.length < n) {
      for (const s of out) this.free.push(s);
      return null;
    }
    for (const s of out) this.pins[s] = 1;
    return out;
  }

  /** A chunk decoded into `slot` (or private memory, slot -1): cached, and handed to its waiters. */
  land(key: string, slot: number, data: Uint8Array): void {
    const f = this.inflight.get(key);
    this.inflight.delete(key);
    const cached = this.lru.get(key);
    if (cached !== undefined && slot >= 0) {
      // Landed twice (a fetch retried): the copy cached first stays; this slot goes back.
      this.pins[slot] = 0;
      this.free.push(slot);
      this.pins[cached]! += f?.pending ?? 0;
      f?.waiting?.resolve({ data: this.view(cached), slot: cached });
      return;
    }
    if (slot >= 0) {
      this.lengthOf[slot] = data.length;
      this.keyOf[slot] = key;
      this.lru.set(key, slot);
      this.pins[slot]! += (f?.pending ?? 0) - 1; // the waiters' pins for the decoder's
    }
    f?.waiting?.resolve({ data, slot });
  }

  /** Slots allocated for chunks that did not decode go back; `owner`'s waiters of `keys` get the error. */
  abandon(slots: readonly number[], keys: readonly string[], err: unknown, owner: object): void {
    for (const s of slots) {
      this.pins[s] = 0;
      if (this.keyOf[s] === null) this.free.push(s);
    }
    for (const k of keys) {
      const f = this.inflight.get(k);
      if (!f || f.owner !== owner) continue;
      this.inflight.delete(k);
      f.waiting?.reject(err);
    }
  }

  unpin(slot: number): void {
    if (slot >= 0 && this.pins[slot]! > 0) this.pins[slot]!--;
  }

  stats(): { cachedChunks: number; pinnedSlots: number; slots: number } {
    let pinned = 0;
    for (const p of this.pins) if (p > 0) pinned++;
    return { cachedChunks: this.lru.size, pinnedSlots: pinned, slots: this.slots };
  }
}

/**
 * Buffers for fetched pack ranges, reused by size class (powers of two from 64 KiB): each fetch
 * reads into one (ObjectStore.get's `into`) and gives it back once its chunks are decoded.
 */
export class SpanBuffers {
  private readonly classes = new Map<number, SharedArrayBuffer[]>();
  private pooled = 0;
  private readonly maxPooled: number;

  constructor(maxPooledBytes = 64 * 1024 * 1024) {
    this.maxPooled = maxPooledBytes;
  }

  static classOf(n: number): number {
    let c = 64 * 1024;
    while (c < n) c *= 2;
    return c;
  }

  take(n: number): SharedArrayBuffer {
    const c = SpanBuffers.classOf(n);
    const list = this.classes.get(c);
    const b = list?.pop();
    if (b) {
      this.pooled -= c;
      return b;
    }
    return new SharedArrayBuffer(c);
  }

  give(b: SharedArrayBuffer): void {
    if (this.pooled + b.byteLength > this.maxPooled) return;
    let list = this.classes.get(b.byteLength);
    if (!list) this.classes.set(b.byteLength, (list = []));
    list.push(b);
    this.pooled += b.byteLength;
  }
}
