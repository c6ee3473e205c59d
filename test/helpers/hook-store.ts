/**
 * An ObjectStore wrapper for putting the operation under test into awkward situations:
 * - afterList: runs a hook right after a listing of a given prefix has been consumed, the way to put
 *   another operation exactly between two steps of the one under test;
 * - crashAfterMutations: lets that many puts/deletes through, then fails every later one, as if the
 *   process had died at that point (nothing it would have written afterwards reaches the store).
 */
import type { Body, GetOptions, ObjectInfo, ObjectStore } from '../../src/storage/object-store.ts';

export class HookStore implements ObjectStore {
  readonly inner: ObjectStore;
  private readonly hooks: { prefix: string; nth: number; fn: () => Promise<void> }[] = [];
  private readonly listings = new Map<string, number>();
  /** Mutations (put, delete) let through before the simulated crash; undefined: no crash. */
  crashAfterMutations: number | undefined = undefined;
  mutations = 0;
  crashed = false;

  constructor(inner: ObjectStore) {
    this.inner = inner;
  }

  private mutate(key: string): void {
    this.mutations++;
    if (this.crashAfterMutations !== undefined && this.mutations > this.crashAfterMutations) {
      this.crashed = true;
      throw new Error(`simulated crash before mutation ${this.mutations} (${key})`);
    }
  }

  async put(key: string, body: Body, signal?: AbortSignal): Promise<void> {
    this.mutate(key);
    return this.inner.put(key, body, signal);
  }

  async putIfAbsent(key: string, body: Body): Promise<boolean> {
    this.mutate(key);
    return this.inner.putIfAbsent(key, body);
  }

  get(key: string, options?: GetOptions): Promise<Uint8Array> {
    return this.inner.get(key, options);
  }

  head(key: string): Promise<ObjectInfo | null> {
    return this.inner.head(key);
  }

  async delete(key: string): Promise<void> {
    this.mutate(key);
    return this.inner.delete(key);
  }

  /** Runs `fn` once, after the last object of the `nth` listing (1-based) of exactly `prefix`. */
  afterList(prefix: string, fn: () => Promise<void>, nth = 1): void {
    this.hooks.push({ prefix, nth, fn });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for await (const o of this.inner.list(prefix)) yield o;
    const count = (this.listings.get(prefix) ?? 0) + 1;
    this.listings.set(prefix, count);
    const i = this.hooks.findIndex((h) => h.prefix === prefix && h.nth === count);
    if (i >= 0) {
      const [hook] = this.hooks.splice(i, 1);
      await hook!.fn();
    }
  }
}
