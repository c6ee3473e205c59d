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
import type { Repository } from './repository.ts';
import type { ChunkWorkerPool } from './worker-pool.ts';

/** Bytes between two chunks of a pack read through rather than split into two requests. */
const COALESCE_GAP = 256 * 1024;
/** Sequential readers followed at once per image. */
const MAX_STREAMS = 32;
/** Raw bytes one decode task takes (tasks run in parallel on the chunk workers). */
const DECODE_TASK_BYTES = 1024 * 1024;
/** Index segments kept in memory per image (32 MiB each at most). */
const MAX_SEGMENTS = 4;
/** Default bytes of decoded chunks kept per image source. */
export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;
/** Default read-ahead of a sequential reader. */
export const DEFAULT_READ_AHEAD_BYTES = 16 * 1024 * 1024;

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

/**
 * What the images of one repository share: the chunk map (reloaded at most once per GC, G6), the
 * worker pool and the chunk cache (bounded in bytes, least recently used first out).
 */
export class ImageSource {
  readonly repo: Repository;
  readonly pool: ChunkWorkerPool;
  readonly readAheadBytes: number;
  private mapPromise: Promise<ChunkMap> | null = null;
  private mapGeneration = 0;
  private readonly cache = new Map<string, Uint8Array>();
  private cachedBytes = 0;
  private readonly cacheBytes: number;
  /** Chunks being fetched, by digest: a second reader waits for the first fetch. */
  private readonly inflight = new Map<string, Promise<Uint8Array>>();

  constructor(repo: Repository, pool: ChunkWorkerPool, opts: { cacheBytes?: number; readAheadBytes?: number; map?: ChunkMap } = {}) {
    this.repo = repo;
    this.pool = pool;
    this.cacheBytes = opts.cacheBytes ?? DEFAULT_CACHE_BYTES;
    this.readAheadBytes = opts.readAheadBytes ?? DEFAULT_READ_AHEAD_BYTES;
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

  cached(key: string): Uint8Array | undefined {
    const hit = this.cache.get(key);
    if (hit) {
      this.cache.delete(key);
      this.cache.set(key, hit);
    }
    return hit;
  }

  has(key: string): boolean {
    return this.cache.has(key) || this.inflight.has(key);
  }

  waiting(key: string): Promise<Uint8Array> | undefined {
    return this.inflight.get(key);
  }

  remember(key: string, data: Uint8Array): void {
    if (this.cache.has(key)) return;
    this.cache.set(key, data);
    this.cachedBytes += data.length;
    for (const [k, v] of this.cache) {
      if (this.cachedBytes <= this.cacheBytes) break;
      this.cache.delete(k);
      this.cachedBytes -= v.length;
    }
  }

  track(key: string, p: Promise<Uint8Array>): void {
    this.inflight.set(key, p);
    p.catch(() => undefined).finally(() => {
      if (this.inflight.get(key) === p) this.inflight.delete(key);
    });
  }

  stats(): { cachedBytes: number; cachedChunks: number } {
    return { cachedBytes: this.cachedBytes, cachedChunks: this.cache.size };
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
  /** Sequential readers: where each one's last request ended and how far its read-ahead goes (chunk numbers). */
  private readonly streams: { end: number; ahead: number }[] = [];
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
  private async digests(a: number, b: number): Promise<{ first: number; digests: Uint8Array }[]> {
    const out: { first: number; digests: Uint8Array }[] = [];
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
   * The bytes of [offset, offset + length) as pieces in order: views of decoded chunks (not to be
   * changed: they are the cache's), and holes without data. Every stored chunk was checked against
   * its digest when decoded.
   */
  async read(offset: number, length: number, signal?: AbortSignal): Promise<ImagePiece[]> {
    this.checkRange(offset, length);
    if (length === 0) return [];
    const end = offset + length;
    const a = Math.floor(offset / this.chunkSize);
    const b = Math.ceil(end / this.chunkSize);
    const spans = await this.digests(a, b);
    this.readAhead(a, b);
    const chunks = await this.load(spans, signal);
    const out: ImagePiece[] = [];
    for (let i = a; i < b; i++) {
      const s = Math.max(offset, i * this.chunkSize);
      const e = Math.min(end, i * this.chunkSize + this.chunkLength(i));
      const data = chunks[i - a];
      const last = out[out.length - 1];
      if (!data) {
        if (last && !last.data) last.length += e - s;
        else out.push({ offset: s, length: e - s });
      } else {
        out.push({ offset: s, length: e - s, data: data.subarray(s - i * this.chunkSize, e - i * this.chunkSize) });
      }
    }
    return out;
  }

  /** Reads [offset, offset + length) into `into` (holes as zeros). */
  async readInto(offset: number, into: Uint8Array, signal?: AbortSignal): Promise<void> {
    for (const p of await this.read(offset, into.length, signal)) {
      if (p.data) into.set(p.data, p.offset - offset);
      else into.fill(0, p.offset - offset, p.offset - offset + p.length);
    }
  }

  /**
   * Starts fetching the chunks after [a, b) when this request continues an earlier one (a stream:
   * nbdcopy reads several regions at once, one per connection): up to the source's read-ahead past
   * the request, topped up once half of it has been consumed.
   */
  private readAhead(a: number, b: number): void {
    const window = Math.max(1, Math.floor(this.src.readAheadBytes / this.chunkSize));
    const stream = this.streams.find((st) => st.end === a);
    if (!stream) {
      this.streams.push({ end: b, ahead: b });
      if (this.streams.length > MAX_STREAMS) this.streams.shift();
      return;
    }
    stream.end = b;
    if (stream.ahead - b > window / 2) return;
    const from = Math.max(stream.ahead, b);
    const to = Math.min(this.manifest.chunkCount, b + window);
    if (from >= to) return;
    stream.ahead = to;
    void this.digests(from, to)
      .then((spans) => this.load(spans))
      .catch(() => undefined); // a read-ahead that fails costs nothing: the real read reports it
  }

  /**
   * The decoded chunks of the given digest spans, in order (null: a hole): from the cache, from a
   * fetch already running, or fetched now, neighbours in a pack together.
   */
  private async load(spans: { first: number; digests: Uint8Array }[], signal?: AbortSignal): Promise<(Uint8Array | null)[]> {
    const out: (Uint8Array | null | Promise<Uint8Array>)[] = [];
    const need: { key: string; digests: Uint8Array; at: number; index: number; resolve: (d: Uint8Array) => void; reject: (e: unknown) => void }[] = [];
    for (const { first, digests } of spans) {
      for (let k = 0; k * DIGEST_BYTES < digests.length; k++) {
        const at = k * DIGEST_BYTES;
        if (isZeroDigest(digests, at)) {
          out.push(null);
          continue;
        }
        const key = Buffer.from(digests.buffer, digests.byteOffset + at, DIGEST_BYTES).toString('base64');
        const hit = this.src.cached(key) ?? this.src.waiting(key);
        if (hit) {
          out.push(hit);
          continue;
        }
        let resolve!: (d: Uint8Array) => void;
        let reject!: (e: unknown) => void;
        const p = new Promise<Uint8Array>((res, rej) => {
          resolve = res;
          reject = rej;
        });
        p.catch(() => undefined);
        this.src.track(key, p);
        need.push({ key, digests, at, index: first + k, resolve, reject });
        out.push(p);
      }
    }
    if (need.length) {
      this.fetch(need, signal).catch((err: unknown) => {
        for (const n of need) n.reject(err);
      });
    }
    return Promise.all(out);
  }

  /** Fetches and decodes chunks not in the cache; each one's promise settles with it. */
  private async fetch(need: { key: string; digests: Uint8Array; at: number; index: number; resolve: (d: Uint8Array) => void; reject: (e: unknown) => void }[], signal?: AbortSignal): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const { map, generation } = await this.src.chunkMap();
      try {
        await this.fetchFrom(map, need, signal);
        return;
      } catch (err) {
        // G6: a GC that ran before this reader's lock may have moved the chunk; look once more.
        if (attempt === 0 && isAppError(err, ErrorCode.ChunkMissing)) {
          await this.src.reloadMap(generation);
          continue;
        }
        const found = isAppError(err) ? (err.details?.chunks as { digest: string; packId: string }[] | undefined) : undefined;
        if (found?.length) await quarantineQuietly(this.src.repo, found.map((c) => ({ ...c, foundBy: 'restore' as const, reason: (err as Error).message })));
        throw err;
      }
    }
  }

  private async fetchFrom(map: ChunkMap, need: { key: string; digests: Uint8Array; at: number; index: number; resolve: (d: Uint8Array) => void }[], signal?: AbortSignal): Promise<void> {
    const reads = need.map((n) => {
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
    const runs: { packId: string; start: number; end: number; members: number[] }[] = [];
    for (const k of order) {
      const r = reads[k]!;
      const last = runs[runs.length - 1];
      if (last && last.packId === r.packId && r.offset - last.end <= COALESCE_GAP) {
        last.end = Math.max(last.end, r.offset + r.length);
        last.members.push(k);
      } else runs.push({ packId: r.packId, start: r.offset, end: r.offset + r.length, members: [k] });
    }
    await Promise.all(
      runs.map(async (run) => {
        // Read into shared memory, which the decode reads in place (nothing is transferred away).
        const len = run.end - run.start;
        const into = new Uint8Array(new SharedArrayBuffer(len));
        let body: Uint8Array;
        try {
          body = await this.src.repo.store.get(packKey(run.packId), { offset: run.start, length: len, into, ...(signal ? { signal } : {}) });
        } catch (err) {
          if (err instanceof ObjectNotFoundError) throw new AppError(ErrorCode.ChunkMissing, `pack ${run.packId} needed by ${this.what} is missing`, { cause: err });
          throw err;
        }
        if (body.buffer !== into.buffer) {
          into.set(body.subarray(0, Math.min(len, body.length)));
          body = into.subarray(0, Math.min(len, body.length));
        }
        if (body.length < run.end - run.start) {
          const chunks = run.members.map((k) => ({ digest: digestHex(reads[k]!.n.digests, reads[k]!.n.at), packId: run.packId }));
          throw new AppError(ErrorCode.ChunkCorrupt, `pack ${run.packId} needed by ${this.what} is truncated`, { details: { chunks } });
        }
        // Decoded in tasks of about DECODE_TASK_BYTES, in parallel on the workers; each task's
        // chunks are handed out as soon as it is done.
        const tasks: number[][] = [[]];
        let taskBytes = 0;
        for (const k of run.members) {
          if (taskBytes >= DECODE_TASK_BYTES) {
            tasks.push([]);
            taskBytes = 0;
          }
          tasks[tasks.length - 1]!.push(k);
          taskBytes += reads[k]!.rawLength;
        }
        await Promise.all(tasks.map((members) => this.decode(body, run.start, run.packId, members.map((k) => reads[k]!), signal)));
      }),
    );
  }

  /** Decodes (and checks) chunks of one fetched span into new shared memory; each is remembered and handed out. */
  private async decode(body: Uint8Array, spanStart: number, packId: string, reads: { n: { key: string; digests: Uint8Array; at: number; resolve: (d: Uint8Array) => void }; offset: number; length: number; rawLength: number }[], signal?: AbortSignal): Promise<void> {
    const out = new SharedArrayBuffer(reads.reduce((n, r) => n + r.rawLength, 0));
    const task: number[] = [];
    const expected = new Uint8Array(reads.length * DIGEST_BYTES);
    const places: number[] = [];
    let pos = 0;
    reads.forEach((r, j) => {
      task.push(0, r.offset - spanStart, r.length, r.rawLength, pos);
      places.push(pos);
      pos += r.rawLength;
      expected.set(r.n.digests.subarray(r.n.at, r.n.at + DIGEST_BYTES), j * DIGEST_BYTES);
    });
    const check = this.manifest.formatVersion === 2 ? { digests: expected, digest: this.src.repo.chunkDigest } : undefined;
    const bad = await this.src.pool.decodeInto({ bodies: [body], chunks: task, out, encKey: this.src.repo.keys?.encKey, check }, signal);
    if (bad >= 0) {
      const digest = digestHex(reads[bad]!.n.digests, reads[bad]!.n.at);
      throw new AppError(ErrorCode.ChunkCorrupt, `chunk ${digest} of ${this.what} is damaged`, { details: { chunks: [{ digest, packId }] } });
    }
    reads.forEach((r, j) => {
      const data = new Uint8Array(out, places[j]!, r.rawLength);
      this.src.remember(r.n.key, data);
      r.n.resolve(data);
    });
  }
}
