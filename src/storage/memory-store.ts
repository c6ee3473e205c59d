/** An ObjectStore in memory, for tests and dry runs. */
import { assertValidKey, bodyParts, type Body, ObjectNotFoundError, type GetOptions, type ObjectInfo, type ObjectStore } from './object-store.ts';

export class MemoryObjectStore implements ObjectStore {
  readonly objects = new Map<string, { body: Uint8Array; modifiedAtMs: number }>();

  async put(key: string, body: Body): Promise<void> {
    assertValidKey(key);
    this.objects.set(key, { body: new Uint8Array(Buffer.concat(bodyParts(body))), modifiedAtMs: Date.now() });
  }

  async putIfAbsent(key: string, body: Body): Promise<boolean> {
    assertValidKey(key);
    if (this.objects.has(key)) return false;
    await this.put(key, body);
    return true;
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const o = this.objects.get(key);
    if (!o) throw new ObjectNotFoundError(key);
    const start = options?.offset ?? 0;
    const end = options?.length === undefined ? o.body.length : Math.min(o.body.length, start + options.length);
    return new Uint8Array(o.body.subarray(start, end)); // a copy the caller owns (see ObjectStore.get)
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const o = this.objects.get(key);
    return o ? { key, sizeBytes: o.body.length, modifiedAtMs: o.modifiedAtMs } : null;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for (const [key, o] of [...this.objects]) {
      if (key.startsWith(prefix)) yield { key, sizeBytes: o.body.length, modifiedAtMs: o.modifiedAtMs };
    }
  }

  async delete(key: string): Promise<void> {
    this.objects.delete(key);
  }
}
