/**
 * Live restore over HTTP (Haven extension): POST /v2/{pid}/cloudbackups/{id}/restore with
 * "live": true serves the target volume over NBD at once; reads of ranges not yet copied come from
 * the backup, writes are kept, and the background copy (the job) never overwrites them. When the
 * job ends, the volume's file is the backup plus the user's writes, byte for byte.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';
import { assertSameBytes, backUpWithRunnerHeld, runTool } from '../helpers/api.ts';

const run = promisify(execFile);
type Who = { token: string; projectId: string };
type LiveExport = { uri: string; export_name: string; volume_id: string; writable: boolean; live: { settled_bytes: number; written_bytes: number | null; total_bytes: number; finished: boolean } };

describe('live restore: the volume is usable at once, the copy fills in behind it', () => {
  const temp = new TempDirs('haven-api-live-');
  let svc: TestService;
  let who: Who;
  let backupId: string;
  let atBackup: string;

  const call = (method: 'GET' | 'POST' | 'DELETE', p: string, payload?: unknown, as: Who = who) =>
    svc.req({ method, url: `/v2/${as.projectId}${p}`, token: as.token, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) });

  before(async () => {
    // The job runner is held, so the user's first reads and writes surely come before the copy.
    svc = await startService(temp, {}, { runJobs: false });
    who = await svc.login('admin', 'admin-test-password', 'admin');
    ({ backupId, atBackup } = await backUpWithRunnerHeld(svc, who, 'live-b', temp.make('copy'), async (file) => {
      for (let i = 0; i < 8; i++) await overwrite(file, i * 128 * MiB + 12345, randomBytesSeeded(3 * MiB, 10 + i));
    }));
  });
  after(async () => {
    await svc?.close();
    temp.cleanup();
  });

  it('reads come from the backup before the copy, writes stay through and after it; the result is the backup plus the writes', async () => {
    const target = (await svc.createVolume(who, 'live-target', 1)).id;
    const targetFile = await svc.volumePath(target);
    await overwrite(targetFile, 0, randomBytesSeeded(4 * MiB, 99)); // old contents: must all go
    const r = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: target, live: true } });
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as { job_id: string; export: LiveExport };
    assert.match(body.job_id, /^[0-9a-f]{32}$/);
    const e = body.export;
    assert.equal(e.volume_id, target);
    assert.equal(e.writable, true);
    assert.match(e.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/[A-Za-z0-9_-]{43}$/);
    // Nothing copied yet (the runner is held): the volume reads as the backup all the same.
    assert.ok((await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', atBackup, e.uri])).ok, 'served volume = backup before the copy');
    // Writes before the copy: inside data, across a chunk boundary, in a hole, unaligned.
    const writes: [number, number, number][] = [[12345 + 1000, 5000, 0xab], [128 * MiB - 700, 1400, 0xcd], [700 * MiB + 3, 512, 0xef]];
    const expected = path.join(temp.make('exp'), 'expected.raw');
    await run('cp', ['--sparse=always', atBackup, expected]);
    for (const [off, len, pat] of writes) {
      const w = await runTool('qemu-io', ['-f', 'raw', '-c', `write -P ${pat} ${off} ${len}`, '-c', 'flush', e.uri]);
      assert.ok(w.ok && !/failed/.test(w.out), w.out + w.err);
      await overwrite(expected, off, Buffer.alloc(len, pat));
    }
    assert.ok((await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expected, e.uri])).ok, 'served volume = backup + writes');
    const status = await call('GET', `/cloudbackups/${backupId}/export`);
    const listed = (status.json() as { exports: LiveExport[] }).exports.find((x) => x.volume_id === target);
    assert.ok(listed, status.body);
    assert.equal(listed.live.finished, false, 'nothing copied yet: the runner is held');
    assert.equal(listed.live.written_bytes, null, 'known once the copy has ended');
    // A second restore onto the served volume is refused, and changes nothing.
    const again = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: target } });
    assert.equal(again.statusCode, 400, again.body);
    // Now the copy runs, with writes going on meanwhile.
    await svc.app.runner.start();
    const during: Promise<unknown>[] = [];
    for (let i = 0; i < 4; i++) {
      const off = (900 + i * 20) * MiB + 4096 * i;
      during.push(runTool('qemu-io', ['-f', 'raw', '-c', `write -P ${0x11 + i} ${off} 65536`, e.uri]).then((w) => assert.ok(w.ok && !/failed/.test(w.out), w.out + w.err)));
      await overwrite(expected, off, Buffer.alloc(65536, 0x11 + i));
    }
    await Promise.all(during);
    const job = await svc.waitJob(who.token, who.projectId, body.job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    // The writes before the copy, and those of the writes during it that came before its end.
    const written = Number((job.entities as { written_bytes?: string }).written_bytes);
    assert.ok(written >= 5000 + 1400 + 512 && written <= 5000 + 1400 + 512 + 4 * 65536 && (written - 6912) % 65536 === 0, `written_bytes ${written}`);
    await assertSameBytes(targetFile, expected, 'the volume after the live restore and the backup plus the writes');
    const after = (await call('GET', `/cloudbackups/${backupId}/export`)).json() as { exports: LiveExport[] };
    const done = after.exports.find((x) => x.volume_id === target);
    assert.equal(done?.live.finished, true);
    assert.equal(done?.live.written_bytes, written);
    // Still served after the job (a VM may be running on it), now straight from the volume.
    assert.ok((await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expected, e.uri])).ok);
    const v = await svc.req({ method: 'GET', url: `/v3/${who.projectId}/volumes/${target}`, token: who.token });
    assert.equal((v.json() as { volume: { status: string } }).volume.status, 'available');
    // Ending the export ends the serving; the volume is an ordinary one.
    assert.equal((await call('DELETE', `/cloudbackups/${backupId}/export`)).statusCode, 204);
    assert.equal((await runTool('nbdinfo', [e.uri])).ok, false);
    await assertSameBytes(targetFile, expected, 'the volume after the export ended');
  });

  it('refuses a live restore onto a qcow2 volume or another project\'s, changing nothing', async () => {
    const q = await svc.req({ method: 'POST', url: `/v3/${who.projectId}/volumes`, token: who.token, payload: { volume: { size: 1, name: 'live-q', volume_type: 'qcow2' } } });
    assert.equal(q.statusCode, 202, q.body);
    const qid = (q.json() as { volume: { id: string } }).volume.id;
    const r = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: qid, live: true } });
    assert.equal(r.statusCode, 400, r.body);
    assert.match((r.json() as { error: { message: string } }).error.message, /raw volume/);
    const v = await svc.req({ method: 'GET', url: `/v3/${who.projectId}/volumes/${qid}`, token: who.token });
    assert.equal((v.json() as { volume: { status: string } }).volume.status, 'available');
    const other = await svc.tenant('live-other');
    const mine = (await svc.createVolume(other, 'other-target', 1)).id;
    const x = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: mine, live: true } }, other);
    assert.equal(x.statusCode, 404, x.body);
    const bad = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: mine, live: 'yes' } });
    assert.equal(bad.statusCode, 400, bad.body);
    assert.deepEqual(await fs.readdir(path.join(svc.dataDir, 'overlays')).catch(() => []), []);
  });
});
