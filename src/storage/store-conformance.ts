/**
 * The conformance suite every ObjectStore must pass (restic's internal/backend/test idea).
 * A new backend is done when describeObjectStore('name', factory) passes against it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { collectKeys, ObjectNotFoundError, type ObjectStore } from './object-store.ts';

export function describeObjectStore(name: string, makeStore: () => Promise<ObjectStore> | ObjectStore): void {
  describe(`ObjectStore conformance: ${name}`, () => {
    it('puts and gets bytes unchanged', async () => {
      const s = await makeStore();
      const body = new Uint8Array(70_000).map((_, i) => (i * 31) & 0xff);
      await s.put('a/b/c', body);
      assert.deepEqual(new Uint8Array(await s.get('a/b/c')), body);
    });

    it('stores a body given in parts back to back', async () => {
      const s = await makeStore();
      const parts = Array.from({ length: 1500 }, (_, i) => new Uint8Array(i % 7).fill(i & 0xff));
      await s.put('parts', parts);
      assert.deepEqual(new Uint8Array(await s.get('parts')), new Uint8Array(Buffer.concat(parts)));
    });

    it('putIfAbsent creates once: exactly one of concurrent callers wins', async () => {
      const s = await makeStore();
      const results = await Promise.all([1, 2, 3, 4].map((i) => s.putIfAbsent('once', new Uint8Array([i]))));
      assert.equal(results.filter(Boolean).length, 1);
      const winner = results.indexOf(true) + 1;
      assert.deepEqual([...(await s.get('once'))], [winner]);
      assert.equal(await s.putIfAbsent('once', new Uint8Array([9])), false);
      assert.deepEqual([...(await s.get('once'))], [winner]);
    });

    it('reads ranges', async () => {
      const s = await makeStore();
      await s.put('r', new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]));
      assert.deepEqual([...(await s.get('r', { offset: 2, length: 3 }))], [2, 3, 4]);
      assert.deepEqual([...(await s.get('r', { offset: 6, length: 10 }))], [6, 7]);
      assert.deepEqual([...(await s.get('r', { offset: 5 }))], [5, 6, 7]);
      // At or past the end: nothing (S3 answers such a range 416), but the object is there.
      assert.equal((await s.get('r', { offset: 8, length: 4 })).length, 0);
      assert.equal((await s.get('r', { offset: 20 })).length, 0);
      await assert.rejects(s.get('nope/r', { offset: 8, length: 4 }), ObjectNotFoundError);
    });

    it('throws ObjectNotFoundError for an absent key', async () => {
      const s = await makeStore();
      await assert.rejects(s.get('nope/x'), ObjectNotFoundError);
      assert.equal(await s.head('nope/x'), null);
    });

    it('overwrites and reports size in head', async () => {
      const s = await makeStore();
      await s.put('k', new Uint8Array(10));
      await s.put('k', new Uint8Array(3));
      assert.equal((await s.head('k'))?.sizeBytes, 3);
      assert.equal((await s.get('k')).length, 3);
    });

    it('lists by prefix, recursively, and only what matches', async () => {
      const s = await makeStore();
      for (const k of ['p/1', 'p/q/2', 'px/3', 'other/4']) await s.put(k, new Uint8Array([1]));
      const keys = (await collectKeys(s, 'p/')).map((i) => i.key).sort();
      assert.deepEqual(keys, ['p/1', 'p/q/2']);
      const all = (await collectKeys(s, '')).map((i) => i.key).sort();
      assert.deepEqual(all, ['other/4', 'p/1', 'p/q/2', 'px/3']);
      assert.deepEqual((await collectKeys(s, 'zzz/')).length, 0);
    });

    it('deletes idempotently', async () => {
      const s = await makeStore();
      await s.put('d/x', new Uint8Array([1]));
      await s.delete('d/x');
      await s.delete('d/x');
      assert.equal(await s.head('d/x'), null);
      assert.deepEqual(await collectKeys(s, 'd/'), []);
    });

    it('rejects keys that could escape the store', async () => {
      const s = await makeStore();
      for (const bad of ['../x', 'a/../../b', '/abs', 'a//b', '']) {
        await assert.rejects(s.put(bad, new Uint8Array(1)));
      }
    });

    it('stores an empty object', async () => {
      const s = await makeStore();
      await s.put('empty', new Uint8Array(0));
      assert.equal((await s.get('empty')).length, 0);
      assert.equal((await s.head('empty'))?.sizeBytes, 0);
    });
  });
}
