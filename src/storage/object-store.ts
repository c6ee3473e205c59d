/**
 * The narrow storage contract the engine writes through: put, get, head, list and delete by key.
 *
 * Keys are '/'-separated relative paths made of [A-Za-z0-9._-] segments. A store knows keys and
 * bytes, nothing about backups. Implementations: LocalObjectStore (a directory), MemoryObjectStore
 * (tests) and S3ObjectStore (an S3-compatible object store, for scale-out); all pass the same
 * conformance suite (store-conformance.ts).
 */
export interface ObjectInfo {
  key: string;
  sizeBytes: number;
  /** Last modification time in ms since the epoch, as the store reports it. */
  modifiedAtMs: number;
}

export type Body = Uint8Array | readonly Uint8Array[];

export function bodyParts(body: Body): readonly Uint8Array[] {
  return body instanceof Uint8Array ? [body] : body;
}

export interface GetOptions {
  /** Read only `length` bytes from `offset`; reading past the end returns what exists. */
  offset?: number;
  length?: number;
  signal?: AbortSignal;
  /**
   * A buffer the caller lends for the bytes, at least as long as the bytes asked for (`length`). A
   * store may read into it and return a view of it from its start instead of a fresh buffer; the
   * caller tells which by the returned view's buffer, and copies when it is not `into`'s. Large reads
   * into reused memory save a page fault per 4 KiB, which on a small VM costs more than the copy
   * (restore's pack fetcher pools these buffers). A store that cannot simply ignores it.
   */
  into?: Uint8Array;
  /**
   * With `into`: called as the bytes land there, with how many from its start are in so far (growing;
   * at most every MiB or so), so that a caller can use the first bytes of a long read before its
   * end. A store that reads all at once, or that did not use `into`, need not call it.
   */
  onProgress?: (bytes: number) => void;
  /**
   * The object is never replaced while it exists (a pack: written once under a fresh id), so a store
   * may keep it open between reads (the local store does; see open-files.ts).
   */
  immutable?: boolean;
}

export interface ObjectStore {
  /**
   * Stores `body` under `key`, atomically and durably: when the promise resolves the object survives
   * a crash, and readers never see a partial object. Overwriting is allowed (last writer wins).
   * `body` may come in parts, stored back to back (packs are assembled without a copy).
   * Throws on failure; a retrying decorator may retry network-style errors (with the S3 store).
   */
  put(key: string, body: Body, signal?: AbortSignal): Promise<void>;
  /**
   * Stores `body` under `key` only if no object exists there, atomically (exactly one of several
   * concurrent callers wins). Returns false when the key already existed. Durable like put().
   */
  putIfAbsent(key: string, body: Body): Promise<boolean>;
  /**
   * Returns the object's bytes (or a range of them) in a buffer the caller owns: fresh, shared with
   * nobody (restore moves it to a worker thread), or a view of `options.into`. Throws
   * ObjectNotFoundError when absent.
   */
  get(key: string, options?: GetOptions): Promise<Uint8Array>;
  /** Size and time of an object, or null when absent. */
  head(key: string): Promise<ObjectInfo | null>;
  /** Every object whose key starts with `prefix`, in no particular order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Removes an object. Deleting an absent key is not an error (idempotent). */
  delete(key: string): Promise<void>;
  /** Optional: removes leftovers of writes that crashed more than `olderThanMs` ago. */
  cleanupIncomplete?(olderThanMs: number): Promise<number>;
  /**
   * Optional: a zeroed buffer of `length` bytes that put() writes fastest from (the local store:
   * one aligned for direct I/O, which skips the page cache). For large buffers a caller reuses,
   * such as pack buffers; any other buffer works with put() too.
   */
  allocBuffer?(length: number): Promise<Uint8Array>;
  /**
   * Optional, with allocBuffer: takes back a buffer allocBuffer returned (the buffer itself, not a
   * view into it), exactly once, when nothing uses it any more (the local store pools its aligned
   * memory). Any other buffer is ignored.
   */
  releaseBuffer?(buf: Uint8Array): void;
  /**
   * Optional: how many large puts (packs) a writer should keep in flight for best throughput. Each
   * one holds a pack buffer, so this is a memory bound too. Absent: 1 (a local disk is written
   * fastest by one stream; an object store over HTTP needs several requests at once to fill the pipe).
   */
  readonly writeConcurrency?: number;
  /**
   * Optional: ranged reads cost little more than the bytes themselves (a local disk), so a restore
   * reads each batch's chunks on their own instead of planning large shared spans over a window,
   * which an object store over HTTP needs (pack-fetcher.ts) and which costs copies.
   */
  readonly cheapRangeReads?: boolean;
  /** Optional: releases connections (the S3 store); the store is not used afterwards. */
  close?(): void | Promise<void>;
}

export class ObjectNotFoundError extends Error {
  readonly key: string;
  constructor(key: string, options?: { cause?: unknown }) {
    super(`object ${key} not found`, options);
    this.name = 'ObjectNotFoundError';
    this.key = key;
  }
}

const KEY_RE = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

export function assertValidKey(key: string): void {
  if (!KEY_RE.test(key) || key.split('/').some((s) => s === '.' || s === '..')) {
    throw new Error(`invalid object key: ${JSON.stringify(key)}`);
  }
}

export async function collectKeys(store: ObjectStore, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const info of store.list(prefix)) out.push(info);
  return out;
}
