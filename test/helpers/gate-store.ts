/**
 * An ObjectStore wrapper that holds pack writes at a gate: while it is held, every put of a pack
 * waits until the test releases the gate, or until the put's AbortSignal aborts (a cancelled job).
 * So a test decides when jobs may finish, and a job that ends while the gate is held can only
 * have ended by being cancelled.
 */
import type { Body } from '../../src/storage/object-store.ts';
import { DelegatingStore } from './delegating-store.ts';

/** Pack writes wait while the gate is closed, until it opens or their signal aborts. */
export class GateStore extends DelegatingStore {
  private closed = false;
  private waiters: (() => void)[] = [];
  /** Pack writes waiting at the gate now. */
  waiting = 0;

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

  override async put(key: string, body: Body, signal?: AbortSignal): Promise<void> {
    await this.pass(key, signal);
    return this.inner.put(key, body, signal);
  }

  override async putIfAbsent(key: string, body: Body): Promise<boolean> {
    await this.pass(key);
    return this.inner.putIfAbsent(key, body);
  }

}
