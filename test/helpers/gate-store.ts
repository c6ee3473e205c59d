/**
 * An ObjectStore wrapper that holds pack writes at a gate: while it is held, every put of a pack
 * waits until the test releases the gate, or until the put's AbortSignal aborts (a cancelled job).
 * So a test decides when jobs may finish, and a job that ends while the gate is held can only
 * have ended by being cancelled.
 */
import type { Body, GetOptions, ObjectInfo, ObjectStore } from '../../src/storage/object-store.ts';

/** Pack writes wait while the gate is closed, until it opens or their signal aborts. */
export class GateStore implements ObjectStore {
  readonly inner: ObjectStore;
  private closed = false;
  private waiters: (() => void)[] = [];
  /** Pack writes waiting at the gate now. */
  waiting = 0;

  constructor(inner: ObjectStore) {
    this.inner = inner;
  }

  hold(): void {
    this.closed = true;
  }

  release(): void {
    this.closed = false;
    for (const w of this.waiters.splice(0)) w();
  }

  private async pass(key: string, signal?: AbortSignal): Promise<void> {
    if (!this.closed || !key.startsWith('packs/')) return;
    this.waiting++;
    try {
      await new Promise<void>((resolve, reject) => {
        if (signal?.aborted) return reject(signal.reason as Error);
        const onAbort = () => reject(signal!.reason as Error);
        signal?.addEventListener('abort', onAbort, { once: true });
        this.waiters.push(() => (signal?.removeEventListener('abort', onAbort), resolve()));
      });
    } finally {
      this.waiting--;
    }
  }

  async put(key: string, body: Body, signal?: AbortSignal): Promise<void> {
    await this.pass(key, signal);
    return this.inner.put(key, body, signal);
  }

  async putIfAbsent(key: string, body: Body): Promise<boolean> {
    await this.pass(key);
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
}
