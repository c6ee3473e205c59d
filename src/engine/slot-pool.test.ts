import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SlotPool } from './slot-pool.ts';

describe('SlotPool', () => {
  it('hands out each slot once and wakes a waiter when one comes back', async () => {
    const pool = new SlotPool(['a', 'b']);
    const got = [await pool.take(), await pool.take()];
    assert.deepEqual(got.sort(), ['a', 'b']);
    let third: string | null | undefined;
    const waiting = pool.take().then((s) => (third = s));
    await Promise.resolve();
    assert.equal(third, undefined, 'no slot is free yet');
    pool.give('a');
    await waiting;
    assert.equal(third, 'a');
  });

  it('after fail(), waiters and every later take() get null, even with slots given back', async () => {
    const pool = new SlotPool([1]);
    assert.equal(await pool.take(), 1);
    const waiting = pool.take();
    pool.fail();
    assert.equal(await waiting, null);
    pool.give(1);
    assert.equal(await pool.take(), null);
  });

  it('sizes itself by worker threads, capped', () => {
    assert.equal(SlotPool.count(1), 4);
    assert.equal(SlotPool.count(2), 6);
    assert.equal(SlotPool.count(64), 16);
  });
});
