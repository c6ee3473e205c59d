import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { describe, it } from 'node:test';
import { MemoryObjectStore } from '../storage/memory-store.ts';
import { isStale, listLocks, LOCK_HOST, PID_SPACE, RepositoryLock, STALE_AFTER_MS, type LockRecord } from './locks.ts';import { skipOutsideCi } from '../../test/helpers/skip.ts';


/** The pid of a process that has certainly exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

describe('repository locks', () => {
  const now = Date.now();
  const lock = (over: Partial<LockRecord>): LockRecord => ({ id: 'x', kind: 'backup', host: LOCK_HOST, pid: process.pid, pidSpace: PID_SPACE, startedAtMs: now, refreshedAtMs: now, ...over });

  it('a fresh lock of a dead process of this system is stale at once; of a live one, not', { skip: skipOutsideCi(PID_SPACE ? false : 'no /proc here') }, () => {
    assert.equal(isStale(lock({ pid: deadPid() }), now), true);
    assert.equal(isStale(lock({}), now), false);
  });

  it('a pid from another PID namespace or boot, under the same host name, proves nothing: only the refresh time can make it stale', () => {
    const other = lock({ pid: deadPid(), pidSpace: 'another-boot:pid:[4026531836]' });
    assert.equal(isStale(other, now), false, 'a container with the same host name is not this system');
    const { pidSpace: _, ...before } = lock({ pid: deadPid() });
    assert.equal(isStale(before, now), false, 'a lock from before pidSpace was recorded');
    assert.equal(isStale(other, now + STALE_AFTER_MS + 1), true);
  });

  it('acquired locks record their PID space and are listed live until released', async () => {
    const store = new MemoryObjectStore();
    const l = await RepositoryLock.acquire(store, 'backup', { backupId: 'b1' });
    try {
      assert.equal(l.record.pidSpace, PID_SPACE);
      // An older build compares the host name alone with its own: the tag keeps it from matching.
      if (PID_SPACE) assert.notEqual(l.record.host, hostname());
      assert.ok(l.record.host.startsWith(hostname()));
      const { live, stale } = await listLocks(store);
      assert.deepEqual(live.map((x) => x.backupId), ['b1']);
      assert.equal(stale.length, 0);
    } finally {
      await l.release();
    }
    assert.deepEqual((await listLocks(store)).live, []);
  });
});
