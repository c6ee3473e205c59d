import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { DIGEST_BYTES } from './chunk-digest.ts';
import { ChunkMap, type ChunkLocation } from './chunk-map.ts';

/** Deterministic distinct digests: seeded bytes, with the entry number stamped in to rule out collisions. */
function makeDigests(n: number, seed: number): Uint8Array {
  const d = new Uint8Array(n * DIGEST_BYTES);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < d.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    d[i] = x & 0xff;
  }
  const v = new DataView(d.buffer);
  for (let i = 0; i < n; i++) v.setUint32(i * DIGEST_BYTES + 28, i, true);
  return d;
}

function locFor(i: number): ChunkLocation {
  return { packNo: i % 97, offset: (i * 65_600) >>> 0, length: 1000 + (i % 65_536), rawLength: 65_536 - (i % 4096) };
}

describe('ChunkMap', () => {
  const N = 100_000;
  const digests = makeDigests(N, 0x5eed);

  it('stores and finds 100k random digests, growing from the smallest table', () => {
    const map = new ChunkMap(0);
    for (let i = 0; i < N; i++) assert.equal(map.set(digests, i * DIGEST_BYTES, locFor(i)), i);
    assert.equal(map.size, N);
    for (let i = 0; i < N; i++) {
      const off = i * DIGEST_BYTES;
      assert.equal(map.find(digests, off), i);
      assert.deepEqual(map.get(digests, off), locFor(i));
      assert.deepEqual(map.digestOf(i), digests.subarray(off, off + DIGEST_BYTES));
      assert.deepEqual(map.locationOf(i), locFor(i));
    }
    assert.deepEqual([...map.entries()], Array.from({ length: N }, (_, i) => i));
  });

  it('finds a digest given at any offset of any buffer (copy semantics, not identity)', () => {
    const map = new ChunkMap();
    const d = Uint8Array.from(digests.subarray(5 * DIGEST_BYTES, 6 * DIGEST_BYTES));
    map.set(d, 0, locFor(5));
    const elsewhere = new Uint8Array(7 + DIGEST_BYTES + 3);
    elsewhere.set(d, 7);
    assert.equal(map.find(elsewhere, 7), 0);
    d.fill(0); // mutating the caller's buffer must not change what the map holds
    assert.equal(map.find(elsewhere, 7), 0);
    assert.equal(map.find(d), -1);
  });

  it('reports absent digests as absent', () => {
    const map = new ChunkMap(0);
    for (let i = 0; i < N / 2; i++) map.set(digests, i * DIGEST_BYTES, locFor(i));
    for (let i = N / 2; i < N; i++) {
      assert.equal(map.find(digests, i * DIGEST_BYTES), -1);
      assert.equal(map.has(digests, i * DIGEST_BYTES), false);
      assert.equal(map.get(digests, i * DIGEST_BYTES), undefined);
    }
    // A digest that differs from a stored one in its last byte only.
    const near = Uint8Array.from(digests.subarray(0, DIGEST_BYTES));
    near[DIGEST_BYTES - 1]! ^= 1;
    assert.equal(map.find(near), -1);
    // Random digests.
    const r = randomBytes(1000 * DIGEST_BYTES);
    for (let i = 0; i < 1000; i++) assert.equal(map.has(r, i * DIGEST_BYTES), false);
  });

  it('replaces the location of a digest set twice (the newest wins) without adding an entry', () => {
    const map = new ChunkMap(0);
    for (let i = 0; i < 5000; i++) map.set(digests, i * DIGEST_BYTES, locFor(i));
    for (let i = 0; i < 5000; i += 3) assert.equal(map.set(digests, i * DIGEST_BYTES, locFor(i + 1_000_000)), i);
    assert.equal(map.size, 5000);
    for (let i = 0; i < 5000; i++) assert.deepEqual(map.get(digests, i * DIGEST_BYTES), locFor(i % 3 === 0 ? i + 1_000_000 : i));
  });

  it('keeps full 32-bit location values', () => {
    const map = new ChunkMap();
    const max = { packNo: 0xfffffffe, offset: 0xffffffff, length: 0xffffffff, rawLength: 0xffffffff };
    map.set(digests, 0, max);
    assert.deepEqual(map.get(digests, 0), max);
  });

  it('keeps mark bits per entry, across growth', () => {
    const map = new ChunkMap(0);
    const half = N / 2;
    for (let i = 0; i < half; i++) map.set(digests, i * DIGEST_BYTES, locFor(i));
    for (let i = 0; i < half; i += 7) map.mark(i);
    // Growing (many times) must carry the marks along.
    for (let i = half; i < N; i++) map.set(digests, i * DIGEST_BYTES, locFor(i));
    for (let i = half + 1; i < N; i += 11) map.mark(i);
    let marked = 0;
    for (const e of map.entries()) {
      const want = e < half ? e % 7 === 0 : (e - half - 1) % 11 === 0 && e > half;
      assert.equal(map.isMarked(e), want, `entry ${e}`);
      if (map.isMarked(e)) marked++;
    }
    assert.equal(marked, Math.ceil(half / 7) + Math.ceil((half - 1) / 11));
    // Marking is idempotent and does not disturb lookups.
    map.mark(0);
    assert.equal(map.isMarked(0), true);
    assert.deepEqual(map.get(digests, 0), locFor(0));
  });

  it('numbers packs stably', () => {
    const map = new ChunkMap();
    assert.equal(map.packNo('aa'), 0);
    assert.equal(map.packNo('bb'), 1);
    assert.equal(map.packNo('aa'), 0);
    assert.deepEqual(map.packIds, ['aa', 'bb']);
  });

  it('a map sized up front holds the same content as one that grew', () => {
    const sized = new ChunkMap(N);
    const grown = new ChunkMap(0);
    for (let i = N - 1; i >= 0; i--) {
      sized.set(digests, i * DIGEST_BYTES, locFor(i));
      grown.set(digests, i * DIGEST_BYTES, locFor(i));
    }
    for (let i = 0; i < N; i += 13) {
      assert.deepEqual(sized.get(digests, i * DIGEST_BYTES), locFor(i));
      assert.deepEqual(grown.get(digests, i * DIGEST_BYTES), locFor(i));
    }
  });
});
