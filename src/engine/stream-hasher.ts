/**
 * StreamHasher: the whole-volume SHA-256, computed in a thread of its own. Only restores of backups
 * from before the volume digest (manifest format 1) use it: new backups record a volume digest
 * (volume-digest.ts) and need no pass over every byte.
 *
 * SHA-256 is sequential, and at ~1.6 GB/s it was the main thread's largest cost, stalling the
 * pipeline that feeds the chunk workers. Here the main thread only posts the bytes (shared slots
 * without a copy) in volume order; each update resolves once hashed, so a slot can be reused safely.
 */
import { Worker } from 'node:worker_threads';

type Pending = { resolve: () => void; reject: (e: unknown) => void };

export class StreamHasher {
  private readonly worker: Worker;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private digestWaiter: { resolve: (hex: string) => void; reject: (e: unknown) => void } | undefined;
  private failure: unknown;

  constructor() {
    this.worker = new Worker(new URL('./stream-hasher-worker.ts', import.meta.url));
    this.worker.on('message', (m: { ack?: number; digest?: string }) => {
      if (m.ack !== undefined) {
        this.pending.get(m.ack)?.resolve();
        this.pending.delete(m.ack);
      } else if (m.digest !== undefined) this.digestWaiter?.resolve(m.digest);
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => {
      if (code !== 0) this.fail(new Error(`hashing thread exited with code ${code}`));
    });
  }

  private fail(err: unknown): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.digestWaiter?.reject(err);
  }

  private post(msg: object): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    const seq = this.seq++;
    const p = new Promise<void>((resolve, reject) => this.pending.set(seq, { resolve, reject }));
    this.worker.postMessage({ ...msg, seq });
    return p;
  }

  /**
   * Hashes, in order, pieces of a SharedArrayBuffer given as (offset, length) pairs; offset -1 means
   * `length` zero bytes. Resolves when the bytes may be overwritten.
   */
  updateSharedPieces(sab: SharedArrayBuffer, pieces: number[]): Promise<void> {
    return this.post({ sab, pieces });
  }

  async digestHex(): Promise<string> {
    if (this.failure) throw this.failure;
    const p = new Promise<string>((resolve, reject) => (this.digestWaiter = { resolve, reject }));
    this.worker.postMessage({ finish: true });
    return p;
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
