/**
 * Logs of `haven serve` when standard output is not a terminal (a journal, a collector): every line
 * is JSON, the start-up lines too; one line per request, when it is answered; a job's lines carry
 * the id of the request that created it (the x-openstack-request-id its client saw), and a finished
 * job logs its bytes and duration.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { ServeProcess } from '../faults/serve-process.ts';
import { MiB, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-logs-');
after(() => temp.cleanup());

describe('haven serve logs', () => {
  it('are JSON lines: start-up facts, one line per request, job lines with the request id, bytes and duration', async () => {
    const data = temp.make('data');
    const roots = temp.make('volumes');
    const svc = await ServeProcess.start({ HAVEN_DATA_DIR: data, HAVEN_VOLUME_ROOTS: roots });
    try {
      const up = await svc.waitLog((l) => /^Haven listening on /.test(l.msg ?? ''));
      assert.equal(up.url, svc.url);
      assert.equal(up.dataDir, data);
      assert.equal(typeof up.repository, 'string');
      assert.match(String(up.adminPassword), /HAVEN_ADMIN_PASSWORD/);

      const who = await svc.login();
      const image = path.join(roots, 'logs.img');
      await fs.writeFile(image, randomBytesSeeded(3 * MiB, 5));
      const volumeId = await svc.adopt(who, image, 'logs');
      const r = await fetch(`${svc.url}/v2/${who.projectId}/cloudbackups`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-auth-token': who.token },
        body: JSON.stringify({ backup: { volume_id: volumeId, name: 'logged' } }),
      });
      assert.equal(r.status, 200);
      const requestId = r.headers.get('x-openstack-request-id')!;
      assert.match(requestId, /^req-/);
      const jobId = ((await r.json()) as { job_id: string }).job_id;
      const job = await svc.waitJob(who, jobId);
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));

      const started = await svc.waitLog((l) => l.jobId === jobId && l.msg === 'job started');
      assert.equal(started.requestId, requestId);
      const done = await svc.waitLog((l) => l.jobId === jobId && l.msg === 'job succeeded');
      assert.equal(done.requestId, requestId);
      assert.equal(typeof done.durationMs, 'number');
      assert.ok((done.bytes as number) >= 3 * MiB, `bytes ${String(done.bytes)}`);
      // The job handler's own line (not the runner's) carries the job and the request too.
      const written = await svc.waitLog((l) => l.msg === 'backup written' && l.volumeId === volumeId);
      assert.equal(written.jobId, jobId);
      assert.equal(written.jobType, 'bksCreateBackup');
      assert.equal(written.requestId, requestId);
      assert.ok((written.newBytes as number) >= 3 * MiB, `newBytes ${String(written.newBytes)}`);

      // The request itself: one line, with its status, not an "incoming" and a "completed" line.
      const lines = svc.logs.filter((l) => l.reqId === requestId);
      assert.deepEqual(lines.map((l) => l.msg), ['request'], JSON.stringify(lines));
      assert.equal(lines[0]!.statusCode, 200);
      assert.equal(lines[0]!.method, 'POST');
      // Secrets stay out of the logs.
      assert.ok(!JSON.stringify(svc.logs).includes(who.token), 'a token in the logs');
    } finally {
      await svc.stop();
    }
  });
});
