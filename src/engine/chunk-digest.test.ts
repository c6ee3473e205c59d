import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { blake3 } from '@noble/hashes/blake3.js';
import { chunkHasher, DIGEST_BYTES, isZeroDigest, type ChunkDigest } from './chunk-digest.ts';
import * as digestModule from './chunk-digest.ts';

const LENGTHS = [0, 1, 63, 64, 65, 1023, 1024, 1025, 4096, 65536, 100_000];

function digestOf(d: ChunkDigest, data: Uint8Array): Buffer {
  const out = new Uint8Array(DIGEST_BYTES + 3);
  chunkHasher(d)(data, out, 3);
  return Buffer.from(out.subarray(3));
}

describe('chunkHasher', () => {
  it('hmac-sha256 equals createHmac, for many inputs from one hasher', () => {
    const key = randomBytes(32);
    const h = chunkHasher({ alg: 'hmac-sha256', key });
    for (const len of LENGTHS) {
      const data = randomBytes(len);
      const out = new Uint8Array(DIGEST_BYTES + 3);
      h(data, out, 3);
      assert.deepEqual(Buffer.from(out.subarray(3)), createHmac('sha256', key).update(data).digest(), `length ${len}`);
    }
  });

  it('sha256 equals plain SHA-256', () => {
    const data = randomBytes(70_000);
    assert.deepEqual(digestOf({ alg: 'sha256' }, data), createHash('sha256').update(data).digest());
  });

  it('blake3-keyed matches BLAKE3\'s official keyed_hash vector and the JavaScript implementation, with the native one loaded', () => {
    // test_vectors.json of the BLAKE3 reference: key "whats the Elvish word for friend", input i % 251.
    const key = Buffer.from('whats the Elvish word for friend');
    const input = Uint8Array.from({ length: 1023 }, (_, i) => i % 251);
    assert.equal(digestOf({ alg: 'blake3-keyed', key }, input).toString('hex'), 'c951ecdf03288d0fcc96ee3413563d8a6d3589547f2c2fb36d9786470f1b9d6e');
    assert.equal(digestModule.blake3Implementation, 'native', 'the prebuilt BLAKE3 binary loads on this platform');
    const k2 = randomBytes(32);
    const h = chunkHasher({ alg: 'blake3-keyed', key: k2 }); // one hasher, reset between chunks
    for (const len of LENGTHS) {
      const data = randomBytes(len);
      const out = new Uint8Array(DIGEST_BYTES);
      h(data, out, 0);
      assert.deepEqual(Buffer.from(out), Buffer.from(blake3(data, { key: k2 })), `length ${len}`);
    }
  });

  it('different keys or algorithms give different digests of the same chunk', () => {
    const data = randomBytes(1000);
    const k = randomBytes(32);
    const all = [
      digestOf({ alg: 'blake3-keyed', key: k }, data),
      digestOf({ alg: 'blake3-keyed', key: randomBytes(32) }, data),
      digestOf({ alg: 'hmac-sha256', key: k }, data),
      digestOf({ alg: 'sha256' }, data),
    ].map((b) => b.toString('hex'));
    assert.equal(new Set(all).size, all.length);
  });

  it('refuses keyed digests without a 32-byte key and unknown algorithms', () => {
    assert.throws(() => chunkHasher({ alg: 'blake3-keyed' }), /32-byte key/);
    assert.throws(() => chunkHasher({ alg: 'hmac-sha256', key: randomBytes(16) }), /32-byte key/);
    assert.throws(() => chunkHasher({ alg: 'md5' as never }), /unknown chunk digest/);
  });

  it('recognises the hole digest', () => {
    const d = new Uint8Array(DIGEST_BYTES * 2);
    d[DIGEST_BYTES + 5] = 1;
    assert.equal(isZeroDigest(d, 0), true);
    assert.equal(isZeroDigest(d, DIGEST_BYTES), false);
  });
});
