/**
 * BackupImage: one backup read at random, as a disk: what `haven nbd`, the service's exports and a
 * live restore serve. A restore (restore-reader.ts) goes through the whole volume once, in order;
 * here any range is asked for at any time, by several clients at once, and the first byte must come
 * without reading the rest. So:
 *
 * - The index is read per segment, when a range first needs it (a 4 GiB backup's one segment is
 *   2 MiB; a segment holds up to 1 Mi chunks), and at most MAX_SEGMENTS are kept.
 * - A chunk is fetched and decoded once and kept in a cache bounded in bytes (least recently used
 *   go first), keyed by digest: chunks that repeat within the backup (deduplicated) are one entry.
 * - Chunks missing from the cache for one request are fetched together: neighbours in a pack are
 *   one ranged read (gaps up to COALESCE_GAP), decoded in the chunk workers, every chunk checked
 *   against its digest (format-2 manifests) as in a restore; a damaged one is quarantined (Q1).
 * - A request that continues where an earlier one ended (a sequential reader: nbdcopy, qemu-img
 *   convert, a booting VM) starts a read-ahead of the next chunks, so the next requests find them.
 * - Holes (all-zero chunks, never stored) are reported as such, never read or decoded.
 *
 * A GC that ran before the caller's read lock may have moved a chunk (docs/design.md G6): a chunk
 * not found is looked up once more in a freshly loaded chunk map, shared with every image of the
 * same `ImageSource`.
 */
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { DIGEST_BYTES, digestHex, isZeroDigest } from './chunk-digest.ts';
import type { ChunkMap } from './chunk-map.ts';
import type { BackupManifest } from './manifest.ts';
import { packKey } from './pack-format.ts';
import { quarantineQuietly } from './quarantine.ts';
import { ObjectNotFoundError } from '../storage/object-store.ts';
import { ChunkCache, SpanBuffers, type CachedChunk } from './chunk-cache.ts';
import { PAGE_BYTES } from '../storage/aligned-memory.ts';
import type { Repository } from './repository.ts';
import type { ChunkWorkerPool } from './worker-pool.ts';

/** Bytes between two chunks of a pack read through rather than split into two requests. */
const COALESCE_GAP = 256 * 1024;
/** Sequential readers followed at once per image. */
const MAX_STREAMS = 32;
/** Raw bytes one decode task takes (tasks run in parallel on the chunk workers). */
const DECODE_TASK_BYTES = 4 * 1024 * 1024;
/** The longest pack range one fetch reads. */
const MAX_SPAN_BYTES = 16 * 1024 * 1024;
/** Index segments kept in memory per image (32 MiB each at most). */
const MAX_SEGMENTS = 4;
/** Default bytes of decoded chunks kept per image source. */
export const DEFAULT_CACHE_BYTES = 128 * 1024 * 1024;
/** Default read-ahead of a sequential reader, at first. */
export const DEFAULT_READ_AHEAD_BYTES = 8 * 1024 * 1024;
/** The most a reader's read-ahead grows to, at most an eighth of the cache (several readers share it). */
const MAX_READ_AHEAD_BYTES = 32 * 1024 * 1024;

/** A run of an image: data, or a hole (reads as zeros, nothing stored). */
export interface ImageExtent {
  offset: number;
  length: number;
  hole: boolean;
}

/** A piece of a read: `data` holds the bytes, or is absent for a hole (zeros). */
export interface ImagePiece {
  offset: number;
  length: number;
  data?: Uint8Array;
}

/** A read's pieces; their bytes stay valid until release() (the cache may then reuse them). */
export interface ImageRead {
  pieces: ImagePiece[];
  release(): void;
}

/**
 * What the images of one repository share: the chunk map (reloaded at most once per GC, G6), the
 * worker pool and the chunk cache (bounded in bytes, least recently used first out).
 */
export class ImageSource {
  readonly repo: Repository;
  readonly pool: ChunkWorkerPool;
  readonly readAheadBytes: number;
  /** What a sequential reader's read-ahead doubles up to, as it goes on. */
  readonly maxReadAheadBytes: number;
  /** Decoded chunks, in a reused arena (chunk-cache.ts). */
  readonly cache: ChunkCache;
  /** Buffers fetched pack ranges are read into, reused. */
  readonly spans = new SpanBuffers();
  private mapPromise: Promise<ChunkMap> | null = null;
  private mapGeneration = 0;

  constructor(repo: Repository, pool: ChunkWorkerPool, opts: { cacheBytes?: number; readAheadBytes?: number; map?: ChunkMap } = {}) {
    this.repo = repo;
    this.pool = pool;
    this.cache = new ChunkCache(opts.cacheBytes ?? DEFAULT_CACHE_BYTES, repo.config.chunkSizeBytes);
    // Several readers share the cache: one's read-ahead takes at most an eighth of it by default (a
    // read-ahead the cache cannot hold is evicted before it is read, and fetched again).
    const eighth = Math.max(repo.config.chunkSizeBytes, Math.floor((opts.cacheBytes ?? DEFAULT_CACHE_BYTES) / 8));
    this.readAheadBytes = opts.readAheadBytes ?? Math.min(DEFAULT_READ_AHEAD_BYTES, eighth);
    this.maxReadAheadBytes = opts.readAheadBytes === 0 ? 0 : Math.max(this.readAheadBytes, Math.min(MAX_READ_AHEAD_BYTES, eighth));
    if (opts.map) this.mapPromise = Promise.resolve(opts.map);
  }

  /** The chunk map and its generation (which reload it is). */
  async chunkMap(): Promise<{ map: ChunkMap; generation: number }> {
    this.mapPromise ??= this.repo.loadChunkMap().then((r) => r.map);
    const generation = this.mapGeneration;
    try {
      return { map: await this.mapPromise, generation };
    } catch (err) {
      if (this.mapGeneration === generation) this.mapPromise = null; // a failed load is tried again next time
      throw err;
    }
  }

  /** Loads the chunk map again, once for all callers that saw generation `seen`. */
  async reloadMap(seen: number): Promise<void> {
    if (seen === this.mapGeneration) {
      this.mapGeneration++;
      this.mapPromise = this.repo.loadChunkMap().then((r) => r.map);
    }
    await this.chunkMap();
  }
}

export class BackupImage {
  readonly manifest: BackupManifest;
  readonly sizeBytes: number;
  readonly chunkSize: number;
  private readonly src: ImageSource;
  private readonly segments = new Map<number, Promise<Buffer>>();
  /** First chunk of each index segment, and one past the last. */
  private readonly segStarts: number[];
  /** Sequential readers: where each one's last request ended, how far its read-ahead goes and how far it may go (chunk numbers). */
  private readonly streams: { end: number; ahead: number; window: number }[] = [];
  private readonly what: string;

  constructor(src: ImageSource, manifest: BackupManifest) {
    this.src = src;
    this.manifest = manifest;
    this.sizeBytes = manifest.sizeBytes;
    this.chunkSize = manifest.chunkSizeBytes;
    this.what = `backup ${manifest.id}`;
    this.segStarts = [0];
    for (const ref of manifest.indexSegments) this.segStarts.push(this.segStarts[this.segStarts.length - 1]! + ref.chunks);
    if (this.segStarts[this.segStarts.length - 1] !== manifest.chunkCount) throw new AppError(ErrorCode.RepositoryCorrupt, `index of ${this.what} lists ${this.segStarts[this.segStarts.length - 1]} chunks, manifest says ${manifest.chunkCount}`);
  }

  /** Reads the index segment holding chunk `i` (kept: the MAX_SEGMENTS most recent). */
  private async segmentOf(i: number): Promise<{ seg: Buffer; first: number }> {
    let s = 0;
    while (this.segStarts[s + 1]! <= i) s++;
    let p = this.segments.get(s);
    if (p) {
      this.segments.delete(s);
    } else {
      p = this.src.repo.readIndexSegment(this.manifest.indexSegments[s]!, this.what);
      p.catch(() => this.segments.delete(s));
    }
    this.segments.set(s, p);
    for (const k of this.segments.keys()) {
      if (this.segments.size <= MAX_SEGMENTS) break;
      this.segments.delete(k);
    }
    return { seg: await p, first: this.segStarts[s]! };
  }

  /** The digests of chunks [a, b), one view per segment touched. */
  private async digests(a: number, b: number): Promise<{ first: number; digests: Buffer }[]> {
    const out: { first: number; digests: Buffer }[] = [];
    let i = a;
    while (i < b) {
      const { seg, first } = await this.segmentOf(i);
      const end = Math.min(b, first + seg.length / DIGEST_BYTES);
      out.push({ first: i, digests: seg.subarray((i - first) * DIGEST_BYTES, (end - first) * DIGEST_BYTES) });
      i = end;
    }
    return out;
  }

  private chunkLength(i: number): number {
    return Math.min(this.chunkSize, this.sizeBytes - i * this.chunkSize);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new AppError(ErrorCode.InvalidArgument, `range ${offset}+${length} lies outside ${this.what} (${this.sizeBytes} bytes)`);
    }
  }

  /** Data and holes over [offset, offset + length), neighbouring runs of a kind merged. */
  async extents(offset: number, length: number): Promise<ImageExtent[]> {
    this.checkRange(offset, length);
    const out: ImageExtent[] = [];
    if (length === 0) return out;
    const end = offset + length;
    const a = Math.floor(offset / this.chunkSize);
    const b = Math.ceil(end / this.chunkSize);
    for (const { first, digests } of await this.digests(a, b)) {
      for (let k = 0; k * DIGEST_BYTES < digests.length; k++) {
        const i = first + k;
        const s = Math.max(offset, i * this.chunkSize);
        const e = Math.min(end, i * this.chunkSize + this.chunkLength(i));
        const hole = isZeroDigest(digests, k * DIGEST_BYTES);
        const last = out[out.length - 1];
        if (last && last.hole === hole) last.length += e - s;
        else out.push({ offset: s, length: e - s, hole });
      }
    }
    return out;
  }

  /**
   * The bytes of [offset, offset + length) as pieces in order: views of decoded chunks (the
   * cache's: not to be changed, and valid until release()), and holes without data. Every stored
   * chunk was checked against its digest when decoded.
   */
  async read(offset: number, length: number, signal?: AbortSignal): Promise<ImageRead> {
    this.checkRange(offset, length);
    if (length === 0) return { pieces: [], release: () => undefined };
    const end = offset + length;
    const a = Math.floor(offset / this.chunkSize);
    const b = Math.ceil(end / this.chunkSize);
    const spans = await this.digests(a, b);
    this.readAhead(a, b);
    if (signal?.aborted) throw signal.reason;
    const chunks = await this.load(spans);
    const pieces: ImagePiece[] = [];
    for (let i = a; i < b; i++) {
      const s = Math.max(offset, i * this.chunkSize);
      const e = Math.min(end, i * this.chunkSize + this.chunkLength(i));
      const c = chunks[i - a];
      const last = pieces[pieces.length - 1];
      if (!c) {
        if (last && !last.data) last.length += e - s;
        else pieces.push({ offset: s, length: e - s });
      } else {
        pieces.push({ offset: s, length: e - s, data: c.data.subarray(s - i * this.chunkSize, e - i * this.chunkSize) });
      }
    }
    let released = false;
    return {
      pieces,
      release: () => {
        if (released) return;
        released = true;
        for (const c of chunks) if (c) this.src.cache.unpin(c.slot);
      },
    };
  }

  /**
   * Whether a piece's bytes may be written with direct I/O (O_DIRECT): they lie in the cache's
   * page-aligned arena at a page boundary (a chunk's start).
   */
  directWritable(data: Uint8Array): boolean {
    return this.src.cache.aligned && data.buffer === this.src.cache.memory && data.byteOffset % PAGE_BYTES === 0;
  }

  /**
   * Starts fetching the chunks after [a, b) when this request continues an earlier one (a stream:
   * nbdcopy reads several regions at once, one per connection, skipping holes): up to the stream's window past the
   * request, topped up once half of it has been consumed. The window starts at the source's
   * read-ahead and doubles at each top-up up to its maximum, so a long stream is fetched in large
   * ranges (one read and few decode tasks per several MiB: each costs the event loop about as much
   * whatever its size).
   */
  private readAhead(a: number, b: number): void {
    const first = Math.max(1, Math.floor(this.src.readAheadBytes / this.chunkSize));
    // A request that starts where a stream ended, or further on within what it read ahead (a reader
    // that skips holes: nbdcopy and qemu-img read only the data block status shows), continues it.
    const stream = this.streams.find((st) => st.end === a) ?? this.streams.find((st) => st.end < a && a < st.ahead);
    if (!stream) {
      this.streams.push({ end: b, ahead: b, window: first });
      if (this.streams.length > MAX_STREAMS) this.streams.shift();
      return;
    }
    stream.end = b;
    if (stream.ahead - b > stream.window / 2) return;
    const from = Math.max(stream.ahead, b);
    const to = Math.min(this.manifest.chunkCount, b + stream.window);
    stream.window = Math.max(first, Math.min(Math.floor(this.src.maxReadAheadBytes / this.chunkSize), stream.window * 2));
    if (from >= to) return;
    stream.ahead = to;
    void this.digests(from, to)
      .then((spans) => void this.fetchMissing(spans))
      .catch(() => undefined); // a read-ahead that fails costs nothing: the real read reports it
  }

  /**
   * The decoded chunks of the given digest spans, in order (null: a hole): from the cache, from a
   * fetch already running, or fetched now, neighbours in a pack together. Every chunk returned is
   * pinned for the caller (unpinned by its read's release()).
   */
  private async load(spans: { first: number; digests: Buffer }[]): Promise<(CachedChunk | null)[]> {
    const cache = this.src.cache;
    // Every chunk is cached or being fetched once fetchMissing() returns (nothing lands in between).
    const out = this.fetchMissing(spans).map((key) => (key === null ? null : cache.take(key, true)!));
    if (!out.some((c) => c instanceof Promise)) return out as (CachedChunk | null)[]; // all cached: no waiting at all
    const settled = await Promise.allSettled(out);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const got = settled.map((r) => (r.status === 'fulfilled' ? r.value : null));
    if (failed) {
      for (const c of got) if (c) cache.unpin(c.slot);
      throw failed.reason;
    }
    return got;
  }

  /**
   * Starts fetching the chunks of the spans that are neither cached nor being fetched, waiting for
   * none (a read-ahead uses it alone); returns every chunk's cache key in order (null: a hole).
   */
  private fetchMissing(spans: { first: number; digests: Buffer }[]): (string | null)[] {
    const cache = this.src.cache;
    const keys: (string | null)[] = [];
    const need: Need[] = [];
    // This fetch's token: only it lands or abandons the chunks it announced. It is shared by every
    // reader that waits for them, so no one reader's abort (a client gone) stops it.
    const owner = {};
    for (const { first, digests } of spans) {
      for (let k = 0; k * DIGEST_BYTES < digests.length; k++) {
        const at = k * DIGEST_BYTES;
        if (isZeroDigest(digests, at)) {
          keys.push(null);
          continue;
        }
        const key = cacheKey(digests, at);
        keys.push(key);
        if (cache.known(key)) continue;
        cache.begin(key, owner);
        need.push({ key, digests, at, index: first + k, owner });
      }
    }
    if (need.length) this.fetch(need).catch((err: unknown) => cache.abandon([], need.map((n) => n.key), err, owner));
    return keys;
  }

  /** Fetches and decodes chunks not in the cache; each one's waiters get it as it lands. */
  private async fetch(need: Need[]): Promise<void> {
    let left = need;
    for (let attempt = 0; ; attempt++) {
      const { map, generation } = await this.src.chunkMap();
      try {
        await this.fetchFrom(map, left);
        return;
      } catch (err) {
        // G6: a GC that ran before this reader's lock may have moved the chunk; look once more,
        // for the chunks that have not landed.
        if (attempt === 0 && isAppError(err, ErrorCode.ChunkMissing)) {
          await this.src.reloadMap(generation);
          left = left.filter((n) => this.src.cache.awaits(n.key, n.owner));
          continue;
        }
        const found = isAppError(err) ? (err.details?.chunks as { digest: string; packId: string }[] | undefined) : undefined;
        if (found?.length) await quarantineQuietly(this.src.repo, found.map((c) => ({ ...c, foundBy: 'restore' as const, reason: (err as Error).message })));
        throw err;
      }
    }
  }

  private async fetchFrom(map: ChunkMap, need: Need[]): Promise<void> {
    const reads: Read[] = need.map((n) => {
      const loc = map.get(n.digests, n.at);
      if (!loc) throw new AppError(ErrorCode.ChunkMissing, `chunk ${digestHex(n.digests, n.at)} of ${this.what} is missing from the repository`);
      const expect = this.chunkLength(n.index);
      if (loc.rawLength !== expect) {
        throw new AppError(ErrorCode.ChunkCorrupt, `chunk ${digestHex(n.digests, n.at)} of ${this.what} holds ${loc.rawLength} bytes where ${expect} belong`, { details: { chunks: [{ digest: digestHex(n.digests, n.at), packId: map.packIds[loc.packNo]! }] } });
      }
      return { n, packId: map.packIds[loc.packNo]!, offset: loc.offset, length: loc.length, rawLength: loc.rawLength };
    });
    // One ranged read per run of neighbours in a pack.
    const order = reads.map((_, k) => k).sort((x, y) => {
      const p = reads[x]!;
      const q = reads[y]!;
      return p.packId < q.packId ? -1 : p.packId > q.packId ? 1 : p.offset - q.offset;
    });
    const runs: { packId: string; start: number; end: number; members: Read[] }[] = [];
    for (const k of order) {
      const r = reads[k]!;
      const last = runs[runs.length - 1];
      if (last && last.packId === r.packId && r.offset - last.end <= COALESCE_GAP && r.offset + r.length - last.start <= MAX_SPAN_BYTES) {
        last.end = Math.max(last.end, r.offset + r.length);
        last.members.push(r);
      } else runs.push({ packId: r.packId, start: r.offset, end: r.offset + r.length, members: [r] });
    }
    // Every run settles before an error is reported (a retry must not race runs still decoding).
    const results = await Promise.allSettled(
      runs.map(async (run) => {
        // Read into a reused shared buffer, which the decode reads in place (nothing is transferred away).
        const len = run.end - run.start;
        const buffer = this.src.spans.take(len);
        const into = new Uint8Array(buffer, 0, len);
        let body: Uint8Array;
        try {
          try {
            body = await this.src.repo.store.get(packKey(run.packId), { offset: run.start, length: len, into, immutable: true });
          } catch (err) {
            if (err instanceof ObjectNotFoundError) throw new AppError(ErrorCode.ChunkMissing, `pack ${run.packId} needed by ${this.what} is missing`, { cause: err });
            throw err;
          }
          if (body.buffer !== buffer) {
            into.set(body.subarray(0, Math.min(len, body.length)));
            body = into.subarray(0, Math.min(len, body.length));
          }
          if (body.length < len) {
            const chunks = run.members.map((r) => ({ digest: digestHex(r.n.digests, r.n.at), packId: run.packId }));
            throw new AppError(ErrorCode.ChunkCorrupt, `pack ${run.packId} needed by ${this.what} is truncated`, { details: { chunks } });
          }
          // Decoded in tasks of about DECODE_TASK_BYTES, in parallel on the workers; each task's
          // chunks are handed out as soon as it is done.
          const tasks: Read[][] = [[]];
          let taskBytes = 0;
          for (const r of run.members) {
            if (taskBytes >= DECODE_TASK_BYTES) {
              tasks.push([]);
              taskBytes = 0;
            }
            tasks[tasks.length - 1]!.push(r);
            taskBytes += r.rawLength;
          }
          const decoded = await Promise.allSettled(tasks.map((members) => this.decode(body, run.start, run.packId, members)));
          const bad = decoded.find((r): r is PromiseRejectedResult => r.status === 'rejected');
          if (bad) throw bad.reason;
        } finally {
          this.src.spans.give(buffer);
        }
      }),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Decodes (and checks) chunks of one fetched span into cache slots (else private memory); each lands in the cache. */
  private async decode(body: Uint8Array, spanStart: number, packId: string, reads: Read[]): Promise<void> {
    const cache = this.src.cache;
    const fits = reads.every((r) => r.rawLength <= cache.slotBytes);
    const slots = fits ? cache.allocate(reads.length) : null;
    const out = slots ? cache.memory : new SharedArrayBuffer(reads.reduce((n, r) => n + r.rawLength, 0));
    const task: number[] = [];
    const expected = new Uint8Array(reads.length * DIGEST_BYTES);
    const places: number[] = [];
    let pos = 0;
    reads.forEach((r, j) => {
      const place = slots ? slots[j]! * cache.slotBytes : pos;
      task.push(0, r.offset - spanStart, r.length, r.rawLength, place);
      places.push(place);
      pos += r.rawLength;
      expected.set(r.n.digests.subarray(r.n.at, r.n.at + DIGEST_BYTES), j * DIGEST_BYTES);
    });
    const check = this.manifest.formatVersion === 2 ? { digests: expected, digest: this.src.repo.chunkDigest } : undefined;
    let bad: number;
    try {
      bad = await this.src.pool.decodeInto({ bodies: [body], chunks: task, out, encKey: this.src.repo.keys?.encKey, check });
    } catch (err) {
      cache.abandon(slots ?? [], reads.map((r) => r.n.key), err, reads[0]!.n.owner);
      throw err;
    }
    if (bad >= 0) {
      const digest = digestHex(reads[bad]!.n.digests, reads[bad]!.n.at);
      const err = new AppError(ErrorCode.ChunkCorrupt, `chunk ${digest} of ${this.what} is damaged`, { details: { chunks: [{ digest, packId }] } });
      cache.abandon(slots ?? [], reads.map((r) => r.n.key), err, reads[0]!.n.owner);
      throw err;
    }
    reads.forEach((r, j) => cache.land(r.n.key, slots ? slots[j]! : -1, new Uint8Array(out, places[j]!, r.rawLength)));
  }
}

/** The cache's key of the digest at `at`: its bytes as a 32-character string (latin1, cheaper to make than base64). */
function cacheKey(digests: Buffer, at: number): string {
  return digests.toString('latin1', at, at + DIGEST_BYTES);
}

/** A chunk to fetch: its digest (key, and where in the index) and its place in the volume. */
interface Need {
  key: string;
  /** The fetch that announced it (chunk-cache.ts). */
  owner: object;
  digests: Buffer;
  at: number;
  index: number;
}

/** A chunk to fetch and where it lies in its pack. */
interface Read {
  n: Need;
  packId: string;
  offset: number;
  length: number;
  rawLength: number;
}

/**
 * Reads of several ranges as one read (in order): the parts are read at once; if one fails, the
 * others are released.
 */
export async function joinReads(parts: Promise<ImageRead>[]): Promise<ImageRead> {
  const settled = await Promise.allSettled(parts);
  const ok = settled.filter((r): r is PromiseFulfilledResult<ImageRead> => r.status === 'fulfilled').map((r) => r.value);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    for (const r of ok) r.release();
    throw failed.reason;
  }
  return { pieces: ok.flatMap((r) => r.pieces), release: () => ok.forEach((r) => r.release()) };
}

/**
 * The extents of a disk made of two layers: runs its own layer holds (data) and runs that come from
 * the layer below (its extents); neighbouring extents of a kind merged. Overlays and live restores.
 */
export async function layeredExtents(runs: readonly { offset: number; length: number; own: boolean }[], below: (offset: number, length: number) => Promise<ImageExtent[]>): Promise<ImageExtent[]> {
  const out: ImageExtent[] = [];
  for (const r of runs) {
    for (const e of r.own ? [{ offset: r.offset, length: r.length, hole: false }] : await below(r.offset, r.length)) {
      const last = out[out.length - 1];
      if (last && last.hole === e.hole) last.length += e.length;
      else out.push({ ...e });
    }
  }
  return out;
}

/** A read of bytes the caller owns (nothing to release). */
export function ownedRead(pieces: ImagePiece[]): ImageRead {
  return { pieces, release: () => undefined };
}

/** Copies pieces of a read that began at `offset` into `into` (holes as zeros). */
export function copyPieces(pieces: readonly ImagePiece[], into: Uint8Array, offset: number): void {
  for (const p of pieces) {
    if (p.data) into.set(p.data, p.offset - offset);
    else into.fill(0, p.offset - offset, p.offset - offset + p.length);
  }
}
