/**
 * ChunkCache (src/engine/chunk-cache.ts) and the reads of BackupImage that go through it: pins keep
 * a slot from being evicted or reused, unpinned slots go least recently used first, a chunk landing
 * twice gives its second slot back, one fetch's abandon never rejects another's; reads of a real
 * repository release every pin, one reader's abort never fails another reader of the same chunks
 * (nor a live restore's copy), and reads that fail (a pack gone) or are retried after a GC moved
 * packs leave no slot pinned or lost.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { ErrorCode, isAppError } from '../../src/domain/errors.ts';
import { BackupImage, ImageSource, type ImageRead } from '../../src/engine/backup-image.ts';
import { ChunkCache, type CachedChunk } from '../../src/engine/chunk-cache.ts';
import { collectGarbage, deleteBackup } from '../../src/engine/garbage-collector.ts';
import { LiveRestore } from '../../src/engine/live-restore.ts';
import type { Repository } from '../../src/engine/repository.ts';
import { backupFile, engineTestContext, initRepo } from '../helpers/repo.ts';
import { KiB, listPacks, MiB, Rng, writeVolume } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-chunk-cache-');

const CHUNK = 64 * KiB;

// ---- ChunkCache alone ----

const SLOT = 16;

function bytes(fill: number): Uint8Array {
  return new Uint8Array(SLOT).fill(fill);
}

/** Announces a fetch of `key` by `owner` and waits for it the way BackupImage.load does (`pin`: the waiter's pin). */
function announce(cache: ChunkCache, key: string, pin: boolean, owner: object): Promise<CachedChunk> {
  cache.begin(key, owner);
  const p = cache.take(key, pin);
  assert.ok(p instanceof Promise, `${key} is being fetched`);
  return p;
}

/** Fetches `key` the way BackupImage does: announced, a slot allocated, decoded (copied) into it, landed. */
function fetchInto(cache: ChunkCache, key: string, pin: boolean, fill: number, owner: object = {}): { slot: number; landed: Promise<{ data: Uint8Array; slot: number }> } {
  assert.equal(cache.take(key, pin), undefined, `${key} is neither cached nor being fetched`);
  const landed = announce(cache, key, pin, owner);
  const slots = cache.allocate(1);
  assert.ok(slots, `a slot for ${key}`);
  const slot = slots[0]!;
  const view = new Uint8Array(cache.memory, slot * cache.slotBytes, SLOT);
  view.set(bytes(fill));
  cache.land(key, slot, view);
  return { slot, landed };
}

/** Whether every slot can still be had (none lost or left pinned); gives them back after. */
function allSlotsFree(cache: ChunkCache): boolean {
  const all = cache.allocate(cache.stats().slots);
  if (!all) return false;
  cache.abandon(all, [], new Error('test'), {});
  return true;
}

describe('ChunkCache: pins and eviction', () => {
  it('never hands out a pinned slot; unpinned ones go least recently used first; null when all are pinned', async () => {
    const cache = new ChunkCache(4 * SLOT, SLOT);
    assert.equal(cache.stats().slots, 4);
    const k0 = fetchInto(cache, 'k0', true, 10); // pinned by its reader
    const k1 = fetchInto(cache, 'k1', false, 11);
    const k2 = fetchInto(cache, 'k2', false, 12);
    const k3 = fetchInto(cache, 'k3', false, 13);
    assert.deepEqual(cache.stats(), { cachedChunks: 4, pinnedSlots: 1, slots: 4 });
    const got0 = await k0.landed;
    assert.equal(got0.slot, k0.slot);
    // k0 is the least recently used, but pinned: k1 goes first.
    const a = cache.allocate(1);
    assert.deepEqual(a, [k1.slot]);
    assert.equal(cache.take('k1', false), undefined, 'k1 was evicted');
    // A cached chunk taken is the most recently used: k2 taken now, so k3 goes before it.
    assert.ok(cache.take('k2', false));
    assert.deepEqual(cache.allocate(1), [k3.slot]);
    assert.deepEqual(cache.allocate(1), [k2.slot]);
    // Every slot is now pinned (k0 by its reader, the others allocated and not landed).
    assert.equal(cache.allocate(1), null);
    assert.equal(cache.stats().pinnedSlots, 4);
    // k0's bytes were never touched.
    assert.deepEqual([...got0.data], [...bytes(10)]);
    const seen = cache.take('k0', false);
    assert.ok(seen && !(seen instanceof Promise));
    assert.deepEqual([...seen.data], [...bytes(10)]);
    // Its pin released, k0's slot is the one handed out.
    cache.unpin(k0.slot);
    assert.deepEqual(cache.allocate(1), [k0.slot]);
    assert.equal(cache.take('k0', false), undefined);
  });

  it('a refused allocation keeps nothing pinned and loses no slot', () => {
    const cache = new ChunkCache(3 * SLOT, SLOT);
    const k0 = fetchInto(cache, 'k0', true, 1);
    fetchInto(cache, 'k1', false, 2);
    assert.equal(cache.allocate(3), null, 'only two can be freed');
    assert.equal(cache.stats().pinnedSlots, 1);
    cache.unpin(k0.slot);
    assert.ok(allSlotsFree(cache));
  });

  it('land() of a key already cached gives the new slot back; the cached copy stays and keeps its pins', async () => {
    const cache = new ChunkCache(4 * SLOT, SLOT);
    const first = fetchInto(cache, 'k', true, 5);
    assert.equal((await first.landed).slot, first.slot);
    // A second fetch of the same chunk (a retry) lands while a second reader holds the cached copy.
    cache.begin('k', {});
    const second = cache.take('k', true);
    assert.ok(second && !(second instanceof Promise), 'the cached copy, at once');
    assert.equal(second.slot, first.slot);
    const slots = cache.allocate(1)!;
    assert.notEqual(slots[0], first.slot);
    cache.land('k', slots[0]!, new Uint8Array(cache.memory, slots[0]! * SLOT, SLOT).fill(6));
    const again = cache.take('k', false);
    assert.ok(again && !(again instanceof Promise));
    assert.equal(again.slot, first.slot, 'the copy cached first is the one kept');
    assert.deepEqual([...again.data], [...bytes(5)]);
    assert.deepEqual(cache.stats(), { cachedChunks: 1, pinnedSlots: 1, slots: 4 });
    // Two pins on the cached slot (the two readers): it stays until both are released.
    cache.unpin(first.slot);
    assert.equal(cache.stats().pinnedSlots, 1);
    cache.unpin(first.slot);
    assert.equal(cache.stats().pinnedSlots, 0);
    assert.ok(allSlotsFree(cache), 'no slot lost');
  });

  it('a reader that waits for a fetch takes its pin when the chunk lands', async () => {
    const cache = new ChunkCache(2 * SLOT, SLOT);
    const owner = {};
    const p = announce(cache, 'k', false, owner); // the fetcher itself (a read-ahead: no pin)
    const waiting = cache.take('k', true);
    assert.ok(waiting instanceof Promise);
    const [slot] = cache.allocate(1)!;
    cache.land('k', slot!, new Uint8Array(cache.memory, slot! * SLOT, SLOT).fill(9));
    assert.equal((await p).slot, slot);
    assert.equal((await waiting).slot, slot);
    assert.equal(cache.stats().pinnedSlots, 1, 'the waiter\'s pin, not the decoder\'s');
    assert.equal(cache.allocate(2), null, 'the pinned slot is not evicted');
    cache.unpin(slot!);
    assert.ok(allSlotsFree(cache));
  });

  it('abandon() by another owner does not reject someone else\'s fetch; the owner\'s abandon does, and frees its slots', async () => {
    const cache = new ChunkCache(4 * SLOT, SLOT);
    const mine = {};
    const theirs = {};
    const p = announce(cache, 'k', true, mine);
    let settled = false;
    p.then(() => (settled = true), () => (settled = true));
    const [slot] = cache.allocate(1)!;
    cache.abandon([], ['k'], new Error('their client left'), theirs);
    await new Promise((r) => setImmediate(r));
    assert.equal(settled, false, 'another owner\'s abandon leaves the fetch running');
    assert.ok(cache.awaits('k', mine));
    assert.ok(!cache.awaits('k', theirs));
    cache.land('k', slot!, new Uint8Array(cache.memory, slot! * SLOT, SLOT).fill(3));
    assert.deepEqual([...(await p).data], [...bytes(3)]);
    cache.unpin(slot!);
    // The owner's abandon rejects its waiters and gives its slots back.
    const q = announce(cache, 'j', true, mine);
    const waiter = cache.take('j', true);
    assert.ok(waiter instanceof Promise);
    const slots = cache.allocate(2)!;
    cache.abandon(slots, ['j'], new Error('damaged'), mine);
    await assert.rejects(q, /damaged/);
    await assert.rejects(waiter, /damaged/);
    assert.ok(!cache.awaits('j', mine));
    assert.equal(cache.take('j', false), undefined);
    assert.equal(cache.stats().pinnedSlots, 0);
    assert.ok(allSlotsFree(cache));
  });
});

// ---- BackupImage reads of a real repository ----

interface Fixture {
  repo: Repository;
  repoDir: string;
  dir: string;
  file: string;
  data: Buffer;
  backupId: string;
}

/** 8 MiB (by default): random data with holes (every seventh chunk, and the sixth MiB). */
function volumeBytes(size: number, seed: number): Buffer {
  const b = new Rng(seed).bytes(size);
  for (let c = 0; c * CHUNK < size; c++) if (c % 7 === 3) b.fill(0, c * CHUNK, (c + 1) * CHUNK);
  if (size > 6 * MiB) b.fill(0, 5 * MiB, 6 * MiB);
  return b;
}

async function fixture(opts: { size?: number; seed: number; packTargetBytes?: number }): Promise<Fixture> {
  const dir = temp.make('fx');
  const repoDir = path.join(dir, 'repo');
  const repo = await initRepo(repoDir, { encrypted: false, ...(opts.packTargetBytes ? { packTargetBytes: opts.packTargetBytes } : {}) });
  const data = volumeBytes(opts.size ?? 8 * MiB, opts.seed);
  const file = path.join(dir, 'vol.raw');
  await writeVolume(file, data);
  const r = await backupFile(repo, file, 'vol', { pool });
  return { repo, repoDir, dir, file, data, backupId: r.manifest.id };
}

function joined(r: ImageRead, offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (const p of r.pieces) if (p.data) out.set(p.data, p.offset - offset);
  return out;
}

function assertBytes(got: Buffer, expected: Buffer, what: string): void {
  if (got.equals(expected)) return;
  let at = 0;
  while (at < got.length && got[at] === expected[at]) at++;
  assert.fail(`${what}: first difference at ${at} of ${got.length}`);
}

describe('BackupImage reads and the cache', () => {
  it('many reads (random, concurrent, with eviction) return the volume\'s bytes and, released, leave no pin', async () => {
    const fx = await fixture({ seed: 1 });
    // A cache of 2 MiB (32 slots) for an 8 MiB backup: slots are evicted and reused all the time.
    const src = new ImageSource(fx.repo, pool, { cacheBytes: 2 * MiB, readAheadBytes: 512 * KiB });
    const image = new BackupImage(src, await fx.repo.readManifest(fx.backupId));
    const rng = new Rng(2);
    for (let round = 0; round < 12; round++) {
      await Promise.all(Array.from({ length: 6 }, async () => {
        const length = 1 + rng.int(600 * KiB);
        const offset = rng.int(fx.data.length - length);
        const r = await image.read(offset, length);
        try {
          assertBytes(joined(r, offset, length), fx.data.subarray(offset, offset + length), `read ${offset}+${length}`);
        } finally {
          r.release();
        }
      }));
    }
    // Sequential reads (they start read-aheads), and one read larger than the whole cache.
    for (let at = 0; at < fx.data.length; at += 256 * KiB) {
      const r = await image.read(at, 256 * KiB);
      assertBytes(joined(r, at, 256 * KiB), fx.data.subarray(at, at + 256 * KiB), `sequential read at ${at}`);
      r.release();
    }
    const whole = await image.read(0, fx.data.length);
    assertBytes(joined(whole, 0, fx.data.length), fx.data, 'a read larger than the cache');
    whole.release();
    whole.release(); // twice: no harm
    await new Promise((r) => setTimeout(r, 200)); // read-aheads settle
    assert.equal(src.cache.stats().pinnedSlots, 0, 'every pin released');
    assert.ok(src.cache.stats().cachedChunks > 0);
    assert.ok(allSlotsFree(src.cache), 'no slot lost');
  });

  /** Reads the whole image in 256 KiB requests, one at a time (only its data with `skipHoles`, as nbdcopy does); counts the pack reads. */
  async function readSequentially(fx: Fixture, src: ImageSource, skipHoles: boolean): Promise<{ reads: number; bytes: number }> {
    const image = new BackupImage(src, await fx.repo.readManifest(fx.backupId));
    const store = fx.repo.store;
    const get = store.get.bind(store);
    let reads = 0;
    let bytes = 0;
    store.get = async (key, options) => {
      const body = await get(key, options);
      if (key.startsWith('packs/')) {
        reads++;
        bytes += body.length;
      }
      return body;
    };
    try {
      const extents = skipHoles ? (await image.extents(0, image.sizeBytes)).filter((e) => !e.hole) : [{ offset: 0, length: image.sizeBytes }];
      for (const e of extents) {
        for (let at = e.offset; at < e.offset + e.length; at += 256 * KiB) {
          const n = Math.min(256 * KiB, e.offset + e.length - at);
          const r = await image.read(at, n);
          assertBytes(joined(r, at, n), fx.data.subarray(at, at + n), `sequential read at ${at}`);
          r.release();
        }
      }
      await new Promise((r) => setTimeout(r, 200)); // the last read-ahead settles
    } finally {
      store.get = get;
    }
    assert.equal(src.cache.stats().pinnedSlots, 0);
    return { reads, bytes };
  }

  it('a long sequential reader is fetched in few large reads that grow as it goes on, each chunk once, also when it skips holes', async () => {
    const fx = await fixture({ size: 32 * MiB, seed: 11 });
    let stored = 0;
    for (const p of await listPacks(fx.repoDir)) stored += (await fs.stat(path.join(fx.repoDir, p))).size;
    for (const skipHoles of [false, true]) {
      // Read-ahead from 512 KiB, up to an eighth of a 64 MiB cache (8 MiB).
      const src = new ImageSource(fx.repo, pool, { cacheBytes: 64 * MiB, readAheadBytes: 512 * KiB });
      const { reads, bytes } = await readSequentially(fx, src, skipHoles);
      // A fixed 512 KiB window topped up by halves would take 128 reads of 256 KiB.
      assert.ok(reads <= 24, `${reads} pack reads for 32 MiB read in 256 KiB requests${skipHoles ? ', holes skipped' : ''}`);
      assert.ok(bytes <= stored, `${bytes} bytes read from packs holding ${stored}: each chunk once`);
    }
    // A small cache with the default read-ahead: the read-ahead fits the cache (an eighth of it), so
    // nothing it fetched is evicted before it is read and fetched again.
    const small = new ImageSource(fx.repo, pool, { cacheBytes: 4 * MiB });
    assert.equal(small.readAheadBytes, 512 * KiB);
    const { bytes } = await readSequentially(fx, small, false);
    assert.ok(bytes <= stored, `${bytes} bytes read from packs holding ${stored} with a 4 MiB cache: each chunk once`);
  });

  it('the bytes of a read not yet released stay valid while other reads churn the cache', async () => {
    const fx = await fixture({ seed: 3 });
    const src = new ImageSource(fx.repo, pool, { cacheBytes: 1 * MiB, readAheadBytes: 0 });
    const image = new BackupImage(src, await fx.repo.readManifest(fx.backupId));
    const held = await image.read(100, 512 * KiB); // 9 chunks pinned, half the cache
    assert.ok(src.cache.stats().pinnedSlots > 0);
    for (let at = MiB; at + MiB <= fx.data.length; at += MiB) {
      const r = await image.read(at, MiB); // as large as the cache: only unpinned slots are reused
      assertBytes(joined(r, at, MiB), fx.data.subarray(at, at + MiB), `read at ${at}`);
      r.release();
    }
    assertBytes(joined(held, 100, 512 * KiB), fx.data.subarray(100, 100 + 512 * KiB), 'the held read after the churn');
    held.release();
    assert.equal(src.cache.stats().pinnedSlots, 0);
    assert.ok(allSlotsFree(src.cache));
  });

  it('a chunk repeated within a read (deduplicated) is one cache entry, pinned once per use, and released', async () => {
    const dir = temp.make('dedup');
    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: false });
    // 4 MiB: the same 64 KiB block 60 times, then 4 other chunks: 5 distinct chunks in all.
    const block = new Rng(8).bytes(CHUNK);
    const data = Buffer.concat([...Array.from({ length: 60 }, () => block), new Rng(9).bytes(4 * CHUNK)]);
    await writeVolume(path.join(dir, 'd.raw'), data);
    const m = (await backupFile(repo, path.join(dir, 'd.raw'), 'd', { pool })).manifest;
    for (const cacheBytes of [CHUNK, 2 * CHUNK, 16 * MiB]) {
      const src = new ImageSource(repo, pool, { cacheBytes, readAheadBytes: 0 });
      const image = new BackupImage(src, m);
      const [a, b] = await Promise.all([image.read(0, data.length), image.read(CHUNK - 7, 10 * CHUNK)]);
      assertBytes(joined(a, 0, data.length), data, `cache of ${cacheBytes}: the whole volume`);
      assertBytes(joined(b, CHUNK - 7, 10 * CHUNK), data.subarray(CHUNK - 7, 11 * CHUNK - 7), `cache of ${cacheBytes}: a part`);
      a.release();
      assert.ok(src.cache.stats().pinnedSlots <= 1, 'the other read still pins its chunk');
      b.release();
      assert.equal(src.cache.stats().pinnedSlots, 0, `cache of ${cacheBytes}: pins left`);
      if (cacheBytes === 16 * MiB) assert.equal(src.cache.stats().cachedChunks, 5, 'one entry per distinct chunk');
      assert.ok(allSlotsFree(src.cache), `cache of ${cacheBytes}: slots lost`);
    }
  });

  it('one reader\'s abort never fails another reader of the same chunks', async () => {
    const fx = await fixture({ seed: 4 });
    // Abort at several moments: at once, after a tick, and while the fetch runs.
    const timings: (() => Promise<void>)[] = [
      async () => undefined,
      () => new Promise((r) => setImmediate(r)),
      () => new Promise((r) => setTimeout(r, 1)),
      () => new Promise((r) => setTimeout(r, 5)),
      () => new Promise((r) => setTimeout(r, 20)),
    ];
    for (const [i, wait] of timings.entries()) {
      // A fresh cache each time: both readers need the same fetches.
      const src = new ImageSource(fx.repo, pool, { cacheBytes: 16 * MiB, readAheadBytes: 0 });
      const image = new BackupImage(src, await fx.repo.readManifest(fx.backupId));
      const a = new AbortController();
      const ra = image.read(0, 4 * MiB, a.signal);
      const rb = image.read(0, 4 * MiB);
      const rc = image.read(2 * MiB, 4 * MiB);
      await wait();
      a.abort(new Error('connection A ended'));
      const [x, y, z] = await Promise.allSettled([ra, rb, rc]);
      if (x.status === 'fulfilled') x.value.release(); // A may fail (it was aborted) or not (too late)
      assert.equal(y.status, 'fulfilled', `timing ${i}: B failed: ${y.status === 'rejected' ? String(y.reason) : ''}`);
      assert.equal(z.status, 'fulfilled', `timing ${i}: C failed: ${z.status === 'rejected' ? String(z.reason) : ''}`);
      if (y.status === 'fulfilled') {
        assertBytes(joined(y.value, 0, 4 * MiB), fx.data.subarray(0, 4 * MiB), `timing ${i}: B's bytes`);
        y.value.release();
      }
      if (z.status === 'fulfilled') {
        assertBytes(joined(z.value, 2 * MiB, 4 * MiB), fx.data.subarray(2 * MiB, 6 * MiB), `timing ${i}: C's bytes`);
        z.value.release();
      }
      assert.equal(src.cache.stats().pinnedSlots, 0, `timing ${i}: pins left`);
      assert.ok(allSlotsFree(src.cache), `timing ${i}: slots lost`);
    }
  });

  it('a live restore\'s copy is not failed by a user read whose connection ends meanwhile', async () => {
    const fx = await fixture({ seed: 5, size: 16 * MiB });
    for (const delay of [0, 1, 5]) {
      const src = new ImageSource(fx.repo, pool);
      const image = new BackupImage(src, await fx.repo.readManifest(fx.backupId));
      const target = path.join(fx.dir, `live-${delay}.img`);
      const live = await LiveRestore.open(image, target);
      try {
        const conn = new AbortController();
        const userRead = live.read(0, 4 * MiB, conn.signal);
        const job = live.run();
        setTimeout(() => conn.abort(new Error('connection ended')), delay);
        const r = await userRead.catch((err: unknown) => err);
        if (!(r instanceof Error)) (r as ImageRead).release();
        const p = await job;
        assert.equal(p.settledBytes, fx.data.length);
        assertBytes(await fs.readFile(target), fx.data, `the live restore's target (abort after ${delay} ms)`);
      } finally {
        await live.close();
      }
      assert.equal(src.cache.stats().pinnedSlots, 0);
    }
  });

  it('reads that fail for a missing pack leave no slot pinned or lost, and read again once it is back', async () => {
    const fx = await fixture({ seed: 6, packTargetBytes: MiB });
    const packs = (await listPacks(fx.repoDir)).sort();
    assert.ok(packs.length >= 4, `${packs.length} packs`);
    const gone = path.join(fx.repoDir, packs[Math.floor(packs.length / 2)]!);
    const aside = path.join(fx.dir, 'aside');
    await fs.rename(gone, aside);
    const src = new ImageSource(fx.repo, pool, { cacheBytes: 4 * MiB });
    for (let round = 0; round < 3; round++) {
      const image = new BackupImage(src, await fx.repo.readManifest(fx.backupId));
      await assert.rejects(image.read(0, fx.data.length), (err: unknown) => isAppError(err, ErrorCode.ChunkMissing));
      // Reads of chunks in other packs still work meanwhile; those in the missing pack fail alike.
      let ok = 0;
      let missing = 0;
      for (let at = 0; at < fx.data.length; at += CHUNK) {
        const r = await image.read(at, CHUNK).catch((err: unknown) => {
          assert.ok(isAppError(err, ErrorCode.ChunkMissing), String(err));
          return null;
        });
        if (!r) {
          missing++;
          continue;
        }
        ok++;
        assertBytes(joined(r, at, CHUNK), fx.data.subarray(at, at + CHUNK), `chunk at ${at}`);
        r.release();
      }
      assert.ok(ok > 0 && missing > 0, `${ok} chunks read, ${missing} missing`);
      await new Promise((res) => setTimeout(res, 50));
      assert.equal(src.cache.stats().pinnedSlots, 0, `round ${round}: pins left`);
      assert.ok(allSlotsFree(src.cache), `round ${round}: slots lost`);
    }
    await fs.rename(aside, gone);
    const image = new BackupImage(src, await fx.repo.readManifest(fx.backupId));
    const r = await image.read(0, fx.data.length);
    assertBytes(joined(r, 0, fx.data.length), fx.data, 'the whole backup, the pack back');
    r.release();
    assert.equal(src.cache.stats().pinnedSlots, 0);
    assert.ok(allSlotsFree(src.cache));
  });

  it('reads with a chunk map from before a GC that moved packs find the chunks again, and leave no slot pinned or lost', async () => {
    const dir = temp.make('gc');
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false, packTargetBytes: MiB });
    // A: 16 MiB of random data. K: A's first 8 MiB, then only the first half of each further MiB
    // (the rest zeros). Deleting A leaves the packs of A's first half whole and makes half of each
    // later pack dead: GC rewrites those, moving K's chunks into new packs.
    const a = new Rng(7).bytes(16 * MiB);
    const k = Buffer.from(a);
    for (let m = 8; m < 16; m++) k.fill(0, m * MiB + MiB / 2, (m + 1) * MiB);
    await writeVolume(path.join(dir, 'a.raw'), a);
    await writeVolume(path.join(dir, 'k.raw'), k);
    const ma = (await backupFile(repo, path.join(dir, 'a.raw'), 'a', { pool })).manifest;
    const mk = (await backupFile(repo, path.join(dir, 'k.raw'), 'k', { pool })).manifest;
    const stale = (await repo.loadChunkMap()).map;
    const before = new Set(await listPacks(repoDir));
    await deleteBackup(repo, ma.id);
    const gc = await collectGarbage(repo);
    assert.ok(gc.rewrittenPacks > 0, `GC moved chunks: ${JSON.stringify(gc)}`);
    const after = new Set(await listPacks(repoDir));
    assert.ok([...before].some((p) => after.has(p)), 'some packs stay as they were');
    assert.ok([...before].some((p) => !after.has(p)), 'some packs were rewritten');

    for (let round = 0; round < 2; round++) {
      // A source whose map predates the GC (as an export opened before it): reads retry once with a fresh map.
      const src = new ImageSource(repo, pool, { cacheBytes: round === 0 ? 32 * MiB : 2 * MiB, map: stale });
      const image = new BackupImage(src, mk);
      const reads = await Promise.all([image.read(0, 16 * MiB), image.read(7 * MiB, 4 * MiB), image.read(12 * MiB + 5, MiB)]);
      assertBytes(joined(reads[0]!, 0, 16 * MiB), k, `round ${round}: the whole backup`);
      assertBytes(joined(reads[1]!, 7 * MiB, 4 * MiB), k.subarray(7 * MiB, 11 * MiB), `round ${round}: across the moved packs`);
      assertBytes(joined(reads[2]!, 12 * MiB + 5, MiB), k.subarray(12 * MiB + 5, 13 * MiB + 5), `round ${round}: in the moved packs`);
      for (const r of reads) r.release();
      await new Promise((res) => setTimeout(res, 100));
      assert.equal(src.cache.stats().pinnedSlots, 0, `round ${round}: pins left`);
      assert.ok(allSlotsFree(src.cache), `round ${round}: slots lost`);
    }
  });
});
