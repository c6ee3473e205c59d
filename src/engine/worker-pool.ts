/** The pool of chunk workers (piscina), one thread per core by default. */
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import type { CheckTask, DecodeIntoTask, EncodeResult, EncodeTask, HashTask, ReadyTask } from './chunk-worker.ts';

/** How much lower than the process's the workers' CPU priority is, by default (see chunk-worker.ts). */
export const DEFAULT_WORKER_NICE = 10;

export class ChunkWorkerPool {
  private readonly pool: Piscina;
  readonly threads: number;
  /** The last error the pool reported outside any task (for diagnostics). */
  lastError: unknown;

  constructor(threads = availableParallelism(), opts: { nice?: number } = {}) {
    this.threads = Math.max(1, threads);
    const nice = opts.nice ?? DEFAULT_WORKER_NICE;
    this.pool = new Piscina({
      filename: new URL('./chunk-worker.ts', import.meta.url).href,
      workerData: { nice },
      minThreads: this.threads,
      maxThreads: this.threads,
      idleTimeout: 1000,
    });
    // Piscina reports protocol problems (e.g. a result arriving for a task aborted a moment before)
    // as 'error' events; the affected task has already settled, so record instead of crashing.
    this.pool.on('error', (err: unknown) => {
      this.lastError = err;
    });
  }

  hash(t: Omit<HashTask, 'kind'>, signal?: AbortSignal): Promise<Uint8Array> {
    return this.pool.run({ kind: 'hash', ...t }, signal ? { signal } : {});
  }

  async encode(t: Omit<EncodeTask, 'kind'>, signal?: AbortSignal): Promise<EncodeResult> {
    const lengths = (await this.pool.run({ kind: 'encode', ...t }, signal ? { signal } : {})) as number[];
    let total = 0;
    for (const l of lengths) total += l;
    return { data: new Uint8Array(t.out, 0, total), lengths };
  }

  /** Checks stored chunks (verify): per chunk 0 sound, 1 damaged. */
  check(t: Omit<CheckTask, 'kind'>, signal?: AbortSignal): Promise<number[]> {
    return this.pool.run({ kind: 'check', ...t }, signal ? { signal } : {});
  }

  /**
   * Decodes stored chunks into `out`; the bodies' ArrayBuffers move to the worker (callers pass only
   * buffers they own whole). With `check`, each decoded chunk must also have its expected digest.
   * Resolves to the task-order position of the first damaged chunk, or -1.
   */
  decodeInto(t: Omit<DecodeIntoTask, 'kind'>, signal?: AbortSignal): Promise<number> {
    // A body in a SharedArrayBuffer (a span several batches read, pack-fetcher.ts) is read in place: it cannot be transferred.
    const transferList = [...new Set(t.bodies.map((b) => b.buffer).filter((b): b is ArrayBuffer => !(b instanceof SharedArrayBuffer)))];
    return this.pool.run({ kind: 'decodeInto', ...t }, { ...(signal ? { signal } : {}), transferList });
  }

  async close(): Promise<void> {
    // Terminating a worker while it still loads its module (Node 24 requires the ES module) aborts
    // the whole process (an assertion in node::loader::ModuleWrap::CreateRequiredModuleFacade; seen
    // when a command failed right after it started its pool, and when an aborted task's worker was
    // being replaced). One no-op task per thread is answered only by a worker that has loaded it.
    const ready: ReadyTask = { kind: 'ready' };
    await Promise.allSettled(Array.from({ length: this.threads }, () => this.pool.run(ready)));
    await this.pool.destroy();
  }
}
