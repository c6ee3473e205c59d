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

    it('reads a range into a lent buffer, or into a fresh one, with the same bytes either way', async () => {
      const s = await makeStore();
      const body = new Uint8Array(3 * 1024 * 1024 + 5).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
      await s.put('lent', body);
      const into = new Uint8Array(new SharedArrayBuffer(4 * 1024 * 1024)).fill(0xee);
      const reported: number[] = [];
      const seen: Buffer[] = []; // what the lent buffer held when each progress came
      const got = await s.get('lent', { offset: 100, length: body.length - 100, into, onProgress: (n) => (reported.push(n), seen.push(Buffer.from(into.subarray(0, n)))) });
      assert.deepEqual(Buffer.from(got), Buffer.from(body.subarray(100)));
      if (got.buffer === into.buffer) {
        assert.equal(got.byteOffset, into.byteOffset, 'a view of the lent buffer starts at its start');
        assert.equal(into[body.length - 100], 0xee, 'nothing written past the bytes asked for');
      } else {
        assert.ok(got.byteOffset === 0 && got.byteLength === got.buffer.byteLength, 'otherwise a fresh buffer of its own');
      }
      // Progress, where reported, grows, and the bytes it reports are in the lent buffer when it comes.
      for (let i = 0; i < reported.length; i++) {
        assert.ok(reported[i]! <= got.length && (i === 0 || reported[i]! > reported[i - 1]!), `progress ${reported.join(', ')}`);
        assert.ok(seen[i]!.equals(body.subarray(100, 100 + reported[i]!)), `the first ${reported[i]} bytes were in place when reported`);
      }
      // A lent buffer too small for the range is not used.
      const small = new Uint8Array(10);
      const whole = await s.get('lent', { offset: 0, length: 1000, into: small });
      assert.deepEqual(Buffer.from(whole), Buffer.from(body.subarray(0, 1000)));
      assert.notEqual(whole.buffer, small.buffer);
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
