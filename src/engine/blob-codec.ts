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

const SAMPLE_BYTES = 1024;
/** Shannon entropy (bits per byte) above which a sample counts as incompressible. */
const RAW_ENTROPY_BITS = 7.5;
/** c * log2(c) for every count a sample can hold, so the entropy needs no logarithm per chunk. */
const C_LOG_C = Float64Array.from({ length: SAMPLE_BYTES + 1 }, (_, c) => (c ? c * Math.log2(c) : 0));
/** Entropy H = log2(S) - sum(c log2 c) / S, so H < RAW_ENTROPY_BITS  <=>  sum(c log2 c) > this. */
const COMPRESSIBLE_SUM = (Math.log2(SAMPLE_BYTES) - RAW_ENTROPY_BITS) * SAMPLE_BYTES;
const sampleCounts = new Uint32Array(256);

/**
 * Whether compressing `plain` is worth trying. zstd on incompressible 64 KiB chunks costs ~30 us
 * and gains nothing. The byte entropy of two 1 KiB samples (start and middle) decides in ~2 us:
 * random, encrypted or already compressed data is close to 8 bits per byte (a 1 KiB sample of
 * random bytes measures ~7.8). Measured on the benchmark volume's 22,163 non-zero chunks: the same
 * decisions as two 4 KiB samples, at a quarter of the cost; 31 chunks that zstd would shrink by a
 * few percent are stored raw, and no incompressible one is tried.
 */
export function looksCompressible(plain: Uint8Array): boolean {
  if (plain.length < 4 * SAMPLE_BYTES) return true;
  const counts = sampleCounts;
  for (const at of [0, (plain.length >>> 1) - SAMPLE_BYTES / 2]) {
    counts.fill(0);
    for (let i = at; i < at + SAMPLE_BYTES; i++) counts[plain[i]!]!++;
    let sum = 0;
    for (let v = 0; v < 256; v++) sum += C_LOG_C[counts[v]!]!;
    if (sum > COMPRESSIBLE_SUM) return true;
  }
  return false;
}

/** The native handle of a zlib stream, as node:zlib's own synchronous path drives it. */
interface ZstdHandle {
  writeSync(flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number): void;
  reset(): void;
}
type ZstdStream = (zlib.ZstdCompress | zlib.ZstdDecompress) & { _handle?: ZstdHandle | null; _writeState?: Uint32Array };

/**
 * A zstd context kept for many frames. zlib.zstdCompressSync and zstdDecompressSync create a new
 * zstd context for every call and allocate their output: for 64 KiB chunks that is most of the cost
 * (measured on this project's log-like test data: compression 252 MB/s per call vs 759 MB/s with one
 * context, decompression 617 vs 1331 MB/s; the frames are byte-identical). Node has no public
 * reusable synchronous context, so this drives the stream's native handle exactly as node:zlib's
 * processChunkSync does, but writes into the caller's buffer and keeps the context. Written by hand
 * because no npm zstd binding installs without a download or a compiler on the user's machine.
 * A context that reported an error is dropped (node destroys it); the next frame gets a new one.
 */
class ZstdContext {
  private stream: ZstdStream | null = null;
  private readonly create: () => ZstdStream;
  constructor(create: () => ZstdStream) {
    this.create = create;
  }

  /**
   * Runs one whole frame of `input` into out[outOff, outOff + room). Returns the bytes written (less
   * than `room`), or -1 when they did not fit. Throws when zstd reports an error.
   */
  frame(input: Uint8Array, out: Uint8Array, outOff: number, room: number): number {
    let s = this.stream;
    if (!s) {
      s = this.create();
      s.on('error', () => undefined); // node emits the error a tick later; it is thrown below
      this.stream = s;
    }
    const h = s._handle;
    const state = s._writeState;
    if (!h || !state) {
      this.stream = null;
      throw new Error('zstd context unavailable');
    }
    h.writeSync(zlib.constants.ZSTD_e_end, input, 0, input.length, out, outOff, room);
    if (s.destroyed || !s._handle) {
      this.stream = null;
      throw new Error('zstd reported an error (damaged data)');
    }
    // Output full (zstd may have taken all input and still hold the frame's end) or input left over:
    // the frame did not fit. A frame that fills `room` exactly counts as not fitting too. The
    // context stopped midway, so it is dropped (the handle's reset() would also forget the level).
    if (state[0] === 0 || state[1] !== 0) {
      s.close();
      this.stream = null;
      return -1;
    }
    return room - state[0]!;
  }

  /** Drops the context (after a frame that ended short: it may be waiting for the rest). */
  discard(): void {
    this.stream?.close();
    this.stream = null;
  }
}

/**
 * Whether this Node's zlib internals behave as ZstdContext expects: checked once per thread by
 * running two frames through one context each way and comparing with the public API's result.
 * Anything unexpected (another Node version) falls back to the public, per-call API.
 */
const hasHandleApi = ((): boolean => {
  try {
    const s = zlib.createZstdCompress() as ZstdStream;
    const shaped = typeof s._handle?.writeSync === 'function' && s._writeState instanceof Uint32Array;
    s.close();
    if (!shaped) return false;
    const level = { [zlib.constants.ZSTD_c_compressionLevel]: 1 };
    const c = new ZstdContext(() => zlib.createZstdCompress({ params: level }));
    const d = new ZstdContext(() => zlib.createZstdDecompress());
    const out = Buffer.alloc(8192);
    const back = Buffer.alloc(4097);
    for (const n of [4096, 3000]) {
      const plain = Buffer.from(Array.from({ length: n }, (_, i) => (i * 7) % 13 + (i % 50 === 0 ? 40 : 65)));
      const len = c.frame(plain, out, 0, out.length);
      if (len < 0 || !out.subarray(0, len).equals(zlib.zstdCompressSync(plain, { params: level }))) return false;
      if (d.frame(out.subarray(0, len), back, 0, n + 1) !== n || !back.subarray(0, n).equals(plain)) return false;
    }
    c.discard();
    d.discard();
    return true;
  } catch {
    return false;
  }
})();
/** Whether zstd contexts are reused on this Node (a test holds it to true on the Node version we pin). */
export const ZSTD_CONTEXTS_REUSED = hasHandleApi;
const compressors = new Map<number, ZstdContext>();
let decompressor: ZstdContext | undefined;

/** zstd-compresses `plain` into out[outOff, outOff + room); -1 when it does not fit. */
function compressInto(plain: Uint8Array, level: number, out: Uint8Array, outOff: number, room: number): number {
  if (!hasHandleApi) {
    const z = zlib.zstdCompressSync(plain, { chunkSize: Math.max(MIN_ZLIB_CHUNK, plain.length), params: { [zlib.constants.ZSTD_c_compressionLevel]: level } });
    if (z.length > room) return -1;
    out.set(z, outOff);
    return z.length;
  }
  let c = compressors.get(level);
  if (!c) compressors.set(level, (c = new ZstdContext(() => zlib.createZstdCompress({ params: { [zlib.constants.ZSTD_c_compressionLevel]: level } }))));
  return c.frame(plain, out, outOff, room);
}

/** Decompresses one frame into out[outOff, outOff + rawLength); throws unless exactly rawLength bytes came out. */
function decompressInto(payload: Uint8Array, out: Uint8Array, outOff: number, rawLength: number): void {
  let n: number;
  if (!hasHandleApi) {
    const raw = zlib.zstdDecompressSync(payload, { maxOutputLength: Math.max(1, rawLength), chunkSize: Math.max(MIN_ZLIB_CHUNK, rawLength) });
    out.set(raw.subarray(0, rawLength), outOff);
    n = raw.length;
  } else {
    decompressor ??= new ZstdContext(() => zlib.createZstdDecompress());
    // One spare byte: a frame longer than promised shows as rawLength + 1, not as a silent cut.
    const spare = outOff + rawLength + 1 <= out.length;
    n = spare ? decompressor.frame(payload, out, outOff, rawLength + 1) : decompressFramed(payload, out, outOff, rawLength);
  }
  if (n !== rawLength) {
    decompressor?.discard();
    throw new Error(`decompressed to ${n < 0 ? 'more than' : n} bytes, expected ${rawLength}`);
  }
}

let spareBuf = Buffer.alloc(0);
function decompressFramed(payload: Uint8Array, out: Uint8Array, outOff: number, rawLength: number): number {
  if (spareBuf.length < rawLength + 1) spareBuf = Buffer.allocUnsafeSlow(rawLength + 1);
  const n = decompressor!.frame(payload, spareBuf, 0, rawLength + 1);
  if (n === rawLength) out.set(spareBuf.subarray(0, n), outOff);
  return n;
}

let scratch = Buffer.alloc(0);

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
    // Kept only when it shrinks: the frame must fit in fewer bytes than the input.
    if (scratch.length < plain.length) scratch = Buffer.allocUnsafeSlow(plain.length);
    const n = compressInto(plain, level, scratch, 0, plain.length - 1);
    if (n >= 0) {
      payload = scratch.subarray(0, n);
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

/** Checks and decrypts a blob; returns its payload (still compressed when the flag says so) and flags. */
function openBlob(blob: Uint8Array, keys: BlobKeys): { flags: number; payload: Uint8Array } {
  if (blob.length < 5) throw new BlobDecodeError('blob too short');
  const flags = blob[0]!;
  if (flags & ~(FLAG_ZSTD | FLAG_AESGCM)) throw new BlobDecodeError(`unknown blob flags ${flags}`);
  if (flags & FLAG_AESGCM) {
    if (!keys.encKey) throw new BlobDecodeError('blob is encrypted but the repository has no key');
    if (blob.length < 1 + NONCE + TAG) throw new BlobDecodeError('encrypted blob too short');
    const d = createDecipheriv('aes-256-gcm', keyObjectOf(keys.encKey), blob.subarray(1, 1 + NONCE));
    d.setAAD(blob.subarray(0, 1));
    d.setAuthTag(blob.subarray(blob.length - TAG));
    try {
      const a = d.update(blob.subarray(1 + NONCE, blob.length - TAG));
      const b = d.final();
      return { flags, payload: b.length ? Buffer.concat([a, b]) : a };
    } catch (err) {
      throw new BlobDecodeError('blob failed authentication (damaged or wrong key)', { cause: err });
    }
  }
  if (keys.encKey) throw new BlobDecodeError('unencrypted blob in an encrypted repository');
  const payload = Buffer.from(blob.buffer, blob.byteOffset + 1, blob.length - 5);
  const crc = Buffer.from(blob.buffer, blob.byteOffset, blob.length).readUInt32LE(blob.length - 4);
  if (blobCrc(flags, payload) !== crc) throw new BlobDecodeError('blob checksum mismatch (damaged)');
  return { flags, payload };
}

/**
 * Decodes a blob whose plain size is known straight into out[outOff, outOff + rawLength).
 * Caution: when out[outOff + rawLength] exists, that one byte may be overwritten too (zstd gets one
 * spare byte, so that a frame longer than promised is caught rather than cut): callers decode
 * neighbouring chunks in ascending order, or leave that byte unused.
 */
export function decodeBlobInto(blob: Uint8Array, keys: BlobKeys, out: Uint8Array, outOff: number, rawLength: number): void {
  const { flags, payload } = openBlob(blob, keys);
  if (flags & FLAG_ZSTD) {
    try {
      decompressInto(payload, out, outOff, rawLength);
    } catch (err) {
      throw new BlobDecodeError('blob failed to decompress (damaged)', { cause: err });
    }
    return;
  }
  if (payload.length !== rawLength) throw new BlobDecodeError(`blob holds ${payload.length} bytes, expected ${rawLength}`);
  out.set(payload, outOff);
}

export function decodeBlob(blob: Uint8Array, keys: BlobKeys, maxOutputBytes?: number): Buffer {
  const { flags, payload } = openBlob(blob, keys);
  if (flags & FLAG_ZSTD) {
    try {
      return zlib.zstdDecompressSync(payload, maxOutputBytes ? { maxOutputLength: maxOutputBytes, chunkSize: Math.max(MIN_ZLIB_CHUNK, maxOutputBytes) } : {});
    } catch (err) {
      throw new BlobDecodeError('blob failed to decompress (damaged)', { cause: err });
    }
  }
  return Buffer.from(payload.buffer, payload.byteOffset, payload.length);
}
