/**
 * PackFetcher: reads the stored chunks a restore needs with few, large, parallel range requests.
 *
 * A restore goes in volume order, but the chunks of an incremental chain alternate between packs
 * (the full backup's and each incremental's): merging a read only with the one before it costs a
 * request per switch (3,191 requests for the first incremental of a 1 GiB volume, 102 for its full).
 * Here the reads of many batches are planned together: over a window of batches, each pack gets one
 * span (one ranged GET) covering all of its chunks needed in the window, split only where the unneeded
 * bytes between two chunks exceed `gapBytes` or a span would outgrow `maxSpanBytes`. Requests thus grow
 * with the packs touched, not with the chunks: about one per pack, two where a pack straddles windows.
 *
 * Memory: fetched bytes not yet consumed stay under `budgetBytes` whatever the volume size. A span is
 * freed as soon as the last batch reading it is released. A window closes before the batch that would
 * make the bytes its spans keep alive at once (from each span's first batch to its last) exceed the
 * budget; spans are fetched in order of first use (FIFO on the budget), so the batch the consumer
 * waits for is always next in line and the fetcher cannot wedge. Up to `concurrency` requests run at
 * once, ahead of decoding, which hides the store's latency.
 *
 * Every span is read into a SharedArrayBuffer, which every decode of it then reads in place, and the
 * store reads straight into it (ObjectStore.get's `into`). Those buffers are pooled within the budget
 * and reused by later spans: fresh memory costs a page fault per 4 KiB on first touch, which on a
 * small VM costs several times the copy itself (a 1 GiB restore from S3 took 240,000 faults and
 * 6.6 s when each request's body was a fresh buffer).
 */
import { AppError, ErrorCode } from '../domain/errors.ts';
import { ObjectNotFoundError, type ObjectStore } from '../storage/object-store.ts';
import { releaseGarbage } from './memory.ts';
import { packKey } from './pack-format.ts';

/** Where one stored chunk lies. */
export interface ChunkRead {
  packId: string;
  offset: number;
  /** stored length */
  length: number;
  rawLength: number;
}

/** One batch of the restore, in volume order, as the source gives it. */
export interface BatchReads<T> {
  /** The consumer's own data for this batch (digests, position), handed back by next(). */
  meta: T;
  /** The batch's stored chunks, in the order the consumer decodes them. */
  reads: ChunkRead[];
  /** The hex digest of read `k`, for errors that name chunks (quarantine). */
  digestOf(k: number): string;
  /** Set when the batch cannot be planned (e.g. a chunk not in the chunk map): its data() rejects with it. */
  error?: unknown;
}

/** A batch's fetched bytes, ready for ChunkWorkerPool.decodeInto. */
export interface FetchedBodies {
  /** Views of whole shared spans. */
  bodies: Uint8Array[];
  /** Four numbers per read, in the batch's order: body index, offset in that body, stored length, raw length. */
  chunks: number[];
}

export interface PlannedBatch<T> {
  meta: T;
  /** The batch's bytes once its spans have arrived; rejects with the batch's error (details name its chunks). */
  data(): Promise<FetchedBodies>;
  /** The consumer is done with the bodies (decoded): spans no other batch needs are freed. Idempotent. */
  release(): void;
}

export interface PackFetcherOptions {
  /** Fetched bytes not yet consumed stay under this (default 128 MiB). */
  budgetBytes?: number;
  /** Requests in flight at once (default 8). */
  concurrency?: number;
  /** Unneeded bytes between two chunks of a pack read rather than split into two requests (default 256 KiB). */
  gapBytes?: number;
  /** Longest span (default a third of the budget, so a whole pack of the default 32 MiB is one span): a decode waits for its whole span. */
  maxSpanBytes?: number;
  /**
   * Batches one window plans at most (bounds the plan's own memory; default 1024). 1 plans each batch
   * alone: no span outlives its batch, so nothing is copied and only requests within a batch are
   * merged, the better choice for a local store, where a request costs little but a copy does (a
   * 512 MiB restore of a full and 2 incrementals: 0.6 s of CPU against 1.0 s planned over windows).
   */
  maxWindowBatches?: number;
  signal?: AbortSignal;
  /** Names the restore in messages, e.g. "backup <id>". */
  what: string;
}

export interface PackFetcherStats {
  requests: number;
  bytesFetched: number;
  /** Most bytes held at once: spans fetched and not yet consumed, and shared buffers pooled for reuse. */
  highWaterBytes: number;
  heldBytes: number;
  /** Distinct packs read. */
  packs: number;
}

interface Window {
  /** Set when one batch alone keeps more than the budget alive: its spans may then exceed it. */
  oversize: boolean;
  held: number;
}

interface Span {
  packId: string;
  start: number;
  end: number;
  /** first and last batch (window-local) reading it, while planning */
  first: number;
  last: number;
  window: Window;
  refs: number;
  /** A view of [start, end) in its buffer, from the start of its fetch (bytes up to `filled` are there). */
  data: Uint8Array | null;
  /** Bytes from the span's start written so far; a batch decodes once its chunks' bytes are in. */
  filled: number;
  /** Batches waiting for `filled` to reach `need`, woken as the body arrives or when the span settles. */
  waiters: { need: number; wake: () => void }[];
  /** Bytes charged to the budget while fetching or fetched. */
  cost: number;
  /** Its request is in flight: the store may still write into its buffer. */
  reading: boolean;
  /** Its shared buffer (from the pool or new), from the start of its fetch. */
  buffer: SharedArrayBuffer | null;
  /** Resolves once fetched (or failed); `failure` then tells which. */
  ready: Promise<void>;
  settle: () => void;
  failure: unknown;
  state: 'planned' | 'fetching' | 'done' | 'freed';
}

interface Batch<T> {
  source: BatchReads<T>;
  window: Window;
  /** per read: its span */
  spans: Span[];
  released: boolean;
}

const DEFAULT_BUDGET = 128 * 1024 * 1024;

/**
 * Bytes a span of `len` may hold: the size of its buffer, rounded up to one of a few sizes so that
 * freed buffers, pooled by size, fit later spans: 8 sizes per doubling, in steps of at least 64 KiB
 * (at most an eighth unused beyond 512 KiB; spans of whole 32 MiB packs take 32 or 36 MiB).
 */
export function spanCapacity(len: number): number {
  const grain = Math.max(64 * 1024, 2 ** (Math.floor(Math.log2(Math.max(1, len))) - 3));
  return Math.ceil(len / grain) * grain;
}

export class PackFetcher<T> {
  private readonly store: ObjectStore;
  private readonly source: AsyncIterator<BatchReads<T>> | Iterator<BatchReads<T>>;
  private readonly budget: number;
  private readonly concurrency: number;
  private readonly gap: number;
  private readonly maxSpan: number;
  private readonly maxWindow: number;
  private readonly what: string;
  private readonly internal = new AbortController();
  private readonly signal: AbortSignal | undefined;
  private readonly onAbort = (): void => this.close(this.signal?.reason);

  /** Planned batches not yet handed out, in order. */
  private readonly ready: Batch<T>[] = [];
  /** Spans not yet started, in order of first use. */
  private readonly queue: Span[] = [];
  private readonly packsRead = new Set<string>();
  /** Spans fetching or fetched, not yet freed. */
  private readonly live = new Set<Span>();
  private inFlight = 0;
  private held = 0;
  private highWater = 0;
  /** Freed shared buffers by size, for reuse; they count against the budget too, and go first when it is short. */
  private readonly pool: SharedArrayBuffer[] = [];
  private pooled = 0;
  private requests = 0;
  private bytesFetched = 0;
  private sourceDone = false;
  private sourceError: unknown;
  private closed: unknown;
  private planning: Promise<void> | null = null;
  /** Batch being planned next, when the source's iterator has already given it (a window closed before it). */
  private carried: BatchReads<T> | null = null;

  constructor(store: ObjectStore, source: AsyncIterable<BatchReads<T>> | Iterable<BatchReads<T>>, opts: PackFetcherOptions) {
    this.store = store;
    this.source = Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]();
    this.budget = opts.budgetBytes ?? DEFAULT_BUDGET;
    this.concurrency = Math.max(1, opts.concurrency ?? 8);
    this.gap = opts.gapBytes ?? 256 * 1024;
    this.maxSpan = Math.max(1, Math.min(opts.maxSpanBytes ?? Math.floor(this.budget / 3), this.budget));
    this.maxWindow = Math.max(1, opts.maxWindowBatches ?? 1024);
    this.what = opts.what;
    this.signal = opts.signal;
    if (this.signal?.aborted) this.close(this.signal.reason);
    else this.signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  get stats(): PackFetcherStats {
    return { requests: this.requests, bytesFetched: this.bytesFetched, highWaterBytes: this.highWater, heldBytes: this.held, packs: this.packsRead.size };
  }

  /** Shared buffers kept for reuse (freed by close()). */
  get pooledBytes(): number {
    return this.pooled;
  }

  /** The next batch in volume order, or null after the last; its spans are already on their way. */
  async next(): Promise<PlannedBatch<T> | null> {
    for (;;) {
      if (this.closed !== undefined) throw this.closed;
      const b = this.ready.shift();
      if (b) {
        // Plan one window ahead of the consumer, so the next window's spans start while this one decodes.
        if (this.ready.length === 0 || this.ready[this.ready.length - 1]!.window === b.window) void this.planAhead();
        return this.handOut(b);
      }
      if (this.sourceError !== undefined) throw this.sourceError;
      if (this.sourceDone) return null;
      await this.planAhead();
    }
  }

  /**
   * Fetches one batch outside the plan (a retry with fresh locations after the chunk map was
   * reloaded): one request per run of a pack's chunks, not counted in the budget (it is one batch),
   * with the same errors as planned reads.
   */
  async fetchDirect(batch: Omit<BatchReads<unknown>, 'meta'>): Promise<FetchedBodies> {
    if (this.closed !== undefined) throw this.closed;
    if (batch.error !== undefined) throw batch.error;
    const order = batch.reads.map((_, k) => k).sort((a, b) => {
      const x = batch.reads[a]!;
      const y = batch.reads[b]!;
      return x.packId < y.packId ? -1 : x.packId > y.packId ? 1 : x.offset - y.offset;
    });
    const runs: { packId: string; start: number; end: number }[] = [];
    const runOf: number[] = new Array<number>(batch.reads.length);
    for (const k of order) {
      const r = batch.reads[k]!;
      const last = runs[runs.length - 1];
      if (last && last.packId === r.packId && r.offset - last.end <= this.gap) last.end = Math.max(last.end, r.offset + r.length);
      else runs.push({ packId: r.packId, start: r.offset, end: r.offset + r.length });
      runOf[k] = runs.length - 1;
    }
    const bodies = await Promise.all(
      runs.map(async (run) => {
        try {
          return await this.read(run.packId, run.start, run.end, null);
        } catch (err) {
          throw this.batchError(err, batch, run.packId);
        }
      }),
    );
    const chunks: number[] = [];
    batch.reads.forEach((r, k) => chunks.push(runOf[k]!, r.offset - runs[runOf[k]!]!.start, r.length, r.rawLength));
    return { bodies, chunks };
  }

  /** Stops every request and frees every span; next() and data() reject with `reason` from now on. */
  close(reason: unknown = new AppError(ErrorCode.Cancelled, `restore of ${this.what} cancelled`)): void {
    if (this.closed !== undefined) return;
    this.closed = reason;
    this.signal?.removeEventListener('abort', this.onAbort);
    this.internal.abort(reason);
    const spans = new Set<Span>(this.queue.splice(0));
    for (const b of this.ready.splice(0)) for (const s of b.spans) spans.add(s);
    for (const s of spans) if (s.state === 'planned') this.fail(s, reason);
    for (const s of this.live) this.free(s);
    this.pool.length = 0;
    this.pooled = 0;
    void (this.source as AsyncIterator<unknown>).return?.();
  }

  private handOut(b: Batch<T>): PlannedBatch<T> {
    return {
      meta: b.source.meta,
      data: async () => {
        try {
          if (b.source.error !== undefined) throw b.source.error;
          const distinct = [...new Set(b.spans)];
          // Each span's bytes up to this batch's last chunk in it: the batch decodes while the rest
          // of a long span is still arriving (a whole 32 MiB pack takes a few hundred ms from S3).
          const need = new Map<Span, number>(distinct.map((s) => [s, 0]));
          b.source.reads.forEach((r, k) => {
            const s = b.spans[k]!;
            need.set(s, Math.max(need.get(s)!, r.offset + r.length - s.start));
          });
          await Promise.all(distinct.map((s) => this.until(s, need.get(s)!)));
          if (this.closed !== undefined) throw this.closed;
          for (const s of distinct) if (s.failure !== undefined || s.data === null) throw this.batchError(s.failure ?? new Error(`span of pack ${s.packId} freed`), b.source, s.packId);
          const bodies = distinct.map((s) => s.data!);
          const chunks: number[] = [];
          b.source.reads.forEach((r, k) => {
            const s = b.spans[k]!;
            chunks.push(distinct.indexOf(s), r.offset - s.start, r.length, r.rawLength);
          });
          return { bodies, chunks };
        } catch (err) {
          this.releaseBatch(b);
          throw err;
        }
      },
      release: () => this.releaseBatch(b),
    };
  }

  /** Resolves once `need` bytes of the span are in, or it settled (done, failed or freed). */
  private until(s: Span, need: number): Promise<void> {
    if (s.filled >= need) return Promise.resolve();
    if (s.state === 'freed' || s.state === 'done') return s.ready;
    return new Promise<void>((wake) => {
      s.waiters.push({ need, wake });
      void s.ready.then(wake);
    });
  }

  /** Records that the span's first `bytes` are in its buffer and wakes the batches they complete. */
  private progress(s: Span, bytes: number): void {
    if (bytes <= s.filled) return;
    s.filled = bytes;
    if (!s.waiters.some((w) => w.need <= bytes)) return;
    s.waiters = s.waiters.filter((w) => {
      if (w.need > bytes) return true;
      w.wake();
      return false;
    });
  }

  private releaseBatch(b: Batch<T>): void {
    if (b.released) return;
    b.released = true;
    for (const s of new Set(b.spans)) if (--s.refs === 0) this.free(s);
  }

  /** Plans the next window (once at a time); resolves when it is planned or the source is done. */
  private planAhead(): Promise<void> {
    if (this.sourceDone || this.sourceError !== undefined || this.closed !== undefined) return Promise.resolve();
    this.planning ??= this.planWindow()
      .catch((err: unknown) => {
        this.sourceError = err;
      })
      .finally(() => {
        this.planning = null;
      });
    return this.planning;
  }

  private async planWindow(): Promise<void> {
    const win: Window = { oversize: false, held: 0 };
    const spans: Span[] = [];
    const byPack = new Map<string, Span[]>();
    const live: number[] = []; // per batch of the window: bytes its spans keep alive
    let peak = 0;
    const batches: Batch<T>[] = [];
    while (batches.length < this.maxWindow) {
      let src = this.carried;
      this.carried = null;
      if (!src) {
        let it: IteratorResult<BatchReads<T>>;
        try {
          it = await this.source.next();
        } catch (err) {
          this.sourceError = err; // delivered after the batches planned before it
          break;
        }
        if (this.closed !== undefined) return;
        if (it.done) {
          this.sourceDone = true;
          break;
        }
        src = it.value;
      }
      const c = batches.length;
      live.push(0);
      const before = new Map<Span, { start: number; end: number; last: number }>();
      const created: Span[] = [];
      const used: Span[] = [];
      for (const r of src.error === undefined ? src.reads : []) {
        const own = byPack.get(r.packId) ?? [];
        let s = own.find((x) => x.start <= r.offset && r.offset + r.length <= x.end);
        if (!s) {
          const cur = own[own.length - 1];
          if (cur && this.extends(cur, r)) s = cur;
          else {
            s = this.newSpan(r.packId, r.offset, c, win);
            own.push(s);
            byPack.set(r.packId, own);
            created.push(s);
          }
        }
        if (!created.includes(s) && !before.has(s)) before.set(s, { start: s.start, end: s.end, last: s.last });
        s.start = Math.min(s.start, r.offset);
        s.end = Math.max(s.end, r.offset + r.length);
        s.last = c;
        used.push(s);
      }
      // How much longer spans keep more bytes alive, over their lives.
      const deltas: [number, number, number][] = []; // from, to (inclusive), bytes
      for (const [s, old] of before) deltas.push([s.first, old.last, spanCapacity(s.end - s.start) - spanCapacity(old.end - old.start)], [old.last + 1, c, spanCapacity(s.end - s.start)]);
      for (const s of created) deltas.push([c, c, spanCapacity(s.end - s.start)]);
      let newPeak = peak;
      for (const [from, to, d] of deltas) for (let i = from; i <= to; i++) newPeak = Math.max(newPeak, (live[i]! += d));
      if (newPeak > this.budget && c > 0) {
        // This batch would keep too much alive at once: undo it; it opens the next window.
        for (const [from, to, d] of deltas) for (let i = from; i <= to; i++) live[i]! -= d;
        for (const [s, old] of before) Object.assign(s, old);
        for (const s of created) byPack.get(s.packId)!.pop();
        this.carried = src;
        break;
      }
      peak = newPeak;
      spans.push(...created);
      for (const s of new Set(used)) s.refs++;
      batches.push({ source: src, window: win, spans: used, released: false });
    }
    win.oversize = peak > this.budget;
    this.queue.push(...spans);
    this.ready.push(...batches);
    this.pump();
  }

  private extends(s: Span, r: ChunkRead): boolean {
    const start = Math.min(s.start, r.offset);
    const end = Math.max(s.end, r.offset + r.length);
    const between = r.offset >= s.end ? r.offset - s.end : s.start - (r.offset + r.length);
    return between <= this.gap && end - start <= this.maxSpan;
  }

  private newSpan(packId: string, offset: number, first: number, window: Window): Span {
    let settle!: () => void;
    const ready = new Promise<void>((r) => (settle = r));
    return { packId, start: offset, end: offset, first, last: first, window, refs: 0, data: null, filled: 0, waiters: [], cost: 0, reading: false, buffer: null, ready, settle, failure: undefined, state: 'planned' };
  }

  /** Starts queued spans in order while requests and budget allow. */
  private pump(): void {
    while (this.closed === undefined && this.inFlight < this.concurrency && this.queue.length) {
      const s = this.queue[0]!;
      if (s.state !== 'planned') {
        this.queue.shift(); // every batch reading it failed or was released before it started
        continue;
      }
      const len = s.end - s.start;
      // A pooled buffer of the span's capacity, else a new one. Never a larger one: the plan counted
      // capacities, and its promise that the span the consumer waits for can always start rests on it.
      const cost = spanCapacity(len);
      const reuse = this.pool.findIndex((b) => b.byteLength === cost);
      const fits = this.held + cost <= this.budget || (s.window.oversize && this.held === s.window.held);
      if (!fits) return;
      this.queue.shift();
      let buffer: SharedArrayBuffer;
      if (reuse >= 0) {
        buffer = this.pool.splice(reuse, 1)[0]!;
        this.pooled -= cost;
      } else {
        buffer = new SharedArrayBuffer(cost);
      }
      s.cost = cost;
      s.buffer = buffer;
      s.data = new Uint8Array(buffer, 0, len);
      this.held += cost;
      s.window.held += cost;
      this.trimPool();
      this.highWater = Math.max(this.highWater, this.held + this.pooled);
      s.state = 'fetching';
      s.reading = true;
      this.live.add(s);
      this.inFlight++;
      this.read(s.packId, s.start, s.end, s.data, (bytes) => this.progress(s, bytes)).then(
        () => {
          this.inFlight--;
          s.reading = false;
          if (s.state === 'fetching') {
            s.filled = len;
            s.waiters = [];
            s.state = 'done';
          } else if (s.state === 'freed') this.uncharge(s, true); // freed while its read ran: no batch reads it
          s.settle();
          this.pump();
        },
        (err: unknown) => {
          this.inFlight--;
          s.reading = false;
          if (s.state === 'freed') this.uncharge(s, false);
          else this.fail(s, err);
          this.pump();
        },
      );
    }
  }

  private fail(s: Span, err: unknown): void {
    s.failure ??= err;
    this.free(s);
    s.settle();
  }

  private free(s: Span): void {
    // A span whose read is still running stays charged (the store may still write its buffer)
    // until the read ends; see pump().
    if ((s.state === 'fetching' || s.state === 'done') && !s.reading) this.uncharge(s, s.state === 'done');
    if (s.state === 'planned' || s.state === 'fetching') s.settle();
    s.state = 'freed';
    s.data = null;
    s.waiters = [];
    this.pump();
  }

  /**
   * Gives a span's bytes back to the budget; with `reuse` its buffer goes to the pool. Only once no
   * read can still be writing it, and only after a read that succeeded: after a failure, batches
   * woken by progress may still be decoding from it.
   */
  private uncharge(s: Span, reuse: boolean): void {
    this.held -= s.cost;
    s.window.held -= s.cost;
    s.cost = 0;
    this.live.delete(s);
    if (reuse && s.buffer && this.closed === undefined) {
      this.pool.push(s.buffer);
      this.pooled += s.buffer.byteLength;
    }
    s.buffer = null;
  }

  /**
   * Drops pooled buffers until they and the reservations fit the budget: a reservation becomes
   * memory as its request's body arrives, while pooled buffers are memory already.
   */
  private trimPool(): void {
    let dropped = 0;
    while (this.pool.length && this.held + this.pooled > this.budget) {
      const size = this.pool.shift()!.byteLength;
      this.pooled -= size;
      dropped += size;
    }
    if (dropped) releaseGarbage(dropped);
  }

  /**
   * One ranged GET of [start, end) of a pack; a short body is checked against the pack's size. With
   * `into` (a span's pooled shared buffer, which every batch reading the span decodes from in place)
   * the store reads straight into it, or its body is copied there; without (a retry outside the
   * plan) the store's own fresh buffer is returned, which decodeInto moves to a worker.
   */
  private async read(packId: string, start: number, end: number, into: Uint8Array | null, onProgress?: (bytes: number) => void): Promise<Uint8Array> {
    const key = packKey(packId);
    this.requests++;
    this.packsRead.add(packId);
    let body: Uint8Array | null = await this.store.get(key, { offset: start, length: end - start, immutable: true, signal: this.internal.signal, ...(into ? { into } : {}), ...(onProgress ? { onProgress } : {}) });
    this.bytesFetched += body.length;
    if (body.length < end - start) {
      // A short read is damage only when the pack itself is short; otherwise the store (or the
      // connection) failed, and the backup is as whole as it was.
      const info = await this.store.head(key);
      if (info && info.sizeBytes >= end) throw new AppError(ErrorCode.StorageError, `reading pack ${packId} returned ${body.length} of ${end - start} bytes (the pack is whole: a storage or network failure)`);
      throw new AppError(ErrorCode.ChunkCorrupt, `pack ${packId} is truncated`);
    }
    if (into) {
      if (this.closed !== undefined) throw this.closed;
      if (body.buffer === into.buffer && body.byteOffset === into.byteOffset) return into;
      // The store ignored `into` (so it reported no progress either): the bytes arrive all at once.
      into.set(body);
      // The store's buffer is garbage now; left to the collector, such buffers piled up to 600 MiB
      // of RSS in a 1 GiB restore with a 128 MiB budget.
      body = null;
      releaseGarbage(into.length);
      return into;
    }
    // It moves to a worker: it must own its whole ArrayBuffer (ObjectStore.get promises a fresh one).
    return body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && !(body.buffer instanceof SharedArrayBuffer) ? body : new Uint8Array(body);
  }

  /** A read's failure as the batch sees it: a missing pack names the batch's chunks in it (quarantine). */
  private batchError(err: unknown, batch: Pick<BatchReads<unknown>, 'reads' | 'digestOf'>, packId: string): unknown {
    if (!(err instanceof ObjectNotFoundError)) return err;
    const chunks: { digest: string; packId: string }[] = [];
    batch.reads.forEach((r, k) => {
      if (r.packId === packId) chunks.push({ digest: batch.digestOf(k), packId });
    });
    return new AppError(ErrorCode.ChunkMissing, `pack ${packKey(packId)} needed by ${this.what} is missing`, { cause: err, details: { chunks } });
  }
}
