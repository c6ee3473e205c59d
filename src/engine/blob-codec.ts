/**
 * The framed blob: how every piece of the repository but `config` is stored (chunks, pack headers,
 * chunk maps, index segments, manifests, GC state).
 *
 *   byte 0      flags: bit 0 = zstd-compressed, bit 1 = AES-256-GCM-encrypted
 *   plain:      payload | crc32(payload) (4 bytes LE)
 *   encrypted:  nonce (12) | ciphertext | GCM tag (16)
 *
 * Compression is kept only when it shrinks the data. Encryption authenticates; an unencrypted blob
 * carries a CRC-32 so that damage is still detected. Used on the main thread and in workers, so it
 * depends on nothing but node:crypto and node:zlib.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import * as zlib from 'node:zlib';

const FLAG_ZSTD = 1;
const FLAG_AESGCM = 2;
const NONCE = 12;
const TAG = 16;

export const DEFAULT_ZSTD_LEVEL = 1;

export interface BlobKeys {
  /** 32-byte AES-256-GCM key; absent for an unencrypted repository. */
  encKey?: Uint8Array | undefined;
}

const PROBE_BYTES = 4096;

/**
 * Whether compressing `plain` is worth trying. zstd on incompressible 64 KiB chunks runs at ~500 MB/s
 * and gains nothing; two 4 KiB samples (start and middle) decide at ~2 GB/s of input instead. A chunk
 * whose samples both fail to shrink by 3% is stored raw.
 */
function looksCompressible(plain: Uint8Array, level: number): boolean {
  if (plain.length < 4 * PROBE_BYTES) return true;
  const opts = { params: { [zlib.constants.ZSTD_c_compressionLevel]: level } };
  for (const at of [0, (plain.length >>> 1) - PROBE_BYTES / 2]) {
    if (zlib.zstdCompressSync(plain.subarray(at, at + PROBE_BYTES), opts).length < PROBE_BYTES * 0.97) return true;
  }
  return false;
}

export function encodeBlob(plain: Uint8Array, keys: BlobKeys, compress = true, level = DEFAULT_ZSTD_LEVEL): Buffer {
  let payload: Uint8Array = plain;
  let flags = 0;
  if (compress && plain.length > 64 && looksCompressible(plain, level)) {
    const z = zlib.zstdCompressSync(plain, { params: { [zlib.constants.ZSTD_c_compressionLevel]: level } });
    if (z.length < plain.length) {
      payload = z;
      flags |= FLAG_ZSTD;
    }
  }
  if (keys.encKey) {
    flags |= FLAG_AESGCM;
    const out = Buffer.allocUnsafe(1 + NONCE + payload.length + TAG);
    out[0] = flags;
    const nonce = randomBytes(NONCE);
    nonce.copy(out, 1);
    const c = createCipheriv('aes-256-gcm', keys.encKey, nonce);
    c.setAAD(out.subarray(0, 1));
    let off = 1 + NONCE;
    off += c.update(payload).copy(out, off);
    off += c.final().copy(out, off);
    c.getAuthTag().copy(out, off);
    return out;
  }
  const out = Buffer.allocUnsafe(1 + payload.length + 4);
  out[0] = flags;
  out.set(payload, 1);
  out.writeUInt32LE(zlib.crc32(payload), 1 + payload.length);
  return out;
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
    const d = createDecipheriv('aes-256-gcm', keys.encKey, blob.subarray(1, 1 + NONCE));
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
    if (zlib.crc32(payload) !== crc) throw new BlobDecodeError('blob checksum mismatch (damaged)');
  }
  if (flags & FLAG_ZSTD) {
    try {
      return zlib.zstdDecompressSync(payload, maxOutputBytes ? { maxOutputLength: maxOutputBytes } : {});
    } catch (err) {
      throw new BlobDecodeError('blob failed to decompress (damaged)', { cause: err });
    }
  }
  return payload;
}
