import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryObjectStore } from '../storage/memory-store.ts';
import type { Body } from '../storage/object-store.ts';
import { DIGEST_BYTES } from './chunk-digest.ts';
import { entryCount, packKey, readEntry } from './pack-format.ts';
import { PackWriter } from './pack-writer.ts';
import { Repository } from './repository.ts';

describe('PackWriter', () => {
  it('stores added chunks back to back in packs of about the target size, each entry pointing at its bytes', async () => {
    const store = new MemoryObjectStore();
    const repo = await Repository.init(store, { packTargetBytes: 64 * 1024 });
    const w = new PackWriter(repo);
    const digests = new Uint8Array(10 * DIGEST_BYTES).map((_, i) => (i * 7 + 1) & 0xff);
    const blobs = Array.from({ length: 10 }, (_, i) => new Uint8Array(20_000 + i).fill(i + 1));
    for (let i = 0; i < blobs.length; i++) await w.add(blobs[i]!, digests, i * DIGEST_BYTES, 30_000);
    const packs = await w.finish();
    assert.ok(packs.length >= 3, `${packs.length} packs`);
    let seen = 0;
    for (const p of packs) {
      const body = await store.get(packKey(p.packId));
      for (let e = 0; e < entryCount(p); e++) {
        const { offset, length, rawLength } = readEntry(p.entries, e);
        assert.equal(rawLength, 30_000);
        assert.deepEqual(body.subarray(offset, offset + length), blobs[seen]);
        seen++;
      }
    }
    assert.equal(seen, blobs.length);
  });

  it('keeps as many pack puts in flight as the store asks for (writeConcurrency), never more, and 1 by default', { timeout: 20_000 }, async () => {
    for (const concurrency of [3, undefined]) {
      const store = new HeldPuts(concurrency);
      const repo = await Repository.init(store, { packTargetBytes: 64 * 1024 });
      const w = new PackWriter(repo);
      const digests = new Uint8Array(8 * DIGEST_BYTES).map((_, i) => i & 0xff);
      // Eight chunks of 70,000 bytes, each over the 64 KiB target: a pack each.
      const adding = (async () => {
        for (let i = 0; i < 8; i++) await w.add(new Uint8Array(70_000).fill(i + 1), digests, i * DIGEST_BYTES, 70_000);
      })();
      let done = false;
      void adding.then(() => (done = true));
      const want = concurrency ?? 1;
      await store.whenHeld(want);
      await new Promise((r) => setImmediate(r));
      assert.equal(store.held.length, want, 'puts in flight');
      assert.equal(done, false, 'the next add waits for a free slot');
      store.holding = false;
      store.releaseAll();
      await adding;
      const packs = await w.finish();
      assert.equal(packs.length, 8);
      assert.equal(store.maxInFlight, want);
      for (const p of packs) assert.ok(await store.head(packKey(p.packId)));
    }
  });

  it('gives every buffer it took from the store back exactly once, when finished or drained', async () => {
    for (const end of ['finish', 'drain'] as const) {
      const store = new LendingStore();
      const repo = await Repository.init(store, { packTargetBytes: 64 * 1024 });
      const w = new PackWriter(repo, { maxInFlight: 2 });
      const digests = new Uint8Array(6 * DIGEST_BYTES).fill(5);
      for (let i = 0; i < 5; i++) await w.add(new Uint8Array(50_000).fill(i), digests, i * DIGEST_BYTES, 50_000);
      await w.add(new Uint8Array(2 << 20).fill(9), digests, 5 * DIGEST_BYTES, 2 << 20); // more than a buffer holds: it grows
      if (end === 'finish') await w.finish();
      else await w.drain();
      assert.ok(store.lent.size >= 2, `${store.lent.size} buffers lent`);
      assert.deepEqual([...store.lent.values()], [...store.lent.values()].map(() => 1), `${end}: each returned once`);
    }
  });

  it('refuses an add that overlaps a running one, so no chunk lands in a buffer about to be replaced', async () => {
    const repo = await Repository.init(new MemoryObjectStore(), { packTargetBytes: 64 * 1024 });
    const w = new PackWriter(repo);
    const digests = new Uint8Array(2 * DIGEST_BYTES).fill(3);
    const first = w.add(new Uint8Array(1000).fill(1), digests, 0, 1000);
    await assert.rejects(w.add(new Uint8Array(1000).fill(2), digests, DIGEST_BYTES, 1000), /still running/);
    await first;
    await w.add(new Uint8Array(1000).fill(2), digests, DIGEST_BYTES, 1000); // fine once the first is done
    const packs = await w.finish();
    assert.equal(packs.reduce((n, p) => n + entryCount(p), 0), 2);
  });
});

/** A memory store whose pack puts wait until released, counting how many are in flight at once. */
class HeldPuts extends MemoryObjectStore {
  readonly writeConcurrency?: number;
  holding = true;
  held: (() => void)[] = [];
  maxInFlight = 0;
  private inFlight = 0;
  private onHeld: (() => void) | null = null;

  constructor(writeConcurrency: number | undefined) {
    super();
    if (writeConcurrency !== undefined) this.writeConcurrency = writeConcurrency;
  }

  override async put(key: string, body: Body): Promise<void> {
    if (!key.startsWith('packs/')) return super.put(key, body);
    this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    if (this.holding) {
      await new Promise<void>((resolve) => {
        this.held.push(resolve);
        this.onHeld?.();
      });
    }
    await super.put(key, body);
    this.inFlight--;
  }

  whenHeld(n: number): Promise<void> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (this.held.length >= n) resolve();
      };
      this.onHeld = check;
      check();
    });
  }

  releaseAll(): void {
    for (const r of this.held.splice(0)) r();
  }
}

/** A memory store that lends pack buffers and counts how often each came back. */
class LendingStore extends MemoryObjectStore {
  readonly lent = new Map<Uint8Array, number>();

  async allocBuffer(length: number): Promise<Uint8Array> {
    const b = new Uint8Array(length);
    this.lent.set(b, 0);
    return b;
  }

  releaseBuffer(buf: Uint8Array): void {
    const n = this.lent.get(buf);
    if (n !== undefined) this.lent.set(buf, n + 1);
  }

  // Puts that take a moment, so that a second pack is filled while the first is being stored.
  override async put(key: string, body: Body): Promise<void> {
    await new Promise((r) => setTimeout(r, 5));
    await super.put(key, body);
  }
}
