import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { chunkHasher, DIGEST_BYTES, isZeroDigest } from './chunk-digest.ts';

describe('chunkHasher', () => {
  it('equals HMAC-SHA-256 for keyed repositories, for many inputs from one hasher', () => {
    const key = randomBytes(32);
    const h = chunkHasher(key);
    for (const len of [0, 1, 63, 64, 65, 4096, 65536, 100_000]) {
      const data = randomBytes(len);
      const out = new Uint8Array(DIGEST_BYTES + 3);
      h(data, out, 3);
      assert.deepEqual(Buffer.from(out.subarray(3)), createHmac('sha256', key).update(data).digest(), `length ${len}`);
    }
  });

  it('equals plain SHA-256 without a key', () => {
    const data = randomBytes(70_000);
    const out = new Uint8Array(DIGEST_BYTES);
    chunkHasher(undefined)(data, out, 0);
    assert.deepEqual(Buffer.from(out), createHash('sha256').update(data).digest());
  });

  it('different keys give different digests of the same chunk', () => {
    const data = randomBytes(1000);
    const a = new Uint8Array(DIGEST_BYTES);
    const b = new Uint8Array(DIGEST_BYTES);
    chunkHasher(randomBytes(32))(data, a, 0);
    chunkHasher(randomBytes(32))(data, b, 0);
    assert.notDeepEqual(a, b);
  });

  it('recognises the hole digest', () => {
    const d = new Uint8Array(DIGEST_BYTES * 2);
    d[DIGEST_BYTES + 5] = 1;
    assert.equal(isZeroDigest(d, 0), true);
    assert.equal(isZeroDigest(d, DIGEST_BYTES), false);
  });
});
