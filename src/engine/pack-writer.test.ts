import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryObjectStore } from '../storage/memory-store.ts';
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
