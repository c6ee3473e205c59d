/**
 * ChunkMap: where every stored chunk lives (digest -> pack, offset, stored length, raw length).
 *
 * Written by hand because no library offers what the backup hot path needs: an open-addressing hash
 * table over typed arrays keyed by 32-byte digests, costing ~68 bytes per chunk with no per-entry
 * JS objects (a Map<string, object> costs ~200 bytes and GC pressure). Digests are uniformly random,
 * so their first 4 bytes are the hash. One mark bit per entry serves GC and verify.
 *
 * Memory: the map holds the repository's unique chunks, not the volume: 1 TiB of unique data at
 * 64 KiB chunks is 16 M entries, ~1.1 GiB. Volume size alone never grows it (see docs/design.md).
 */
import { DIGEST_BYTES } from './chunk-digest.ts';

export interface ChunkLocation {
  packNo: number;
  offset: number;
  length: number;
  rawLength: number;
}

const EMPTY = 0xffffffff;

export class ChunkMap {
  private capacity: number;
  private count = 0;
  /** slot -> entry number, EMPTY when free */
  private slots: Uint32Array;
  private digests: Uint8Array;
  /** per entry: packNo, offset, length, rawLength */
  private locs: Uint32Array;
  private marks: Uint8Array;
  /** pack number -> pack id */
  readonly packIds: string[] = [];
  private readonly packNos = new Map<string, number>();

  constructor(initialEntries = 1024) {
    let cap = 1024;
    while (cap * 0.7 < initialEntries) cap *= 2;
    this.capacity = cap;
    this.slots = new Uint32Array(cap).fill(EMPTY);
    const entries = Math.ceil(cap * 0.7) + 1;
    this.digests = new Uint8Array(entries * DIGEST_BYTES);
    this.locs = new Uint32Array(entries * 4);
    this.marks = new Uint8Array(entries);
  }

  get size(): number {
    return this.count;
  }

  packNo(packId: string): number {
    let n = this.packNos.get(packId);
    if (n === undefined) {
      n = this.packIds.length;
      this.packIds.push(packId);
      this.packNos.set(packId, n);
    }
    return n;
  }

  private findSlot(digest: Uint8Array, off: number): number {
    const mask = this.capacity - 1;
    let s = (digest[off]! | (digest[off + 1]! << 8) | (digest[off + 2]! << 16) | (digest[off + 3]! << 24)) & mask;
    for (;;) {
      const e = this.slots[s]!;
      if (e === EMPTY) return s;
      if (this.equalsEntry(e, digest, off)) return s;
      s = (s + 1) & mask;
    }
  }

  private equalsEntry(e: number, digest: Uint8Array, off: number): boolean {
    const base = e * DIGEST_BYTES;
    const d = this.digests;
    for (let i = 0; i < DIGEST_BYTES; i++) if (d[base + i] !== digest[off + i]) return false;
    return true;
  }

  /** Entry number of `digest`, or -1. */
  find(digest: Uint8Array, off = 0): number {
    const e = this.slots[this.findSlot(digest, off)]!;
    return e === EMPTY ? -1 : e;
  }

  has(digest: Uint8Array, off = 0): boolean {
    return this.find(digest, off) >= 0;
  }

  get(digest: Uint8Array, off = 0): ChunkLocation | undefined {
    const e = this.find(digest, off);
    return e < 0 ? undefined : this.locationOf(e);
  }

  locationOf(e: number): ChunkLocation {
    const l = this.locs;
    return { packNo: l[e * 4]!, offset: l[e * 4 + 1]!, length: l[e * 4 + 2]!, rawLength: l[e * 4 + 3]! };
  }

  digestOf(e: number): Uint8Array {
    return this.digests.subarray(e * DIGEST_BYTES, (e + 1) * DIGEST_BYTES);
  }

  /** Adds or replaces (the newest location wins) the location of a digest; returns the entry number. */
  set(digest: Uint8Array, off: number, loc: ChunkLocation): number {
    if ((this.count + 1) > this.capacity * 0.7) this.grow();
    const s = this.findSlot(digest, off);
    let e = this.slots[s]!;
    if (e === EMPTY) {
      e = this.count++;
      this.slots[s] = e;
      this.digests.set(digest.subarray(off, off + DIGEST_BYTES), e * DIGEST_BYTES);
    }
    const l = this.locs;
    l[e * 4] = loc.packNo;
    l[e * 4 + 1] = loc.offset;
    l[e * 4 + 2] = loc.length;
    l[e * 4 + 3] = loc.rawLength;
    return e;
  }

  mark(e: number): void {
    this.marks[e] = 1;
  }

  isMarked(e: number): boolean {
    return this.marks[e] === 1;
  }

  /** Iterates entry numbers 0..size-1. */
  *entries(): IterableIterator<number> {
    for (let e = 0; e < this.count; e++) yield e;
  }

  private grow(): void {
    const cap = this.capacity * 2;
    const entries = Math.ceil(cap * 0.7) + 1;
    const digests = new Uint8Array(entries * DIGEST_BYTES);
    digests.set(this.digests.subarray(0, this.count * DIGEST_BYTES));
    const locs = new Uint32Array(entries * 4);
    locs.set(this.locs.subarray(0, this.count * 4));
    const marks = new Uint8Array(entries);
    marks.set(this.marks.subarray(0, this.count));
    this.capacity = cap;
    this.digests = digests;
    this.locs = locs;
    this.marks = marks;
    this.slots = new Uint32Array(cap).fill(EMPTY);
    for (let e = 0; e < this.count; e++) this.slots[this.findSlot(digests, e * DIGEST_BYTES)] = e;
  }
}
