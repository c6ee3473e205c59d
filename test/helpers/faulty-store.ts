/**
 * FaultyStore: a test fake, never used by Haven itself. An ObjectStore decorator that misbehaves
 * the way real object stores and networks do, on purpose and reproducibly (every choice comes from
 * a seeded RNG, so a failing run can be replayed with its seed):
 * - failPut / failGet / failOther: the operation throws a transient-looking error (ECONNRESET,
 *   "503 SlowDown") with this probability, and the inner store sees no put/delete;
 * - truncateGet: a get resolves with a body cut short (a dropped connection the client did not
 *   notice): the worst kind, since nothing but the caller's own checks reveals it;
 * - delayMs: each operation waits a random time in [0, delayMs] first, so concurrent operations
 *   complete out of order;
 * - shuffleList: list() yields its objects in a shuffled order (the contract promises no order);
 * - failAfterOps: every operation after the first N throws (the store went away for good).
 * `only(op, key)` restricts the faults to some operations or keys; heal() stops every fault, so a
 * test can check what the faults left behind. `counts` says how many faults were injected.
 */
import type { Body, GetOptions, ObjectInfo, ObjectStore } from '../../src/storage/object-store.ts';
import { Rng } from './volumes.ts';

export type StoreOp = 'put' | 'putIfAbsent' | 'get' | 'head' | 'list' | 'delete';

export interface FaultPlan {
  seed: number;
  failPut?: number;
  failGet?: number;
  /** head, list and delete. */
  failOther?: number;
  truncateGet?: number;
  delayMs?: number;
  shuffleList?: boolean;
  failAfterOps?: number;
  only?: (op: StoreOp, key: string) => boolean;
}

/** The error a faulty operation throws: shaped like a network failure (code ECONNRESET). */
export class InjectedStoreError extends Error {
  readonly code = 'ECONNRESET';
  constructor(op: StoreOp, key: string) {
    super(`injected fault: ${op} ${key}: connection reset by peer`);
    this.name = 'InjectedStoreError';
  }
}

export class FaultyStore implements ObjectStore {
  readonly inner: ObjectStore;
  plan: FaultPlan;
  private rng: Rng;
  private healed = false;
  ops = 0;
  readonly counts = { failed: 0, truncated: 0, delayed: 0, shuffled: 0 };

  constructor(inner: ObjectStore, plan: FaultPlan) {
    this.inner = inner;
    this.plan = plan;
    this.rng = new Rng(plan.seed);
  }

  /** Faults injected so far, all kinds. */
  get injected(): number {
    return this.counts.failed + this.counts.truncated + this.counts.delayed + this.counts.shuffled;
  }

  /** Stops every fault (the store is well again). */
  heal(): void {
    this.healed = true;
  }

  /** Starts faults again with a new plan. */
  sicken(plan: FaultPlan): void {
    this.plan = plan;
    this.rng = new Rng(plan.seed);
    this.healed = false;
  }

  private applies(op: StoreOp, key: string): boolean {
    return !this.healed && (this.plan.only ? this.plan.only(op, key) : true);
  }

  private chance(p: number | undefined): boolean {
    return p !== undefined && p > 0 && this.rng.int(1_000_000) < p * 1_000_000;
  }

  /** Counts the operation, delays it, and throws when it is to fail. */
  private async enter(op: StoreOp, key: string): Promise<void> {
    this.ops++;
    if (!this.applies(op, key)) return;
    if (this.plan.delayMs) {
      const ms = this.rng.int(this.plan.delayMs + 1);
      if (ms > 0) {
        this.counts.delayed++;
        await new Promise((r) => setTimeout(r, ms));
      }
    }
    const rate = op === 'put' || op === 'putIfAbsent' ? this.plan.failPut : op === 'get' ? this.plan.failGet : this.plan.failOther;
    if ((this.plan.failAfterOps !== undefined && this.ops > this.plan.failAfterOps) || this.chance(rate)) {
      this.counts.failed++;
      throw new InjectedStoreError(op, key);
    }
  }

  async put(key: string, body: Body, signal?: AbortSignal): Promise<void> {
    await this.enter('put', key);
    return this.inner.put(key, body, signal);
  }

  async putIfAbsent(key: string, body: Body): Promise<boolean> {
    await this.enter('putIfAbsent', key);
    return this.inner.putIfAbsent(key, body);
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    await this.enter('get', key);
    const body = await this.inner.get(key, options);
    if (body.length > 0 && this.applies('get', key) && this.chance(this.plan.truncateGet)) {
      this.counts.truncated++;
      return body.slice(0, this.rng.int(body.length)); // a fresh buffer, as the contract wants
    }
    return body;
  }

  async head(key: string): Promise<ObjectInfo | null> {
    await this.enter('head', key);
    return this.inner.head(key);
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    await this.enter('list', prefix);
    if (!this.plan.shuffleList || !this.applies('list', prefix)) {
      yield* this.inner.list(prefix);
      return;
    }
    const all: ObjectInfo[] = [];
    for await (const o of this.inner.list(prefix)) all.push(o);
    for (let i = all.length - 1; i > 0; i--) {
      const j = this.rng.int(i + 1);
      [all[i], all[j]] = [all[j]!, all[i]!];
    }
    if (all.length > 1) this.counts.shuffled++;
    yield* all;
  }

  async delete(key: string): Promise<void> {
    await this.enter('delete', key);
    return this.inner.delete(key);
  }

  cleanupIncomplete(olderThanMs: number): Promise<number> {
    return this.inner.cleanupIncomplete ? this.inner.cleanupIncomplete(olderThanMs) : Promise.resolve(0);
  }

  close(): void | Promise<void> {
    return this.inner.close?.();
  }
}
