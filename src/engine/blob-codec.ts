/**
 * The framed blob: how every piece of the repository but `config` is stored (chunks, pack headers,
 * chunk maps, index segments, manifests, GC state).
 *
 *   byte 0      flags: bit 0 = zstd-compressed, bit 1 = AES-256-GCM-encrypted
 *   plain:      payload | crc32(flags byte, payload) (4 bytes LE)
 *   encrypted:  nonce (12) | ciphertext | GCM tag (16)
 *
 * Compression is kept only when it shrinks the data. Encryption authenticates; an unencrypted blob
 * carries a CRC-32 so that damage is still detected. Used on the main thread and in workers, so it
 * depends on nothing but node:crypto and node:zlib.
 */
import { createCipheriv, createDecipheriv, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import * as zlib from 'node:zlib';

const FLAG_ZSTD = 1;
const FLAG_AESGCM = 2;
const NONCE = 12;
const TAG = 16;

export const DEFAULT_ZSTD_LEVEL = 1;
/** zlib's smallest accepted output chunk size. */
const MIN_ZLIB_CHUNK = 64;

export interface BlobKeys {
  /** 32-byte AES-256-GCM key; absent for an unencrypted repository. */
  encKey?: Uint8Array | undefined;
}

const SAMPLE_BYTES = 4096;
/** Shannon entropy (bits per byte) above which a sample counts as incompressible. */
const RAW_ENTROPY_BITS = 7.5;

/**
 * Whether compressing `plain` is worth trying. zstd on incompressible 64 KiB chunks runs at ~500 MB/s
 * and gains nothing. The byte entropy of two 4 KiB samples (start and middle) decides in a few
 * microseconds: random, encrypted or already compressed data is close to 8 bits per byte.
 */
export function looksCompressible(plain: Uint8Array): boolean {
  if (plain.length < 4 * SAMPLE_BYTES) return true;
  const counts = new Uint32Array(256);
  for (const at of [0, (plain.length >>> 1) - SAMPLE_BYTES / 2]) {
    counts.fill(0);
    for (let i = at; i < at + SAMPLE_BYTES; i++) counts[plain[i]!]!++;
    let h = 0;
    for (let v = 0; v < 256; v++) {
      const c = counts[v]!;
      if (c) {
        const p = c / SAMPLE_BYTES;
        h -= p * Math.log2(p);
      }
    }
    if (h < RAW_ENTROPY_BITS) return true;
  }
  return false;
}

/** The most bytes encodeBlobInto writes for a `plainBytes` input. */
/** CRC-32 over the flags byte and the payload, so a flipped flag is detected too. */
function blobCrc(flags: number, payload: Uint8Array): number {
  return zlib.crc32(payload, zlib.crc32(Uint8Array.of(flags)));
}

export function maxEncodedBytes(plainBytes: number, keys: BlobKeys): number {
  return keys.encKey ? 1 + NONCE + plainBytes + TAG : 1 + plainBytes + 4;
}

const keyObjects = new WeakMap<Uint8Array, KeyObject>();
function keyObjectOf(key: Uint8Array): KeyObject {
  let k = keyObjects.get(key);
  if (!k) keyObjects.set(key, (k = createSecretKey(key)));
  return k;
}

/**
 * Encodes `plain` into `out` at `outOffset` (room: maxEncodedBytes) and returns the bytes written.
 * `nonce` (12 random bytes) is required when encrypting.
 */
export function encodeBlobInto(plain: Uint8Array, keys: BlobKeys, compress: boolean, level: number, out: Uint8Array, outOffset: number, nonce?: Uint8Array): number {
  let payload: Uint8Array = plain;
  let flags = 0;
  if (compress && plain.length > 64 && looksCompressible(plain)) {
    // chunkSize: one output buffer the size of the input. Node's default (16 KiB) makes the sync call
    // loop and concatenate, which costs as much as the compression itself for 64 KiB chunks.
    const z = zlib.zstdCompressSync(plain, { chunkSize: Math.max(MIN_ZLIB_CHUNK, plain.length), params: { [zlib.constants.ZSTD_c_compressionLevel]: level } });
    if (z.length < plain.length) {
      payload = z;
      flags |= FLAG_ZSTD;
    }
  }
  if (keys.encKey) {
    flags |= FLAG_AESGCM;
    const iv = nonce ?? randomBytes(NONCE);
    out[outOffset] = flags;
    out.set(iv, outOffset + 1);
    const c = createCipheriv('aes-256-gcm', keyObjectOf(keys.encKey), iv);
    c.setAAD(out.subarray(outOffset, outOffset + 1));
    let off = outOffset + 1 + NONCE;
    const ct = c.update(payload);
    out.set(ct, off);
    off += ct.length;
    const fin = c.final();
    out.set(fin, off);
    off += fin.length;
    out.set(c.getAuthTag(), off);
    return off + TAG - outOffset;
  }
  out[outOffset] = flags;
  out.set(payload, outOffset + 1);
  new DataView(out.buffer, out.byteOffset).setUint32(outOffset + 1 + payload.length, blobCrc(flags, payload), true);
  return 1 + payload.length + 4;
}

export function encodeBlob(plain: Uint8Array, keys: BlobKeys, compress = true, level = DEFAULT_ZSTD_LEVEL): Buffer {
  const out = Buffer.allocUnsafe(maxEncodedBytes(plain.length, keys));
  const n = encodeBlobInto(plain, keys, compress, level, out, 0);
  return out.subarray(0, n);
}

export class BlobDecodeError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BlobDecodeError';
  }
}

export function decodeBlob(blob: Uint8Array, keys: BlobKeys, maxOutputBytes?: number): Buffer {
  if (blob.length < 5) throw new BlobDecodeError('blob too short');
  const flags = blob[0]!;
  if (flags & ~(FLAG_ZSTD | FLAG_AESGCM)) throw new BlobDecodeError(`unknown blob flags ${flags}`);
  let payload: Buffer;
  if (flags & FLAG_AESGCM) {
    if (!keys.encKey) throw new BlobDecodeError('blob is encrypted but the repository has no key');
    if (blob.length < 1 + NONCE + TAG) throw new BlobDecodeError('encrypted blob too short');
    const d = createDecipheriv('aes-256-gcm', keyObjectOf(keys.encKey), blob.subarray(1, 1 + NONCE));
    d.setAAD(blob.subarray(0, 1));
    d.setAuthTag(blob.subarray(blob.length - TAG));
    try {
      const a = d.update(blob.subarray(1 + NONCE, blob.length - TAG));
      const b = d.final();
      payload = b.length ? Buffer.concat([a, b]) : a;
    } catch (err) {
      throw new BlobDecodeError('blob failed authentication (damaged or wrong key)', { cause: err });
    }
  } else {
    if (keys.encKey) throw new BlobDecodeError('unencrypted blob in an encrypted repository');
    payload = Buffer.from(blob.buffer, blob.byteOffset + 1, blob.length - 5);
    const crc = Buffer.from(blob.buffer, blob.byteOffset, blob.length).readUInt32LE(blob.length - 4);
    if (blobCrc(flags, payload) !== crc) throw new BlobDecodeError('blob checksum mismatch (damaged)');
  }
  if (flags & FLAG_ZSTD) {
    try {
      // Decompressing with the output size known up front doubles the speed (see chunkSize above).
      return zlib.zstdDecompressSync(payload, maxOutputBytes ? { maxOutputLength: maxOutputBytes, chunkSize: Math.max(MIN_ZLIB_CHUNK, maxOutputBytes) } : {});
    } catch (err) {
      throw new BlobDecodeError('blob failed to decompress (damaged)', { cause: err });
    }
  }
  return payload;
}
