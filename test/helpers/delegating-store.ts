/**
 * An ObjectStore that hands every call to another: the base of the tests' store wrappers, which
 * override only the calls they watch, hold or break.
 */
import type { Body, GetOptions, ObjectInfo, ObjectStore } from '../../src/storage/object-store.ts';

export class DelegatingStore implements ObjectStore {
  readonly inner: ObjectStore;
  readonly cheapRangeReads?: boolean;

  constructor(inner: ObjectStore) {
    this.inner = inner;
    if (inner.cheapRangeReads !== undefined) this.cheapRangeReads = inner.cheapRangeReads;
  }

  put(key: string, body: Body, signal?: AbortSignal): Promise<void> {
    return this.inner.put(key, body, signal);
  }

  putIfAbsent(key: string, body: Body): Promise<boolean> {
    return this.inner.putIfAbsent(key, body);
  }

  get(key: string, options?: GetOptions): Promise<Uint8Array> {
    return this.inner.get(key, options);
  }

  head(key: string): Promise<ObjectInfo | null> {
    return this.inner.head(key);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  allocBuffer(length: number): Promise<Uint8Array> {
    return this.inner.allocBuffer ? this.inner.allocBuffer(length) : Promise.resolve(new Uint8Array(length));
  }

  releaseBuffer(buf: Uint8Array): void {
    this.inner.releaseBuffer?.(buf);
  }

  cleanupIncomplete(olderThanMs: number): Promise<number> {
    return this.inner.cleanupIncomplete ? this.inner.cleanupIncomplete(olderThanMs) : Promise.resolve(0);
  }
}
