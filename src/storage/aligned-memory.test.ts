import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { AlignedMemoryPool } from './aligned-memory.ts';

const MiB = 1024 * 1024;

describe('AlignedMemoryPool', () => {
  it('hands out zeroed memory of the length asked, from the start of a memory of its own', () => {
    const pool = new AlignedMemoryPool();
    const a = pool.acquire(3 * MiB + 5)!;
    assert.ok(a.memory instanceof ArrayBuffer, 'pack buffers: unshared');
    assert.equal(a.bytes.buffer, a.memory);
    assert.equal(a.bytes.byteOffset, 0);
    assert.equal(a.bytes.length, 3 * MiB + 5);
    assert.equal(a.memory.byteLength, 4 * MiB, 'rounded up to its size class');
    assert.ok(a.bytes.every((b) => b === 0));
    const s = pool.acquireShared(MiB)!;
    assert.ok(s.memory instanceof SharedArrayBuffer, 'restore slots: shared');
    assert.ok(pool.owns(a.memory) && pool.owns(s.memory));
    assert.deepEqual(pool.stats(), { live: 2, free: 0, freeBytes: 0, dropped: 0 });
  });

  it('reuses a released memory of the same kind and size class, zeroed again, and no other', () => {
    const pool = new AlignedMemoryPool();
    const a = pool.acquireShared(2 * MiB)!;
    a.bytes.fill(0xab);
    pool.release(a.memory);
    assert.equal(pool.owns(a.memory), false);
    assert.deepEqual(pool.stats(), { live: 0, free: 1, freeBytes: 2 * MiB, dropped: 0 });
    assert.notEqual(pool.acquireShared(5 * MiB)!.memory, a.memory, 'another size class gets its own memory');
    assert.notEqual(pool.acquire(2 * MiB)!.memory, a.memory, 'so does the other kind');
    const again = pool.acquireShared(2 * MiB - 100)!;
    assert.equal(again.memory, a.memory, 'the released memory is reused');
    assert.equal(again.bytes.length, 2 * MiB - 100);
    assert.ok(new Uint8Array(again.memory).every((b) => b === 0), 'the last owner’s bytes are gone');
    assert.deepEqual(pool.stats(), { live: 3, free: 0, freeBytes: 0, dropped: 0 });
  });

  it('keeps at most maxFreeBytes for reuse and drops the rest', () => {
    const pool = new AlignedMemoryPool({ maxFreeBytes: 3 * MiB });
    const bufs = [pool.acquire(MiB)!, pool.acquire(MiB)!, pool.acquire(MiB)!, pool.acquire(MiB)!];
    for (const b of bufs) pool.release(b.memory);
    const s = pool.stats();
    assert.equal(s.live, 0);
    assert.equal(s.free, 3);
    assert.equal(s.freeBytes, 3 * MiB);
    assert.ok(s.dropped <= 1, 'the fourth was dropped (and counts until collected)');
  });

  it('refuses (null) beyond maxMemories, and gives again once one is released', () => {
    const pool = new AlignedMemoryPool({ maxMemories: 2 });
    const a = pool.acquire(MiB)!;
    const b = pool.acquire(MiB)!;
    assert.equal(pool.acquire(MiB), null);
    pool.release(a.memory);
    const c = pool.acquire(MiB);
    assert.equal(c?.memory, a.memory);
    pool.release(b.memory);
    pool.release(c!.memory);
  });

  it('refuses a second release and a memory it did not hand out', () => {
    const pool = new AlignedMemoryPool();
    const a = pool.acquire(MiB)!;
    pool.release(a.memory);
    assert.throws(() => pool.release(a.memory), /released twice, or not from this pool/);
    assert.throws(() => pool.release(new SharedArrayBuffer(MiB)), /released twice, or not from this pool/);
    assert.throws(() => pool.acquire(0), RangeError);
  });

  it('stays bounded over a thousand backups and restores (a long-running server)', () => {
    const pool = new AlignedMemoryPool({ maxMemories: 8 });
    const seen = new Set<ArrayBufferLike>();
    for (let i = 0; i < 1000; i++) {
      // A backup's two pack buffers and a restore's three slots, in turn (small, to keep the test quick).
      const held = [pool.acquire(2 * MiB), pool.acquire(2 * MiB), pool.acquireShared(MiB), pool.acquireShared(MiB), pool.acquireShared(MiB)];
      for (const h of held) {
        assert.ok(h, `acquire in round ${i} refused`);
        seen.add(h.memory);
      }
      for (const h of held) pool.release(h!.memory);
    }
    assert.equal(seen.size, 5, 'the same five memories served every round');
    assert.deepEqual(pool.stats(), { live: 0, free: 5, freeBytes: 7 * MiB, dropped: 0 });
  });

  it('gives shared memory that a worker thread writes into', async () => {
    const pool = new AlignedMemoryPool();
    const a = pool.acquireShared(MiB)!;
    const w = new Worker('const { workerData, parentPort } = require("node:worker_threads"); new Uint8Array(workerData).fill(7, 4096, 8192); parentPort.postMessage(0);', {
      eval: true,
      workerData: a.memory,
    });
    await new Promise((resolve, reject) => w.once('message', resolve).once('error', reject));
    await w.terminate();
    assert.ok(a.bytes.subarray(4096, 8192).every((b) => b === 7));
    assert.ok(a.bytes.subarray(0, 4096).every((b) => b === 0));
    pool.release(a.memory);
  });
});
