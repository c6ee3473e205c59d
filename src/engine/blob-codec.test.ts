import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { constants, crc32, zstdCompressSync } from 'node:zlib';
import { BlobDecodeError, decodeBlob, decodeBlobInto, DEFAULT_ZSTD_LEVEL, encodeBlob, looksCompressible, ZSTD_CONTEXTS_REUSED, type BlobKeys } from './blob-codec.ts';

const FLAG_ZSTD = 1;
const FLAG_AESGCM = 2;
const PLAIN_OVERHEAD = 1 + 4; // flags + crc32
const ENC_OVERHEAD = 1 + 12 + 16; // flags + nonce + tag

const key = randomBytes(32);
const otherKey = randomBytes(32);
const plainKeys: BlobKeys = {};
const encKeys: BlobKeys = { encKey: key };

/** Text-like data that zstd shrinks a lot. */
function compressible(n: number): Buffer {
  const line = Buffer.from('haven backup engine: the quick brown fox jumps over the lazy dog 0123456789\n');
  const b = Buffer.alloc(n);
  for (let o = 0; o < n; o += line.length) line.copy(b, o, 0, Math.min(line.length, n - o));
  return b;
}

const modes: { name: string; keys: BlobKeys; overhead: number }[] = [
  { name: 'unencrypted', keys: plainKeys, overhead: PLAIN_OVERHEAD },
  { name: 'encrypted', keys: encKeys, overhead: ENC_OVERHEAD },
];

for (const mode of modes) {
  describe(`blob codec, ${mode.name}`, () => {
    const samples: [string, Buffer][] = [
      ['empty', Buffer.alloc(0)],
      ['one byte', Buffer.from([0x42])],
      ['64 bytes (never compressed)', compressible(64)],
      ['64 KiB compressible', compressible(64 * 1024)],
      ['64 KiB random', randomBytes(64 * 1024)],
      ['1 MiB + 3 compressible', compressible(1024 * 1024 + 3)],
    ];

    for (const [what, plain] of samples) {
      for (const compress of [true, false]) {
        it(`round-trips ${what} (compress=${compress})`, () => {
          const blob = encodeBlob(plain, mode.keys, compress);
          const back = decodeBlob(blob, mode.keys);
          assert.equal(Buffer.compare(back, plain), 0);
          assert.equal(blob[0]! & FLAG_AESGCM, mode.keys.encKey ? FLAG_AESGCM : 0);
        });
      }
    }

    it('compresses compressible data and says so in the flags', () => {
      const plain = compressible(64 * 1024);
      const blob = encodeBlob(plain, mode.keys, true);
      assert.equal(blob[0]! & FLAG_ZSTD, FLAG_ZSTD);
      assert.ok(blob.length < plain.length / 4, `compressed to ${blob.length} bytes`);
      assert.equal(Buffer.compare(decodeBlob(blob, mode.keys), plain), 0);
    });

    it('stores incompressible data raw (no zstd flag, only the framing overhead)', () => {
      const plain = randomBytes(64 * 1024);
      const blob = encodeBlob(plain, mode.keys, true);
      assert.equal(blob[0]! & FLAG_ZSTD, 0);
      assert.equal(blob.length, plain.length + mode.overhead);
      if (mode.keys.encKey === undefined) assert.equal(Buffer.compare(blob.subarray(1, 1 + plain.length), plain), 0);
    });

    it('stores data raw when compression is off', () => {
      const plain = compressible(10_000);
      const blob = encodeBlob(plain, mode.keys, false);
      assert.equal(blob[0]! & FLAG_ZSTD, 0);
      assert.equal(blob.length, plain.length + mode.overhead);
    });

    it('detects every single damaged byte after the flags byte, raw and compressed', () => {
      for (const plain of [randomBytes(300), compressible(3000)]) {
        const blob = encodeBlob(plain, mode.keys, true);
        for (let i = 1; i < blob.length; i++) {
          const bad = Buffer.from(blob);
          bad[i]! ^= 1 << (i % 8);
          assert.throws(() => decodeBlob(bad, mode.keys), BlobDecodeError, `flip at byte ${i} of ${blob.length} went undetected`);
        }
      }
    });

    it('detects a truncated or too short blob', () => {
      const blob = encodeBlob(randomBytes(1000), mode.keys, true);
      assert.throws(() => decodeBlob(blob.subarray(0, blob.length - 1), mode.keys), BlobDecodeError);
      assert.throws(() => decodeBlob(blob.subarray(0, 4), mode.keys), BlobDecodeError);
      assert.throws(() => decodeBlob(new Uint8Array(0), mode.keys), BlobDecodeError);
    });

    it('refuses unknown flags', () => {
      const blob = encodeBlob(randomBytes(100), mode.keys, true);
      blob[0] = blob[0]! | 0x80;
      assert.throws(() => decodeBlob(blob, mode.keys), /unknown blob flags/);
    });

    it('caps the decompressed size when asked (no decompression bomb)', () => {
      const plain = Buffer.alloc(4 * 1024 * 1024); // zeros: tiny when compressed
      const blob = encodeBlob(plain, mode.keys, true);
      assert.ok(blob.length < 4096);
      assert.equal(decodeBlob(blob, mode.keys, plain.length).length, plain.length);
      assert.throws(() => decodeBlob(blob, mode.keys, 64 * 1024), BlobDecodeError);
    });

    it('decodes a blob that lives inside a larger buffer (non-zero byteOffset)', () => {
      const plain = randomBytes(5000);
      const blob = encodeBlob(plain, mode.keys, true);
      const big = Buffer.concat([randomBytes(13), blob, randomBytes(7)]);
      const view = new Uint8Array(big.buffer, big.byteOffset + 13, blob.length);
      assert.equal(Buffer.compare(decodeBlob(view, mode.keys), plain), 0);
    });
  });
}

describe('blob codec, reused zstd contexts', () => {
  it('are in use on this Node (its zlib internals passed the start-up self-test)', () => {
    assert.equal(ZSTD_CONTEXTS_REUSED, true);
  });

  it('writes the same frames as zlib.zstdCompressSync at the same level, frame after frame', () => {
    const realistic = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: Math.ceil(n / 60) }, (_, i) => `2026-01-0${seed} 12:${i % 60}:07 INFO req=${(i * 7919 + seed) % 100000} ms=${i % 900}\n`).join('').slice(0, n));
    for (const level of [DEFAULT_ZSTD_LEVEL, 3, -5]) {
      for (const [i, n] of [100, 5000, 65536, 65536 * 3 + 7, 65536].entries()) {
        const plain = realistic(n, i + 1);
        const blob = encodeBlob(plain, plainKeys, true, level);
        assert.equal(blob[0], FLAG_ZSTD);
        const expected = zstdCompressSync(plain, { params: { [constants.ZSTD_c_compressionLevel]: level } });
        assert.equal(Buffer.compare(blob.subarray(1, blob.length - 4), expected), 0, `level ${level}, ${n} bytes`);
        // An incompressible chunk in between (the frame does not fit) must not change the level.
        assert.equal(encodeBlob(randomBytes(n), plainKeys, true, level)[0], 0);
      }
    }
    // The levels differ on this data, so the comparison above can tell them apart.
    const sample = realistic(65536, 9);
    assert.notEqual(zstdCompressSync(sample, { params: { [constants.ZSTD_c_compressionLevel]: DEFAULT_ZSTD_LEVEL } }).length, zstdCompressSync(sample, { params: { [constants.ZSTD_c_compressionLevel]: -5 } }).length);
  });

  it('keeps decoding correctly across many frames, with damaged and oversized ones in between', () => {
    const blobs: { plain: Buffer; blob: Buffer }[] = [];
    for (let i = 0; i < 60; i++) {
      const plain = i % 3 === 0 ? randomBytes(65536) : Buffer.concat([compressible(40_000 + i), randomBytes(i * 10)]);
      blobs.push({ plain, blob: encodeBlob(plain, plainKeys, true) });
    }
    const out = new Uint8Array(new SharedArrayBuffer(70_000 * blobs.length));
    for (const [i, { plain, blob }] of blobs.entries()) {
      if (i % 7 === 3 && blob[0] === FLAG_ZSTD) {
        // A frame cut short, a frame promising fewer bytes than it holds: both refused...
        // (The cut frame gets a valid CRC, so that zstd itself meets the short frame.)
        const frame = blob.subarray(1, blob.length - 40);
        const crc = Buffer.alloc(4);
        crc.writeUInt32LE(crc32(frame, crc32(Uint8Array.of(FLAG_ZSTD))));
        const cut = Buffer.concat([Uint8Array.of(FLAG_ZSTD), frame, crc]);
        assert.throws(() => decodeBlobInto(cut, plainKeys, out, i * 70_000, plain.length), BlobDecodeError);
        assert.throws(() => decodeBlobInto(blob, plainKeys, out, i * 70_000, plain.length - 1), BlobDecodeError);
      }
      // ...and the next frames still decode exactly.
      decodeBlobInto(blob, plainKeys, out, i * 70_000, plain.length);
      assert.equal(Buffer.compare(Buffer.from(out.buffer, i * 70_000, plain.length), plain), 0);
      assert.equal(Buffer.compare(decodeBlob(blob, plainKeys, plain.length), plain), 0);
    }
  });

  it('decodes into the very end of a buffer (no spare byte after the chunk)', () => {
    const plain = compressible(65536);
    const out = new Uint8Array(65536 + 10);
    decodeBlobInto(encodeBlob(plain, encKeys, true), encKeys, out, 10, plain.length);
    assert.equal(Buffer.compare(Buffer.from(out.buffer, 10), plain), 0);
  });
});

describe('blob codec, keys', () => {
  it('detects a wrong key', () => {
    for (const plain of [randomBytes(1000), compressible(10_000)]) {
      const blob = encodeBlob(plain, { encKey: key }, true);
      assert.throws(() => decodeBlob(blob, { encKey: otherKey }), (err: unknown) => err instanceof BlobDecodeError && /authentication/.test(err.message));
    }
  });

  it('refuses an encrypted blob without a key, and an unencrypted blob in an encrypted repository', () => {
    const enc = encodeBlob(randomBytes(100), { encKey: key }, true);
    assert.throws(() => decodeBlob(enc, {}), (err: unknown) => err instanceof BlobDecodeError && /no key/.test(err.message));
    const plain = encodeBlob(randomBytes(100), {}, true);
    assert.throws(() => decodeBlob(plain, { encKey: key }), (err: unknown) => err instanceof BlobDecodeError && /unencrypted/.test(err.message));
  });

  it('encrypts: the plaintext does not appear, and equal plaintexts give different blobs (fresh nonce)', () => {
    const plain = randomBytes(4096);
    const a = encodeBlob(plain, { encKey: key }, false);
    const b = encodeBlob(plain, { encKey: key }, false);
    assert.notDeepEqual(a, b);
    assert.equal(a.indexOf(plain.subarray(0, 64)), -1);
    assert.equal(Buffer.compare(decodeBlob(a, { encKey: key }), decodeBlob(b, { encKey: key })), 0);
  });

  it('authenticates the flags byte of an encrypted blob', () => {
    const blob = encodeBlob(compressible(10_000), { encKey: key }, true);
    assert.equal(blob[0], FLAG_ZSTD | FLAG_AESGCM);
    const bad = Buffer.from(blob);
    bad[0] = FLAG_AESGCM; // claim "not compressed"
    assert.throws(() => decodeBlob(bad, { encKey: key }), BlobDecodeError);
  });

  it(
    'detects a damaged flags byte of an unencrypted compressed blob',
    () => {
      const plain = compressible(10_000);
      const blob = encodeBlob(plain, {}, true);
      assert.equal(blob[0], FLAG_ZSTD);
      const bad = Buffer.from(blob);
      bad[0] = 0;
      assert.throws(() => decodeBlob(bad, {}), BlobDecodeError);
    },
  );
});

describe('blob codec, compressibility check', () => {
  const C = 64 * 1024;
  it('skips zstd for random chunks (stored raw) and tries it for text, runs of one byte, and mixed chunks', () => {
    const rnd = randomBytes(C);
    assert.equal(looksCompressible(rnd), false);
    assert.equal(encodeBlob(rnd, plainKeys)[0]! & FLAG_ZSTD, 0, 'random chunk stored raw');
    assert.equal(looksCompressible(compressible(C)), true);
    assert.equal(looksCompressible(Buffer.alloc(C, 7)), true);
    // Random first half, text second half: the middle sample sees the text.
    const mixed = Buffer.concat([randomBytes(C / 2), compressible(C / 2)]);
    assert.equal(looksCompressible(mixed), true);
    assert.ok(encodeBlob(mixed, plainKeys).length < C * 0.6, 'the mixed chunk is compressed');
    // Bytes from a 128-letter alphabet: 7 bits of entropy, below the threshold.
    const narrow = Buffer.from(randomBytes(C).map((b) => b & 0x7f));
    assert.equal(looksCompressible(narrow), true);
    // Chunks too small to sample are always tried.
    assert.equal(looksCompressible(randomBytes(3000)), true);
  });
});
