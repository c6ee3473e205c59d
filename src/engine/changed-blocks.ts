/**
 * Changed-block tracking in a backup: when the source can say which byte ranges may have changed
 * since the previous backup (a QEMU dirty bitmap, see qemu/qemu-volume.ts), only those are read;
 * every other chunk is the previous backup's, named by its index without reading or hashing it.
 *
 * A chunk only partly dirty is completed from the previous backup's stored copy of that chunk
 * (fetched, decoded and checked against its digest), with the dirty blocks read from the disk over
 * it; where the dirty part is most of the chunk, or the stored copy cannot be used (missing,
 * damaged, condemned by GC, quarantined), the chunk is read whole from the disk. Why this and the
 * bitmap granularity: docs/design.md "Changed-block tracking".
 */
import { AppError, ErrorCode } from '../domain/errors.ts';
import { ObjectNotFoundError } from '../storage/object-store.ts';
import { DIGEST_BYTES, isZeroDigest } from './chunk-digest.ts';
import type { ChunkMap } from './chunk-map.ts';
import type { BackupManifest } from './manifest.ts';
import { packKey } from './pack-format.ts';
import type { Repository } from './repository.ts';
import type { Extent } from './volume-extents.ts';
import type { ChunkWorkerPool } from './worker-pool.ts';

/** What a source knows of its changes: every byte outside `extents` is as it was when backup `sinceBackupId` was taken. */
export interface ChangedBlocks {
  sinceBackupId: string;
  /** Sorted, disjoint byte ranges that may have changed. */
  extents: Extent[];
}

/** A dirty chunk with at least this share of its bytes dirty is read whole rather than completed from its stored copy. */
const READ_WHOLE_SHARE = 0.5;

/** What a backup does with one chunk. */
export const ChunkAction = {
  /** Reads as zeros (outside the data extents): a hole. */
  Hole: 0,
  /** Unchanged since the previous backup: its digest is the previous backup's, nothing is read. */
  Clean: 1,
  /** Read whole from the disk. */
  Read: 2,
  /** The previous copy (or zeros, where that was a hole) with the dirty ranges read over it. */
  Patch: 3,
} as const;

/** The previous backup's chunk digests, read one index segment at a time as the backup moves on. */
export class ParentIndex {
  private segNo = -1;
  private seg: Buffer | null = null;
  private segFirst = 0;
  private readonly repo: Repository;
  readonly manifest: BackupManifest;

  constructor(repo: Repository, manifest: BackupManifest) {
    this.repo = repo;
    this.manifest = manifest;
  }

  /** Digests of chunks [first, first + n), DIGEST_BYTES each. */
  async digests(first: number, n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n * DIGEST_BYTES);
    let filled = 0;
    while (filled < n) {
      const at = first + filled;
      await this.load(at);
      const inSeg = at - this.segFirst;
      const take = Math.min(n - filled, this.seg!.length / DIGEST_BYTES - inSeg);
      out.set(this.seg!.subarray(inSeg * DIGEST_BYTES, (inSeg + take) * DIGEST_BYTES), filled * DIGEST_BYTES);
      filled += take;
    }
    return out;
  }

  private async load(chunk: number): Promise<void> {
    if (this.seg && chunk >= this.segFirst && chunk < this.segFirst + this.seg.length / DIGEST_BYTES) return;
    let first = 0;
    const refs = this.manifest.indexSegments;
    for (let i = 0; i < refs.length; i++) {
      if (chunk < first + refs[i]!.chunks) {
        if (i !== this.segNo) {
          this.seg = await this.repo.readIndexSegment(refs[i]!, `backup ${this.manifest.id}`);
          this.segNo = i;
          this.segFirst = first;
        }
        return;
      }
      first += refs[i]!.chunks;
    }
    throw new AppError(ErrorCode.RepositoryCorrupt, `index of backup ${this.manifest.id} has no chunk ${chunk}`);
  }
}

/** The dirty ranges of [start, start + length), clipped to it. */
export function dirtyWithin(extents: readonly Extent[], start: number, length: number, from = 0): { ranges: Extent[]; next: number } {
  const end = start + length;
  let i = from;
  while (i < extents.length && extents[i]!.start + extents[i]!.length <= start) i++;
  const ranges: Extent[] = [];
  let j = i;
  while (j < extents.length && extents[j]!.start < end) {
    const s = Math.max(start, extents[j]!.start);
    const e = Math.min(end, extents[j]!.start + extents[j]!.length);
    if (e > s) ranges.push({ start: s, length: e - s });
    j++;
  }
  return { ranges, next: i };
}

/**
 * Plans one batch: an action per chunk and, for patched chunks, their dirty ranges. `usable(d, off)`
 * says whether a stored chunk may be referred to again (in the chunk map, not condemned or quarantined).
 */
export function planBatch(
  batchStart: number,
  len: number,
  chunkSize: number,
  isHole: (start: number, length: number) => boolean,
  changes: ChangedBlocks,
  cursor: { next: number },
  parentDigests: Uint8Array,
  usable: (digests: Uint8Array, off: number) => boolean,
): { actions: Uint8Array; patches: Map<number, Extent[]> } {
  const n = Math.ceil(len / chunkSize);
  const actions = new Uint8Array(n);
  const patches = new Map<number, Extent[]>();
  for (let i = 0; i < n; i++) {
    const start = batchStart + i * chunkSize;
    const cLen = Math.min(chunkSize, len - i * chunkSize);
    if (isHole(start, cLen)) {
      actions[i] = ChunkAction.Hole;
      continue;
    }
    const { ranges, next } = dirtyWithin(changes.extents, start, cLen, cursor.next);
    cursor.next = next;
    const off = i * DIGEST_BYTES;
    const parentHole = isZeroDigest(parentDigests, off);
    if (!ranges.length) {
      if (parentHole) actions[i] = ChunkAction.Hole; // unchanged zeros
      else actions[i] = usable(parentDigests, off) ? ChunkAction.Clean : ChunkAction.Read;
      continue;
    }
    const dirty = ranges.reduce((s, r) => s + r.length, 0);
    if (dirty >= cLen * READ_WHOLE_SHARE || (!parentHole && !usable(parentDigests, off))) {
      actions[i] = ChunkAction.Read;
      continue;
    }
    actions[i] = ChunkAction.Patch;
    patches.set(i, ranges);
  }
  return { actions, patches };
}

/**
 * Fetches and decodes the stored chunks `digests[at]` into `out` at `outOffsets` (each checked
 * against its digest), reading the stored bytes into `scratch` (the batch's buffer for encoded
 * chunks, free until the batch is encoded: reused memory, no page faults; it must hold the chunks'
 * stored lengths together). One ranged read per run of adjacent chunks in a pack, one decode task
 * for all. Resolves to the positions (indexes into `at`) that could not be used: missing, short or
 * damaged; the caller reads those chunks from the disk instead.
 */
export async function fetchPreviousChunks(
  repo: Repository,
  map: ChunkMap,
  digests: Uint8Array,
  at: number[],
  out: SharedArrayBuffer,
  outOffsets: number[],
  scratch: SharedArrayBuffer,
  pool: ChunkWorkerPool,
  signal?: AbortSignal,
): Promise<Set<number>> {
  const failed = new Set<number>();
  const items = at.map((d, k) => ({ k, e: map.find(digests, d * DIGEST_BYTES) })).filter((it) => {
    if (it.e < 0) failed.add(it.k);
    return it.e >= 0;
  });
  const sorted = items.map((it) => ({ ...it, loc: map.locationOf(it.e) })).sort((a, b) => a.loc.packNo - b.loc.packNo || a.loc.offset - b.loc.offset);
  // Runs of chunks back to back in one pack; each gets its place in `scratch`.
  const runs: { packNo: number; offset: number; end: number; at: number; items: typeof sorted }[] = [];
  let used = 0;
  for (const it of sorted) {
    const r = runs[runs.length - 1];
    if (r && r.packNo === it.loc.packNo && it.loc.offset === r.end) {
      r.end += it.loc.length;
      r.items.push(it);
    } else {
      runs.push({ packNo: it.loc.packNo, offset: it.loc.offset, end: it.loc.offset + it.loc.length, at: used, items: [it] });
    }
    used += it.loc.length;
  }
  if (used > scratch.byteLength) throw new AppError(ErrorCode.RepositoryCorrupt, `stored chunks larger than their encoding allows (${used} bytes for ${sorted.length} chunks)`);
  const arrived: typeof sorted = [];
  await Promise.all(
    runs.map(async (r) => {
      const into = new Uint8Array(scratch, r.at, r.end - r.offset);
      let got: Uint8Array;
      try {
        got = await repo.store.get(packKey(map.packIds[r.packNo]!), { offset: r.offset, length: r.end - r.offset, into, immutable: true, ...(signal ? { signal } : {}) });
      } catch (err) {
        if (!(err instanceof ObjectNotFoundError)) throw err;
        for (const it of r.items) failed.add(it.k);
        return;
      }
      if (got.buffer !== scratch || got.byteOffset !== into.byteOffset) into.set(got.subarray(0, into.length));
      let o = 0;
      for (const it of r.items) {
        if (o + it.loc.length > got.length) failed.add(it.k); // the pack is shorter than the chunk map says
        else arrived.push(it);
        o += it.loc.length;
      }
    }),
  );
  const runOf = new Map<(typeof sorted)[number], number>();
  for (const r of runs) {
    let o = r.at;
    for (const it of r.items) {
      runOf.set(it, o);
      o += it.loc.length;
    }
  }
  // decodeInto stops at the first chunk that fails its check; the rest are decoded again.
  const body = new Uint8Array(scratch);
  let from = 0;
  while (from < arrived.length) {
    const rest = arrived.slice(from);
    const chunks: number[] = [];
    const expected = new Uint8Array(rest.length * DIGEST_BYTES);
    rest.forEach((it, j) => {
      chunks.push(0, runOf.get(it)!, it.loc.length, it.loc.rawLength, outOffsets[it.k]!);
      expected.set(digests.subarray(at[it.k]! * DIGEST_BYTES, (at[it.k]! + 1) * DIGEST_BYTES), j * DIGEST_BYTES);
    });
    const bad = await pool.decodeInto({ bodies: [body], chunks, out, encKey: repo.keys?.encKey, check: { digests: expected, digest: repo.chunkDigest } }, signal);
    if (bad < 0) break;
    failed.add(rest[bad]!.k);
    from += bad + 1;
  }
  return failed;
}

/** Unchanged chunks a backup with changed-block tracking reads and compares first (docs/design.md). */
export const CBT_SAMPLE_CHUNKS = 32;

/**
 * The changes are not taken on trust: up to `count` chunks the source calls unchanged (and that may
 * hold data), picked at random, are read and hashed, and must have the previous backup's digests.
 * Resolves to how many were checked and read, and `mismatch`: the first chunk that differs (a
 * change the tracking missed, so the backup must read the whole volume), or null.
 */
export async function sampleUnchanged(
  source: { read(into: Uint8Array, length: number, position: number): Promise<number> },
  parent: ParentIndex,
  changes: ChangedBlocks,
  opts: { sizeBytes: number; chunkSize: number; isHole: (start: number, length: number) => boolean; pool: ChunkWorkerPool; digest: Parameters<ChunkWorkerPool['hash']>[0]['digest']; count?: number; signal?: AbortSignal },
): Promise<{ checked: number; readBytes: number; mismatch: number | null }> {
  const chunks = Math.ceil(opts.sizeBytes / opts.chunkSize);
  const want = Math.min(opts.count ?? CBT_SAMPLE_CHUNKS, chunks);
  const picked = new Set<number>();
  for (let tries = 0; picked.size < want && tries < want * 8; tries++) {
    const i = Math.floor(Math.random() * chunks);
    const start = i * opts.chunkSize;
    const len = Math.min(opts.chunkSize, opts.sizeBytes - start);
    if (opts.isHole(start, len) || dirtyWithin(changes.extents, start, len).ranges.length) continue;
    picked.add(i);
  }
  const order = [...picked].sort((a, b) => a - b); // the parent's index is read in order
  if (!order.length) return { checked: 0, readBytes: 0, mismatch: null };
  let readBytes = 0;
  const buf = new SharedArrayBuffer(order.length * opts.chunkSize);
  const expected = new Uint8Array(order.length * DIGEST_BYTES);
  for (const [k, i] of order.entries()) {
    expected.set(await parent.digests(i, 1), k * DIGEST_BYTES);
    const start = i * opts.chunkSize;
    const len = Math.min(opts.chunkSize, opts.sizeBytes - start);
    const view = new Uint8Array(buf, k * opts.chunkSize, opts.chunkSize);
    view.fill(0);
    readBytes += await source.read(view, len, start);
  }
  // Each sampled chunk hashed as a full chunk (a short last one is zero-padded here, so compared
  // only when it is the volume's last: its digest covers its own length).
  const got = await opts.pool.hash({ sab: buf, offset: 0, length: order.length * opts.chunkSize, chunkSizeBytes: opts.chunkSize, digest: opts.digest }, opts.signal);
  for (const [k, i] of order.entries()) {
    const len = Math.min(opts.chunkSize, opts.sizeBytes - i * opts.chunkSize);
    let d = got.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
    if (len < opts.chunkSize) d = await opts.pool.hash({ sab: buf, offset: k * opts.chunkSize, length: len, chunkSizeBytes: opts.chunkSize, digest: opts.digest }, opts.signal);
    const e = expected.subarray(k * DIGEST_BYTES, (k + 1) * DIGEST_BYTES);
    for (let b = 0; b < DIGEST_BYTES; b++) if (d[b] !== e[b]) return { checked: k + 1, readBytes, mismatch: i };
  }
  return { checked: order.length, readBytes, mismatch: null };
}
