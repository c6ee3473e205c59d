import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { DIGEST_BYTES } from './chunk-digest.ts';
import { VolumeDigest, type VolumeDigestParams } from './volume-digest.ts';

function rootOf(p: VolumeDigestParams, digests: Uint8Array): string {
  const d = new VolumeDigest(p);
  d.update(digests);
  return d.digestHex();
}

describe('VolumeDigest', () => {
  it('is SHA-256 over the documented header and the digests (built here byte by byte)', () => {
    const digests = randomBytes(3 * DIGEST_BYTES);
    const header = Buffer.concat([
      Buffer.from('haven/volume-digest/v1\0', 'ascii'),
      Buffer.from([0, 0, 0, 0, 0, 0x02, 0x80, 0x01]), // 163841 bytes: two whole 64 KiB chunks and one byte
      Buffer.from([0, 1, 0, 0]), // 65536
      Buffer.from([6]),
      Buffer.from('sha256', 'ascii'),
    ]);
    const want = createHash('sha256').update(header).update(digests).digest('hex');
    assert.equal(rootOf({ sizeBytes: 163841, chunkSizeBytes: 65536, alg: 'sha256' }, digests), want);
  });

  it('gives the same root however the digests are split into updates', () => {
    const p: VolumeDigestParams = { sizeBytes: 10 * 4096, chunkSizeBytes: 4096, alg: 'blake3-keyed' };
    const digests = randomBytes(10 * DIGEST_BYTES);
    const pieces = new VolumeDigest(p);
    for (const [a, b] of [[0, 1], [1, 4], [4, 4], [4, 10]] as const) pieces.update(digests.subarray(a * DIGEST_BYTES, b * DIGEST_BYTES));
    assert.equal(pieces.digestHex(), rootOf(p, digests));
  });

  it('changes with any one digest bit, the size, the chunk size or the algorithm', () => {
    const p: VolumeDigestParams = { sizeBytes: 8 * 4096, chunkSizeBytes: 4096, alg: 'sha256' };
    const digests = randomBytes(8 * DIGEST_BYTES);
    const base = rootOf(p, digests);
    const seen = new Set([base]);
    for (const bit of [0, 7, 8 * 100, 8 * 8 * DIGEST_BYTES - 1]) {
      const flipped = Buffer.from(digests);
      flipped[bit >> 3]! ^= 1 << (bit & 7);
      seen.add(rootOf(p, flipped));
    }
    // Same number of chunks, another size: the last chunk is shorter (a different volume).
    seen.add(rootOf({ ...p, sizeBytes: p.sizeBytes - 1 }, digests));
    seen.add(rootOf({ ...p, sizeBytes: 4 * 8192, chunkSizeBytes: 8192 }, digests.subarray(0, 4 * DIGEST_BYTES)));
    seen.add(rootOf({ ...p, alg: 'hmac-sha256' }, digests));
    assert.equal(seen.size, 8);
  });

  it('an empty volume has a root of its header alone', () => {
    const d = new VolumeDigest({ sizeBytes: 0, chunkSizeBytes: 65536, alg: 'sha256' });
    assert.match(d.digestHex(), /^[0-9a-f]{64}$/);
  });

  it('refuses too few or too many digests for the volume, and partial digests', () => {
    const p: VolumeDigestParams = { sizeBytes: 3 * 4096 + 1, chunkSizeBytes: 4096, alg: 'sha256' }; // 4 chunks
    const short = new VolumeDigest(p);
    short.update(new Uint8Array(3 * DIGEST_BYTES));
    assert.throws(() => short.digestHex(), (e: unknown) => e instanceof AppError && e.code === ErrorCode.RepositoryCorrupt && /3 chunk digests given for a volume of 4 chunks/.test(e.message));
    assert.throws(() => new VolumeDigest(p).update(new Uint8Array(5 * DIGEST_BYTES)), /5 chunk digests given for a volume of 4 chunks/);
    assert.throws(() => new VolumeDigest(p).update(new Uint8Array(DIGEST_BYTES + 1)), /chunk digests given/);
    assert.throws(() => new VolumeDigest({ ...p, sizeBytes: -1 }), /not a byte count/);
    assert.throws(() => new VolumeDigest({ ...p, chunkSizeBytes: 0 }), /out of range/);
  });
});
