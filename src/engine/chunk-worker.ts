/**
 * The CPU-heavy per-chunk work, run in worker threads (piscina): digesting, encoding (zstd +
 * AES-GCM), decoding and checking digests (restore) and checking stored chunks (verify). Backup
 * and restore tasks read and write SharedArrayBuffer slots, so no volume bytes are copied between
 * threads.
 */
import { chunkHasher, DIGEST_BYTES, type ChunkDigest, type ChunkHasher } from './chunk-digest.ts';
import { randomBytes } from 'node:crypto';
import { readlinkSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { isMainThread, workerData } from 'node:worker_threads';
import { decodeBlob, decodeBlobInto, encodeBlobInto } from './blob-codec.ts';
import { releaseGarbage, releaseYoungGarbage } from './memory.ts';


export interface HashTask {
  kind: 'hash';
  sab: SharedArrayBuffer;
  offset: number;
  length: number;
  chunkSizeBytes: number;
  digest: ChunkDigest;
  /** Hash only the chunks whose byte here is 1 (the others get the all-zero digest); default all. */
  only?: Uint8Array | undefined;
}

export interface EncodeTask {
  kind: 'encode';
  sab: SharedArrayBuffer;
  /** pairs of (offset into sab, length) */
  ranges: number[];
  encKey?: Uint8Array | undefined;
  level: number;
  /** where the encoded chunks go, back to back from offset 0 (room: maxEncodedBytes of every range) */
  out: SharedArrayBuffer;
}

export interface EncodeResult {
  /** the encoded chunks, back to back (a view of the task's `out`) */
  data: Uint8Array;
  lengths: number[];
}

/** Verify's check: every stored blob decodes and its plaintext has the digest it is filed under. */
export interface CheckTask {
  kind: 'check';
  /** stored blobs, back to back */
  data: Uint8Array;
  lengths: number[];
  rawLengths: number[];
  /** expected digests, DIGEST_BYTES each */
  digests: Uint8Array;
  encKey?: Uint8Array | undefined;
  digest: ChunkDigest;
}

/**
 * Restore's decode: stored blobs (fetched pack ranges, transferred here) decoded straight into a
 * shared output slot, so no decoded bytes travel between threads or need collecting. With `check`,
 * each decoded chunk's digest is computed over the bytes in the slot (the very bytes that will be
 * written) and compared with the digest it was restored under.
 */
export interface DecodeIntoTask {
  kind: 'decodeInto';
  bodies: Uint8Array[];
  /** five numbers per chunk: body index, offset in that body, stored length, raw length, offset in `out` */
  chunks: number[];
  out: SharedArrayBuffer;
  encKey?: Uint8Array | undefined;
  check?: {
    /** the chunks' expected digests, DIGEST_BYTES each, in task order */
    digests: Uint8Array;
    digest: ChunkDigest;
  } | undefined;
}

/** Does nothing: answered once the worker has loaded this module (ChunkWorkerPool.close). */
export interface ReadyTask {
  kind: 'ready';
}

export type ChunkTask = HashTask | EncodeTask | CheckTask | DecodeIntoTask | ReadyTask;

/**
 * Chunk workers run at a lower CPU priority (nice, default +10; HAVEN_WORKER_NICE, 0 to keep the
 * process's). Their work has slack, while the ordered stages (reading and deciding in a backup,
 * writing in a restore) run on one thread each and set the pace: on 2 cores, when the whole-volume
 * SHA-256 was one of those stages, this took an incremental backup of 4 GiB from 4.2 s to 3.9 s.
 * It also keeps a backup's bulk work behind a host's other processes (virtual machines). Linux
 * only: a thread's id from /proc/thread-self, then setpriority on it, which only lowers priority
 * and needs no privilege.
 */
if (!isMainThread) {
  const nice = Number((workerData as { nice?: number } | undefined)?.nice ?? 0);
  if (nice > 0) {
    try {
      const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
      if (tid > 0) setPriority(tid, Math.min(19, getPriority(tid) + nice)); // relative to the process's own
    } catch {
      // not Linux, or /proc is not mounted: run at the process's priority
    }
  }
}

const ZERO = new Uint8Array(1 << 20);

function isZero(b: Uint8Array): boolean {
  for (let o = 0; o < b.length; o += ZERO.length) {
    const n = Math.min(ZERO.length, b.length - o);
    if (!Buffer.from(b.buffer, b.byteOffset + o, n).equals(ZERO.subarray(0, n))) return false;
  }
  return true;
}

// Hashers by algorithm and key (a worker serves one repository at a time, rarely more).
const hashers = new Map<string, ChunkHasher>();
function hasherFor(digest: ChunkDigest): ChunkHasher {
  const id = `${digest.alg}:${digest.key ? Buffer.from(digest.key).toString('base64') : ''}`;
  let h = hashers.get(id);
  if (!h) {
    if (hashers.size > 16) hashers.clear();
    hashers.set(id, (h = chunkHasher(digest)));
  }
  return h;
}

function hash(t: HashTask): Uint8Array {
  const digestOf = hasherFor(t.digest);
  const n = Math.ceil(t.length / t.chunkSizeBytes);
  const out = new Uint8Array(n * DIGEST_BYTES);
  for (let i = 0; i < n; i++) {
    if (t.only && !t.only[i]) continue;
    const start = t.offset + i * t.chunkSizeBytes;
    const len = Math.min(t.chunkSizeBytes, t.offset + t.length - start);
    const chunk = new Uint8Array(t.sab, start, len);
    if (!isZero(chunk)) digestOf(chunk, out, i * DIGEST_BYTES); // zero chunk: digest stays all-zero (a hole)
  }
  return out;
}

/** Encodes the chunks back to back into the task's shared `out`; returns each one's length. */
function encode(t: EncodeTask): number[] {
  const count = t.ranges.length / 2;
  const keys = { encKey: t.encKey };
  const out = new Uint8Array(t.out);
  const nonces = t.encKey ? randomBytes(12 * count) : undefined; // one RNG call per task
  const lengths: number[] = [];
  let off = 0;
  for (let k = 0; k < count; k++) {
    const n = encodeBlobInto(new Uint8Array(t.sab, t.ranges[k * 2]!, t.ranges[k * 2 + 1]!), keys, true, t.level, out, off, nonces?.subarray(k * 12, k * 12 + 12));
    lengths.push(n);
    off += n;
  }
  return lengths;
}

/** Per chunk: 0 sound, 1 damaged (does not decode, wrong size, or wrong digest). */
function check(t: CheckTask): number[] {
  const damaged: number[] = [];
  const digest = new Uint8Array(DIGEST_BYTES);
  const digestOf = hasherFor(t.digest);
  let off = 0;
  for (let i = 0; i < t.lengths.length; i++) {
    const blob = t.data.subarray(off, off + t.lengths[i]!);
    off += t.lengths[i]!;
    let ok = false;
    try {
      const raw = decodeBlob(blob, { encKey: t.encKey }, t.rawLengths[i]!);
      if (raw.length === t.rawLengths[i]) {
        digestOf(raw, digest, 0);
        ok = Buffer.from(digest).equals(Buffer.from(t.digests.buffer, t.digests.byteOffset + i * DIGEST_BYTES, DIGEST_BYTES));
      }
    } catch {
      // damaged; the caller names the chunk and the backups using it
    }
    damaged.push(ok ? 0 : 1);
  }
  return damaged;
}

/** The position (in task order) of the first chunk that failed to decode or to match its digest, or -1. */
function decodeInto(t: DecodeIntoTask): number {
  const out = new Uint8Array(t.out);
  const digestOf = t.check ? hasherFor(t.check.digest) : null;
  const got = new Uint8Array(DIGEST_BYTES);
  for (let k = 0; k * 5 < t.chunks.length; k++) {
    const c = k * 5;
    const body = t.bodies[t.chunks[c]!]!;
    const at = t.chunks[c + 1]!;
    const len = t.chunks[c + 2]!;
    const rawLen = t.chunks[c + 3]!;
    if (at + len > body.length) return k;
    try {
      decodeBlobInto(body.subarray(at, at + len), { encKey: t.encKey }, out, t.chunks[c + 4]!, rawLen);
    } catch {
      return k; // the caller names the chunk
    }
    if (digestOf) {
      digestOf(out.subarray(t.chunks[c + 4]!, t.chunks[c + 4]! + rawLen), got, 0);
      const want = t.check!.digests;
      if (!Buffer.from(got).equals(Buffer.from(want.buffer, want.byteOffset + k * DIGEST_BYTES, DIGEST_BYTES))) return k;
    }
  }
  return -1;
}

/** Bytes of deciphered copies a decode task left behind (one per chunk, the size of its stored bytes). */
function decipheredBytes(t: DecodeIntoTask): number {
  let n = 0;
  if (t.encKey) for (let c = 0; c < t.chunks.length; c += 5) n += t.chunks[c + 2]!;
  return n;
}

// Results are small (digests, lengths, flags): the bytes themselves stay in the shared slots.
export default function runChunkTask(task: ChunkTask): Uint8Array | number | number[] {
  switch (task.kind) {
    case 'hash':
      return hash(task);
    case 'encode': {
      const lengths = encode(task);
      // The cipher's per-chunk output buffers all died young: a scavenge returns their memory, at
      // once (a backup's peak RSS is a goal, and its tasks are few and large).
      if (task.encKey) releaseYoungGarbage();
      return lengths;
    }
    case 'decodeInto': {
      const bad = decodeInto(task);
      // Bodies moved here (a fetch from S3: large) are scavenged at once, like a backup's garbage;
      // the deciphered copies alone (small and many: an NBD export's tasks) are gathered first.
      if (task.bodies.some((b) => !(b.buffer instanceof SharedArrayBuffer))) releaseYoungGarbage();
      else releaseYoungGarbage(decipheredBytes(task));
      return bad;
    }
    case 'check': {
      const r = check(task);
      releaseGarbage(task.data.length * 2); // the blobs (a structured-clone copy) and their plaintexts
      return r;
    }
    case 'ready':
      return 0;
  }
}
