/**
 * PackFetcher: a restore's reads planned per pack over a window, in parallel, within a byte budget,
 * with today's errors (a missing pack names its chunks, a short body is a storage failure or a
 * truncated pack), against real stores and a real incremental chain.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppError, ErrorCode, isAppError } from '../../src/domain/errors.ts';
import { decodeBlobInto } from '../../src/engine/blob-codec.ts';
import { DIGEST_BYTES, digestHex, isZeroDigest } from '../../src/engine/chunk-digest.ts';
import type { BackupManifest } from '../../src/engine/manifest.ts';
import { PackFetcher, type BatchReads, type ChunkRead, type FetchedBodies } from '../../src/engine/pack-fetcher.ts';
import { packKey } from '../../src/engine/pack-format.ts';
import { Repository } from '../../src/engine/repository.ts';
import { LocalObjectStore } from '../../src/storage/local-store.ts';
import type { GetOptions, ObjectStore } from '../../src/storage/object-store.ts';
import { DelegatingStore } from '../helpers/delegating-store.ts';
import { startS3 } from '../helpers/s3-server.ts';
import { backupFile, engineTestContext } from '../helpers/repo.ts';
import { KiB, MiB, overwrite, randomBytesSeeded, TEST_KDF, writeRandomFile } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('pack-fetcher');

/** Counts reads per key and the bytes served; `shorten` cuts bodies short; `hold` keeps gets waiting until their signal aborts. */
class CountingStore extends DelegatingStore {
  readonly gets = new Map<string, number>();
  bytes = 0;
  inFlight = 0;
  maxInFlight = 0;
  aborted = 0;
  shorten = 0;
  hold = false;
  /** Gets that were lent a buffer (`into`), and those the store answered in it. */
  lent = 0;
  readInto = 0;

  get requests(): number {
    let n = 0;
    for (const c of this.gets.values()) n += c;
    return n;
  }

  override async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    this.gets.set(key, (this.gets.get(key) ?? 0) + 1);
    this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    try {
      if (this.hold) {
        await new Promise<void>((_, reject) => options?.signal?.addEventListener('abort', () => reject(options.signal!.reason as Error), { once: true }));
      }
      const body = await this.inner.get(key, options);
      this.bytes += body.length;
      if (options?.into) {
        this.lent++;
        if (body.buffer === options.into.buffer) this.readInto++;
      }
      return this.shorten ? body.subarray(0, body.length - this.shorten) : body;
    } catch (err) {
      if (options?.signal?.aborted) this.aborted++;
      throw err;
    } finally {
      this.inFlight--;
    }
  }
}

/** A pack id as the repository spells them (64 hex). */
function packIdOf(n: number): string {
  return n.toString(16).padStart(2, '0').repeat(32);
}

interface Layout {
  packs: Map<string, Buffer>;
  /** every chunk in volume order */
  reads: ChunkRead[];
}

/**
 * Three packs of random bytes and a volume whose chunks alternate between them, the way an
 * incremental chain's do: pack 0 (the full backup) in order with every third chunk replaced by the
 * next chunk of pack 1 or pack 2 (the incrementals), themselves in order.
 */
async function interleaved(store: ObjectStore, chunks: number, chunkBytes: number): Promise<Layout> {
  const counts = [chunks, Math.ceil(chunks / 6) + 1, Math.ceil(chunks / 6) + 1];
  const packs = new Map<string, Buffer>();
  const ids = counts.map((_, p) => packIdOf(p + 1));
  for (let p = 0; p < 3; p++) {
    const body = randomBytesSeeded(counts[p]! * chunkBytes + 64, 100 + p);
    packs.set(ids[p]!, body);
    await store.put(packKey(ids[p]!), body);
  }
  const next = [0, 0, 0];
  const reads: ChunkRead[] = [];
  for (let i = 0; i < chunks; i++) {
    const p = i % 3 === 2 ? 1 + ((i / 3) & 1) : 0;
    const k = p === 0 ? i : next[p]!++;
    // stored lengths vary, as compressed chunks do; raw length is the chunk size
    const length = chunkBytes - ((i * 37) % 512);
    reads.push({ packId: ids[p]!, offset: k * chunkBytes, length, rawLength: chunkBytes });
  }
  return { packs, reads };
}

function batchesOf(reads: ChunkRead[], perBatch: number): BatchReads<number>[] {
  const out: BatchReads<number>[] = [];
  for (let i = 0; i < reads.length; i += perBatch) {
    const first = i;
    out.push({ meta: i / perBatch, reads: reads.slice(i, i + perBatch), digestOf: (k) => `chunk-${first + k}` });
  }
  return out;
}

/** The stored bytes of read `k` as the fetcher serves them. */
function servedBytes(f: FetchedBodies, k: number): Uint8Array {
  const [body, at, len] = f.chunks.slice(k * 4, k * 4 + 3) as [number, number, number];
  return f.bodies[body]!.subarray(at, at + len);
}

/** Runs a fetcher to the end the way a restore does (a few batches in flight), checking every chunk's bytes; returns how many distinct shared buffers served the batches. */
async function drain(fetcher: PackFetcher<number>, batches: BatchReads<number>[], packs: Map<string, Buffer>, inFlight = 4): Promise<number> {
  let seen = 0;
  const sharedBy = new Map<SharedArrayBuffer, Set<number>>();
  const pending = new Set<Promise<void>>();
  for (;;) {
    const b = await fetcher.next();
    if (!b) break;
    assert.equal(b.meta, seen++, 'batches come in volume order');
    const p = b.data().then((f) => {
      const src = batches[b.meta]!;
      for (const x of f.bodies) {
        // Every body is a span's shared buffer, which the workers decode from in place.
        assert.ok(x.buffer instanceof SharedArrayBuffer, 'bodies are shared buffers');
        sharedBy.set(x.buffer, (sharedBy.get(x.buffer) ?? new Set()).add(b.meta));
      }
      for (const [k, r] of src.reads.entries()) {
        assert.deepEqual(Buffer.from(servedBytes(f, k)), packs.get(r.packId)!.subarray(r.offset, r.offset + r.length), `batch ${b.meta} read ${k}`);
      }
      b.release();
    });
    pending.add(p);
    void p.finally(() => pending.delete(p)).catch(() => undefined);
    if (pending.size >= inFlight) await Promise.race(pending);
  }
  await Promise.all(pending);
  assert.equal(seen, batches.length);
  return sharedBy.size;
}

function distinctPacks(reads: ChunkRead[]): number {
  return new Set(reads.map((r) => r.packId)).size;
}

describe('PackFetcher', () => {
  it('reads chunks alternating between 3 packs with one request per pack when the window holds them all', async () => {
    const store = new CountingStore(new LocalObjectStore(temp.make()));
    const { packs, reads } = await interleaved(store, 600, 16 * KiB);
    const batches = batchesOf(reads, 16);
    const fetcher = new PackFetcher(store, batches, { what: 'test', budgetBytes: 64 * MiB });
    await drain(fetcher, batches, packs);
    assert.equal(store.requests, 3);
    assert.equal(fetcher.stats.requests, 3);
    assert.equal(fetcher.stats.packs, 3);
    assert.equal(fetcher.stats.heldBytes, 0, 'every span freed after its last batch');
    // Bytes served are each pack's stretch from its first needed chunk to its last: the chunks and the
    // places between them (in pack 0, the chunks the incrementals replaced), all under the gap.
    let stretch = 0;
    for (const id of packs.keys()) {
      const own = reads.filter((r) => r.packId === id);
      stretch += Math.max(...own.map((r) => r.offset + r.length)) - Math.min(...own.map((r) => r.offset));
    }
    assert.equal(store.bytes, stretch);
    assert.equal(fetcher.stats.bytesFetched, stretch);
  });

  it('keeps within a budget a quarter of the data, reading each pack about once per window', async () => {
    const store = new CountingStore(new LocalObjectStore(temp.make()));
    // 12 MiB of chunks through a 4 MiB budget: several windows, spans capped at a third of it.
    const { packs, reads } = await interleaved(store, 768, 16 * KiB);
    const batches = batchesOf(reads, 32);
    const budget = 4 * MiB;
    const fetcher = new PackFetcher(store, batches, { what: 'test', budgetBytes: budget, maxSpanBytes: 4 * MiB });
    await drain(fetcher, batches, packs);
    const s = fetcher.stats;
    assert.ok(s.highWaterBytes <= budget, `high water ${s.highWaterBytes} > budget ${budget}`);
    assert.ok(s.highWaterBytes > budget / 2, `high water ${s.highWaterBytes}: the budget was used for read-ahead`);
    assert.equal(s.heldBytes, 0);
    assert.ok(fetcher.pooledBytes > 0, 'freed shared buffers are kept for reuse');
    fetcher.close();
    assert.equal(fetcher.pooledBytes, 0, 'close() lets the pooled buffers go');
    // Pack 0 alone is 12 MiB: it takes at least 12 / 4 spans. Packs 1 and 2 (2 MiB each) are needed
    // all along the volume, so each window reads its stretch of them: about 4 windows of 3 packs.
    const perPack = [...store.gets.values()];
    assert.ok(store.requests <= 4 * 3, `requests per pack: ${perPack.join(', ')}`);
    assert.ok(store.requests < previousOnlyRequests(batches, 256 * KiB) / 10);
    assert.ok(store.maxInFlight > 1, 'requests run in parallel');
  });

  it('planned one batch at a time (a local store), merges a pack\'s reads within each batch, copies nothing and reuses its buffers', async () => {
    const store = new CountingStore(new LocalObjectStore(temp.make()));
    const { packs, reads } = await interleaved(store, 600, 16 * KiB);
    const batches = batchesOf(reads, 16);
    const fetcher = new PackFetcher(store, batches, { what: 'test', maxWindowBatches: 1 });
    const buffers = await drain(fetcher, batches, packs);
    let perBatchPacks = 0;
    for (const b of batches) perBatchPacks += distinctPacks(b.reads);
    assert.equal(store.requests, perBatchPacks, 'one request per pack of each batch');
    assert.equal(store.lent, store.requests, 'every request was lent a buffer');
    assert.equal(store.readInto, store.requests, 'the store read straight into it: no copy');
    // 38 batches of up to 3 spans, at most 4 batches in flight: freed buffers of the same size serve later spans.
    assert.ok(buffers <= store.requests / 4, `${buffers} distinct buffers for ${store.requests} spans`);
    assert.ok(fetcher.pooledBytes > 0, 'freed buffers are kept for reuse');
    assert.equal(fetcher.stats.heldBytes, 0);
    fetcher.close();
    assert.equal(fetcher.pooledBytes, 0);
  });

  it('a direct fetch (fresh locations after a chunk-map reload) serves the same bytes', async () => {
    const store = new CountingStore(new LocalObjectStore(temp.make()));
    const { packs, reads } = await interleaved(store, 48, 16 * KiB);
    const fetcher = new PackFetcher(store, [], { what: 'test' });
    const batch = batchesOf(reads, 48)[0]!;
    const f = await fetcher.fetchDirect(batch);
    for (const [k, r] of reads.entries()) assert.deepEqual(Buffer.from(servedBytes(f, k)), packs.get(r.packId)!.subarray(r.offset, r.offset + r.length));
    assert.equal(store.requests, 3, 'one request per pack of the batch');
    assert.equal(await fetcher.next(), null);
  });

  it('a missing pack fails exactly the batches reading it, naming their chunks in it', async () => {
    const store = new CountingStore(new LocalObjectStore(temp.make()));
    const { packs, reads } = await interleaved(store, 96, 16 * KiB);
    const lost = packIdOf(2);
    await store.delete(packKey(lost));
    const batches = batchesOf(reads, 16);
    const fetcher = new PackFetcher(store, batches, { what: 'backup b1' });
    let failed = 0;
    for (let b = await fetcher.next(); b; b = await fetcher.next()) {
      const src = batches[b.meta]!;
      const wants = src.reads.flatMap((r, k) => (r.packId === lost ? [{ digest: src.digestOf(k), packId: lost }] : []));
      try {
        const f = await b.data();
        assert.equal(wants.length, 0, `batch ${b.meta} reads the lost pack yet succeeded`);
        for (const [k, r] of src.reads.entries()) assert.deepEqual(Buffer.from(servedBytes(f, k)), packs.get(r.packId)!.subarray(r.offset, r.offset + r.length));
        b.release();
      } catch (err) {
        failed++;
        assert.ok(isAppError(err, ErrorCode.ChunkMissing), String(err));
        assert.match((err as Error).message, new RegExp(`pack ${packKey(lost)} needed by backup b1 is missing`));
        assert.deepEqual((err as AppError).details?.chunks, wants);
      }
    }
    assert.ok(failed > 0);
    assert.equal(fetcher.stats.heldBytes, 0, 'failed batches release their spans');
    await assert.rejects(fetcher.fetchDirect(batches[0]!), (err) => isAppError(err, ErrorCode.ChunkMissing));
  });

  it('a short body is a storage failure when the pack is whole, damage when it is truncated', async () => {
    const dir = temp.make();
    const store = new CountingStore(new LocalObjectStore(dir));
    const { reads } = await interleaved(store, 24, 16 * KiB);
    const batches = batchesOf(reads, 24);
    store.shorten = 1;
    const f1 = new PackFetcher(store, batches, { what: 'test' });
    await assert.rejects((await f1.next())!.data(), (err) => isAppError(err, ErrorCode.StorageError) && /the pack is whole/.test((err as Error).message));
    store.shorten = 0;
    const id = packIdOf(1);
    const file = path.join(dir, packKey(id));
    await fs.truncate(file, reads.filter((r) => r.packId === id).at(-1)!.offset);
    const f2 = new PackFetcher(store, batches, { what: 'test' });
    await assert.rejects((await f2.next())!.data(), (err) => isAppError(err, ErrorCode.ChunkCorrupt) && (err as Error).message === `pack ${id} is truncated`);
  });

  it('an abort stops every request and frees every span', async () => {
    const store = new CountingStore(new LocalObjectStore(temp.make()));
    const { reads } = await interleaved(store, 300, 16 * KiB);
    const batches = batchesOf(reads, 8);
    store.hold = true;
    const ac = new AbortController();
    const fetcher = new PackFetcher(store, batches, { what: 'test', signal: ac.signal, budgetBytes: 2 * MiB, concurrency: 3 });
    const first = (await fetcher.next())!;
    const data = first.data();
    while (store.inFlight < 3) await new Promise((r) => setImmediate(r));
    assert.ok(fetcher.stats.heldBytes > 0);
    ac.abort(new AppError(ErrorCode.Cancelled, 'restore cancelled'));
    await assert.rejects(data, (err) => isAppError(err, ErrorCode.Cancelled));
    await assert.rejects(fetcher.next(), (err) => isAppError(err, ErrorCode.Cancelled));
    while (store.inFlight > 0) await new Promise((r) => setImmediate(r));
    assert.equal(store.aborted, 3, 'the requests in flight saw the abort');
    assert.equal(fetcher.stats.heldBytes, 0);
    assert.equal(store.requests, 3, 'nothing started after the abort');
  });

  it('an error of the source reaches only its batch, after the batches before it', async () => {
    const store = new CountingStore(new LocalObjectStore(temp.make()));
    const { reads } = await interleaved(store, 64, 16 * KiB);
    const batches = batchesOf(reads, 16);
    const broken = new AppError(ErrorCode.ChunkMissing, 'chunk x of test is missing from the repository');
    batches[1] = { ...batches[1]!, error: broken };
    const fetcher = new PackFetcher(store, batches, { what: 'test' });
    const got: string[] = [];
    for (let b = await fetcher.next(); b; b = await fetcher.next()) {
      const r = await b.data().then(
        () => 'ok',
        (err: unknown) => (err === broken ? 'error' : String(err)),
      );
      b.release();
      got.push(r);
    }
    assert.deepEqual(got, ['ok', 'error', 'ok', 'ok']);
    assert.equal(fetcher.stats.heldBytes, 0);
  });
});

/** The last backup's chunks in volume order, with their locations, as restore-reader would plan them. */
async function chainSource(repo: Repository, manifest: BackupManifest, perBatch: number): Promise<BatchReads<{ first: number; present: number[] }>[]> {
  const { map } = await repo.loadChunkMap();
  const out: BatchReads<{ first: number; present: number[] }>[] = [];
  let base = 0;
  for (const ref of manifest.indexSegments) {
    const seg = await repo.readIndexSegment(ref, 'test');
    for (let first = 0; first < ref.chunks; first += perBatch) {
      const n = Math.min(perBatch, ref.chunks - first);
      const present: number[] = [];
      const reads: ChunkRead[] = [];
      const at: number[] = [];
      for (let i = first; i < first + n; i++) {
        if (isZeroDigest(seg, i * DIGEST_BYTES)) continue;
        const loc = map.get(seg, i * DIGEST_BYTES)!;
        present.push(base + i);
        at.push(i);
        reads.push({ packId: map.packIds[loc.packNo]!, offset: loc.offset, length: loc.length, rawLength: loc.rawLength });
      }
      out.push({ meta: { first: base + first, present }, reads, digestOf: (k) => digestHex(seg, at[k]! * DIGEST_BYTES) });
    }
    base += ref.chunks;
  }
  return out;
}

/** Requests the old coalescing (merge only with the previous read of the batch) would make. */
function previousOnlyRequests(batches: BatchReads<unknown>[], gap: number): number {
  let n = 0;
  for (const b of batches) {
    let last: { packId: string; end: number } | null = null;
    for (const r of b.reads) {
      if (!(last && last.packId === r.packId && r.offset >= last.end && r.offset - last.end <= gap)) n++;
      last = { packId: r.packId, end: r.offset + r.length };
    }
  }
  return n;
}

async function restoreChain(store: CountingStore, repo: Repository, manifest: BackupManifest, volume: string, opts: { budgetBytes?: number } = {}): Promise<{ requests: number; packs: number; oldRequests: number }> {
  const chunk = manifest.chunkSizeBytes;
  const perBatch = Math.max(1, Math.floor((8 * MiB) / chunk));
  const batches = await chainSource(repo, manifest, perBatch);
  const expected = await fs.readFile(volume);
  const out = new Uint8Array(manifest.sizeBytes);
  const fetcher = new PackFetcher(store, batches, { what: `backup ${manifest.id}`, ...opts });
  const before = store.requests;
  for (let b = await fetcher.next(); b; b = await fetcher.next()) {
    const f = await b.data();
    for (const [k, pos] of b.meta.present.entries()) {
      const [body, at, len, raw] = f.chunks.slice(k * 4, k * 4 + 4) as [number, number, number, number];
      decodeBlobInto(f.bodies[body]!.subarray(at, at + len), { encKey: repo.keys?.encKey }, out, pos * chunk, raw);
    }
    b.release();
  }
  assert.ok(Buffer.from(out).equals(expected), 'decoded chunks are the volume, bit for bit');
  assert.equal(fetcher.stats.heldBytes, 0);
  if (opts.budgetBytes) assert.ok(fetcher.stats.highWaterBytes <= opts.budgetBytes);
  return { requests: store.requests - before, packs: distinctPacks(batches.flatMap((b) => b.reads)), oldRequests: previousOnlyRequests(batches, 256 * KiB) };
}

/** A full backup and `incrementals` incrementals of a random volume, each rewriting scattered chunks. */
async function chain(repo: Repository, dir: string, size: number, incrementals: number): Promise<{ vol: string; manifests: BackupManifest[] }> {
  const vol = path.join(dir, 'vol.img');
  await writeRandomFile(vol, size, 11);
  let last = (await backupFile(repo, vol, 'vol', { pool })).manifest;
  const manifests = [last];
  for (let n = 1; n <= incrementals; n++) {
    // every 5th chunk, shifted per generation: the restore alternates between all generations' packs
    for (let c = n; c * 64 * KiB < size; c += 5) await overwrite(vol, c * 64 * KiB, randomBytesSeeded(64 * KiB, 1000 * n + c));
    last = (await backupFile(repo, vol, 'vol', { pool, previous: last })).manifest;
    manifests.push(last);
  }
  return { vol, manifests };
}

/**
 * Answers a get with a lent buffer in two steps: the first half of the bytes (and its progress), then,
 * once `open()` is called, the rest, or a failure when `failSecondHalf` is set.
 */
class SteppedStore extends DelegatingStore {
  private gate!: () => void;
  private gated = new Promise<void>((r) => (this.gate = r));
  failSecondHalf = false;
  /** Resolves once a get reported its first half. */
  halfway: Promise<void>;
  private reachedHalf!: () => void;

  constructor(inner: ObjectStore) {
    super(inner);
    this.halfway = new Promise<void>((r) => (this.reachedHalf = r));
  }

  open(): void {
    this.gate();
  }

  override async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const { into, onProgress, ...rest } = options ?? {};
    const body = await this.inner.get(key, rest);
    if (!into || !onProgress) return body;
    const half = Math.floor(body.length / 2);
    into.set(body.subarray(0, half));
    onProgress(half);
    this.reachedHalf();
    await this.gated;
    if (this.failSecondHalf) throw new AppError(ErrorCode.StorageError, 'connection reset in the second half');
    into.set(body.subarray(half), half);
    onProgress(body.length);
    return into.subarray(0, body.length);
  }
}

/** Whether `p` settles within `ms`. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  const won = await Promise.race([p.then(() => true, () => true), t]);
  clearTimeout(timer);
  return won;
}

describe('PackFetcher with a store that reports progress', () => {
  /** One pack of 64 chunks of 16 KiB in volume order, in batches of 8: one span, read whole. */
  async function onePack(): Promise<{ store: SteppedStore; packs: Map<string, Buffer>; batches: BatchReads<number>[]; fetcher: PackFetcher<number> }> {
    const local = new LocalObjectStore(temp.make());
    const id = packIdOf(7);
    const body = randomBytesSeeded(64 * 16 * KiB, 77);
    await local.put(packKey(id), body);
    const reads: ChunkRead[] = Array.from({ length: 64 }, (_, i) => ({ packId: id, offset: i * 16 * KiB, length: 16 * KiB, rawLength: 16 * KiB }));
    const store = new SteppedStore(local);
    const batches = batchesOf(reads, 8);
    const fetcher = new PackFetcher(store, batches, { what: 'test', budgetBytes: 16 * MiB });
    return { store, packs: new Map([[id, body]]), batches, fetcher };
  }

  it('hands a batch its bytes as soon as they are in, before the rest of the span arrives, to early and late callers alike', async () => {
    const { store, packs, batches, fetcher } = await onePack();
    const planned = [];
    for (let i = 0; i < 8; i++) planned.push((await fetcher.next())!);
    const early = planned[0]!.data();
    await store.halfway;
    // Batches 0-3 lie in the first half: their data() resolves with the second half still held back,
    // whether it was already waiting (0) or is asked for now (3).
    assert.ok(await settlesWithin(early, 1_000), 'batch 0 got its bytes before the span\'s end');
    assert.ok(await settlesWithin(planned[3]!.data(), 1_000), 'batch 3 got its bytes before the span\'s end');
    const late = planned[5]!.data();
    assert.equal(await settlesWithin(late, 100), false, 'batch 5 waits for the second half');
    store.open();
    for (const [k, b] of planned.entries()) {
      const f = await b.data();
      for (const [i, r] of batches[k]!.reads.entries()) assert.deepEqual(Buffer.from(servedBytes(f, i)), packs.get(r.packId)!.subarray(r.offset, r.offset + r.length), `batch ${k} read ${i}`);
      b.release();
    }
    assert.equal(await fetcher.next(), null);
    assert.equal(fetcher.stats.heldBytes, 0);
    assert.ok(fetcher.pooledBytes > 0, 'the span\'s buffer went back to the pool');
  });

  it('a span failing halfway fails only the batches whose bytes had not arrived, and its buffer is not reused', async () => {
    const { store, packs, batches, fetcher } = await onePack();
    store.failSecondHalf = true;
    const planned = [];
    for (let i = 0; i < 8; i++) planned.push((await fetcher.next())!);
    await store.halfway;
    const early = await planned[1]!.data();
    store.open();
    for (const [i, r] of batches[1]!.reads.entries()) assert.deepEqual(Buffer.from(servedBytes(early, i)), packs.get(r.packId)!.subarray(r.offset, r.offset + r.length));
    await assert.rejects(planned[6]!.data(), (err: unknown) => isAppError(err) && err.code === ErrorCode.StorageError);
    for (const b of planned) b.release();
    assert.equal(fetcher.stats.heldBytes, 0);
    assert.equal(fetcher.pooledBytes, 0, 'a buffer whose read failed is not pooled');
  });

  it('close() during a span\'s fetch rejects what waits and pools nothing; the budget is held until the read ends', async () => {
    const { store, fetcher } = await onePack();
    const b = (await fetcher.next())!;
    await store.halfway;
    const waiting = (await fetcher.next())!;
    fetcher.close();
    await assert.rejects(waiting.data());
    await assert.rejects(b.data());
    store.open();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(fetcher.pooledBytes, 0);
    assert.equal(fetcher.stats.heldBytes, 0, 'released once the read ended');
  });
});

describe('PackFetcher over a real incremental chain', () => {
  it('restores the last of a full and 3 incrementals with at most 2 requests per pack touched', async () => {
    const dir = temp.make();
    const store = new CountingStore(new LocalObjectStore(path.join(dir, 'repo')));
    const repo = await Repository.init(store, { kdf: TEST_KDF, password: 'pw', packTargetBytes: 2 * MiB });
    const { vol, manifests } = await chain(repo, dir, 32 * MiB, 3);
    const r = await restoreChain(store, repo, manifests.at(-1)!, vol, { budgetBytes: 16 * MiB });
    console.log(`chain restore (local): ${r.requests} requests for ${r.packs} packs touched (merging only with the previous read: ${r.oldRequests})`);
    assert.ok(r.requests <= 2 * r.packs, `${r.requests} requests for ${r.packs} packs`);
  });

  it('does the same through S3 (s3rver)', async () => {
    const s3 = await startS3(temp);
    try {
      const dir = temp.make();
      const store = new CountingStore(s3.store('chain'));
      const repo = await Repository.init(store, { kdf: TEST_KDF, packTargetBytes: 2 * MiB });
      const { vol, manifests } = await chain(repo, dir, 16 * MiB, 2);
      const r = await restoreChain(store, repo, manifests.at(-1)!, vol);
      console.log(`chain restore (s3rver): ${r.requests} requests for ${r.packs} packs touched (merging only with the previous read: ${r.oldRequests})`);
      assert.ok(r.requests <= 2 * r.packs, `${r.requests} requests for ${r.packs} packs`);
    } finally {
      await s3.close();
    }
  });
});
