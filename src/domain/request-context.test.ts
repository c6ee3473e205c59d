import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { currentRequestId, detached, logContext, runInJob, runInRequest } from './request-context.ts';

describe('request and job context', () => {
  it('gives a job\'s work, and what it awaits, the job\'s and its request\'s ids', async () => {
    const seen = await runInJob({ id: 'j1', type: 'bksCreateBackup', requestId: 'req-1' }, async () => {
      await new Promise((r) => setTimeout(r, 1));
      return logContext();
    });
    assert.deepEqual(seen, { requestId: 'req-1', jobId: 'j1', jobType: 'bksCreateBackup' });
    assert.deepEqual(runInJob({ id: 'j2', type: 'csbsProtect', requestId: null }, logContext), { jobId: 'j2', jobType: 'csbsProtect' });
    assert.equal(runInRequest('req-2', currentRequestId), 'req-2');
    assert.deepEqual(logContext(), {}, 'outside both: nothing');
  });

  it('detached work (a listener, a GC, the claim loop) and its timers carry none of the starter\'s ids', async () => {
    const later = await runInJob({ id: 'j3', type: 'bksDeleteBackup', requestId: 'req-3' }, () =>
      detached(() => new Promise<ReturnType<typeof logContext>>((resolve) => setTimeout(() => resolve(logContext()), 1))),
    );
    assert.deepEqual(later, {});
    const inside = await runInRequest('req-4', () => new Promise<string | null>((resolve) => setTimeout(() => resolve(currentRequestId()), 1)));
    assert.equal(inside, 'req-4', 'without detached(), a timer keeps the request');
  });
});
