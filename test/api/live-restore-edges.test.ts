/**
 * Live restore edges over HTTP (Haven extension, POST .../cloudbackups/{id}/restore with "live":
 * true): refused without an NBD listener before anything changes; a client dropping its
 * connection in the middle of a read does not fail the copy; the export cannot be ended while the
 * copy runs, nor the volume deleted while it is served.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { startService, type TestService } from '../helpers/service.ts';
import { assertCinderError, assertSameBytes, assertVbsError, backUpWithRunnerHeld } from '../helpers/api.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { MiB, overwrite, randomBytesSeeded, sleep, TempDirs } from '../helpers/volumes.ts';

const run = promisify(execFile);
type Who = { token: string; projectId: string };
type LiveExport = { uri: string; export_name: string; volume_id: string; writable: boolean };

const noNbdcopy = skipOutsideCi(spawnSync('nbdcopy', ['--version'], { stdio: 'ignore' }).status === 0 ? false : 'nbdcopy (Debian libnbd-bin) is not installed');

const haveQemuImg = spawnSync('qemu-img', ['--version'], { stdio: 'ignore' }).status === 0;

/**
 * Two volume files hold the same bytes: qemu-img compare (which skips holes, so 1 GiB volumes
 * compare in milliseconds), else a byte-by-byte comparison.
 */
async function assertSameVolume(a: string, b: string, what: string): Promise<void> {
  if (!haveQemuImg) return assertSameBytes(a, b, what);
  const same = await run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', a, b]).then(() => true, () => false);
  assert.ok(same, `${what}: ${a} and ${b} differ`);
}

/** The port and export name of an nbd:// URI. */
function parseUri(uri: string): { port: number; name: string } {
  const m = /^nbd:\/\/127\.0\.0\.1:(\d+)\/(.+)$/.exec(uri);
  assert.ok(m, uri);
  return { port: Number(m[1]), name: m[2]! };
}

/**
 * A raw NBD client that asks for `reads` of `length` bytes from `from` on, all at once, and drops
 * the connection as soon as the first reply bytes arrive (the other reads still running).
 */
async function readAndDrop(uri: string, reads: number, length: number, from = 0): Promise<void> {
  const { port, name } = parseUri(uri);
  const sock = net.connect(port, '127.0.0.1');
  sock.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  let got = Buffer.alloc(0);
  const need = async (n: number): Promise<Buffer> => {
    while (got.length < n) {
      await new Promise<void>((resolve, reject) => {
        sock.once('data', (b: Buffer) => {
          got = Buffer.concat([got, b]);
          resolve();
        });
        sock.once('close', () => reject(new Error('closed')));
      });
    }
    const out = got.subarray(0, n);
    got = got.subarray(n);
    return out;
  };
  await need(18);
  sock.write(Buffer.from([0, 0, 0, 3]));
  const n = Buffer.from(name, 'utf8');
  const go = Buffer.alloc(16 + 4 + n.length + 2);
  go.writeBigUInt64BE(0x49484156454f5054n, 0);
  go.writeUInt32BE(7, 8);
  go.writeUInt32BE(4 + n.length + 2, 12);
  go.writeUInt32BE(n.length, 16);
  n.copy(go, 20);
  sock.write(go);
  for (;;) {
    const h = await need(20);
    await need(h.readUInt32BE(16));
    const type = h.readUInt32BE(12);
    assert.ok(type < 2 ** 31, `GO refused: ${type}`);
    if (type === 1) break;
  }
  const reqs: Buffer[] = [];
  for (let i = 0; i < reads; i++) {
    const r = Buffer.alloc(28);
    r.writeUInt32BE(0x25609513, 0);
    r.writeBigUInt64BE(BigInt(i + 1), 8);
    r.writeBigUInt64BE(BigInt(from + i * length), 16);
    r.writeUInt32BE(length, 24);
    reqs.push(r);
  }
  sock.write(Buffer.concat(reqs));
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([new Promise((r) => sock.once('data', r)), new Promise((r) => (timer = setTimeout(r, 2000)))]);
  clearTimeout(timer);
  sock.destroy();
}

/**
 * A TCP proxy to 127.0.0.1:`port` that counts the bytes the server sends (all connections); a
 * client's close closes its server side too.
 */
async function countingProxy(port: number): Promise<{ port: number; readonly bytes: number; flowed(n: number, ms: number): Promise<boolean>; close(): Promise<void> }> {
  let bytes = 0;
  const socks = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    socks.add(client);
    socks.add(upstream);
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
    upstream.on('data', (b: Buffer) => void (bytes += b.length));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  assert.ok(addr && typeof addr === 'object');
  return {
    port: addr.port,
    get bytes() {
      return bytes;
    },
    async flowed(n: number, ms: number): Promise<boolean> {
      const end = Date.now() + ms;
      while (bytes < n && Date.now() < end) await sleep(2);
      return bytes >= n;
    },
    async close() {
      for (const s of socks) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('live restore with exports switched off', () => {
  const temp = new TempDirs('haven-api-live-off-');
  let svc: TestService;
  after(async () => {
    await svc?.close();
    temp.cleanup();
  });

  it('answers 503 before anything changes: no job, the target available with its bytes, the backup available', async () => {
    svc = await startService(temp, { nbdListen: 'off' });
    const who = await svc.login('admin', 'admin-test-password', 'admin');
    const call = (method: 'GET' | 'POST', p: string, payload?: unknown) => svc.req({ method, url: `/v2/${who.projectId}${p}`, token: who.token, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) });
    const src = (await svc.createVolume(who, 'off-src', 1)).id;
    await overwrite(await svc.volumePath(src), 0, randomBytesSeeded(MiB, 1));
    const b = await call('POST', '/cloudbackups', { backup: { volume_id: src, name: 'off-b' } });
    assert.equal(b.statusCode, 200, b.body);
    const job = await svc.waitJob(who.token, who.projectId, (b.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    const backupId = String((job.entities as { backup_id: string }).backup_id);

    const target = (await svc.createVolume(who, 'off-target', 1)).id;
    const targetFile = await svc.volumePath(target);
    await overwrite(targetFile, 4 * MiB + 7, randomBytesSeeded(3 * MiB, 2));
    const before = path.join(temp.make('before'), 'target.raw');
    await run('cp', ['--sparse=always', targetFile, before]);
    const jobsBefore = await svc.app.catalog.jobs.countByStatus();

    const r = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: target, live: true } });
    const message = assertVbsError(r, 503, 'VolumeBackup.0900');
    assert.match(message, /switched off/, message);

    await sleep(300); // a job, had one been queued, would have started by now
    assert.deepEqual(await svc.app.catalog.jobs.countByStatus(), jobsBefore, 'no job was created');
    const v = await svc.req({ method: 'GET', url: `/v3/${who.projectId}/volumes/${target}`, token: who.token });
    assert.equal((v.json() as { volume: { status: string } }).volume.status, 'available');
    const bk = await svc.req({ method: 'GET', url: `/v3/${who.projectId}/backups/${backupId}`, token: who.token });
    assert.equal((bk.json() as { backup: { status: string } }).backup.status, 'available');
    await assertSameVolume(targetFile, before, 'the target after the refused live restore');
    // An ordinary restore still works (nothing was left locked).
    const ok = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: target } });
    assert.equal(ok.statusCode, 200, ok.body);
    const done = await svc.waitJob(who.token, who.projectId, (ok.json() as { job_id: string }).job_id);
    assert.equal(done.status, 'SUCCESS', JSON.stringify(done));
  });
});

describe('live restore edges', () => {
  const temp = new TempDirs('haven-api-live-edges-');
  let svc: TestService;
  let who: Who;
  let backupId: string;
  let atBackup: string;

  const call = (method: 'GET' | 'POST' | 'DELETE', p: string, payload?: unknown) =>
    svc.req({ method, url: `/v2/${who.projectId}${p}`, token: who.token, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) });

  /** A live restore onto a new volume, the job runner held: the copy has not started. */
  const beginLive = async (name: string): Promise<{ jobId: string; e: LiveExport; file: string; volumeId: string }> => {
    const volumeId = (await svc.createVolume(who, name, 1)).id;
    const file = await svc.volumePath(volumeId);
    await overwrite(file, 0, randomBytesSeeded(2 * MiB, 99)); // old contents: must all go
    const r = await call('POST', `/cloudbackups/${backupId}/restore`, { restore: { volume_id: volumeId, live: true } });
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as { job_id: string; export: LiveExport };
    return { jobId: body.job_id, e: body.export, file, volumeId };
  };

  before(async () => {
    svc = await startService(temp, {}, { runJobs: false });
    who = await svc.login('admin', 'admin-test-password', 'admin');
    // 96 MiB of data in three places: the copy takes a while; the rest holes.
    ({ backupId, atBackup } = await backUpWithRunnerHeld(svc, who, 'edge-b', temp.make('copy'), async (file) => {
      for (let i = 0; i < 3; i++) await overwrite(file, i * 300 * MiB + 4096 * i, randomBytesSeeded(32 * MiB, 20 + i));
    }));
  });
  after(async () => {
    await svc?.close();
    temp.cleanup();
  });

  it('clients dropping their connections with reads in flight just ahead of the copy do not fail the job', async () => {
    const { jobId, e, file } = await beginLive('edge-raw');
    // One client before the copy starts.
    await readAndDrop(e.uri, 24, 4 * MiB);
    await svc.app.runner.start();
    let finished = false;
    const job = svc.waitJob(who.token, who.projectId, jobId).finally(() => (finished = true));
    // While the copy runs: clients that read the next batches the copy is about to fetch (so that
    // it waits for their fetches) and leave as soon as data comes.
    let clients = 0;
    while (!finished && clients < 400) {
      const listed = (await call('GET', `/cloudbackups/${backupId}/export`)).json<{ exports: (LiveExport & { live: { settled_bytes: number } })[] }>();
      const settled = listed.exports.find((x) => x.export_name === e.export_name)?.live.settled_bytes ?? 0;
      const from = Math.min(1024 * MiB - 16 * MiB, (Math.floor(settled / (4 * MiB)) + 1) * 4 * MiB);
      await Promise.all([readAndDrop(e.uri, 4, 4 * MiB, from), readAndDrop(e.uri, 4, MiB, from + 4 * MiB)]);
      clients += 2;
    }
    const done = await job;
    await svc.app.runner.stop();
    assert.equal(done.status, 'SUCCESS', `after ${clients} clients dropped: ${JSON.stringify(done)}`);
    await assertSameVolume(file, atBackup, 'the volume after the live restore');
    assert.equal((await call('DELETE', `/cloudbackups/${backupId}/export`)).statusCode, 204);
  });

  it('nbdcopy killed in the middle of reading the live volume does not fail the job', { skip: noNbdcopy }, async () => {
    const { jobId, e, file } = await beginLive('edge-nbdcopy');
    const { port, name } = parseUri(e.uri);
    // nbdcopy goes through a proxy that counts the bytes the server sends: it is killed while data flows.
    const proxy = await countingProxy(port);
    try {
      const child = spawn('nbdcopy', [`nbd://127.0.0.1:${proxy.port}/${name}`, 'null:'], { stdio: 'ignore' });
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      assert.ok(await proxy.flowed(256 * 1024, 10_000), 'nbdcopy reads');
      await svc.app.runner.start(); // the copy runs alongside
      await proxy.flowed(proxy.bytes + 2 * MiB, 2000);
      child.kill('SIGKILL');
      await exited;
      assert.ok(proxy.bytes < 96 * MiB, `nbdcopy had read all the data (${proxy.bytes} bytes) before it was killed`);
      const job = await svc.waitJob(who.token, who.projectId, jobId);
      await svc.app.runner.stop();
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
      await assertSameVolume(file, atBackup, 'the volume after the live restore');
      // Served still, to the next client.
      await readAndDrop(e.uri, 1, 4096);
    } finally {
      await proxy.close();
    }
    assert.equal((await call('DELETE', `/cloudbackups/${backupId}/export`)).statusCode, 204);
  });

  it('the export cannot be ended while the copy runs, nor the volume deleted while it is served; both can afterwards', async () => {
    const { jobId, e, file, volumeId } = await beginLive('edge-delete');
    // The copy has not finished (the runner is held): ending the export is refused.
    const refused = await call('DELETE', `/cloudbackups/${backupId}/export`);
    const message = assertVbsError(refused, 400, 'VolumeBackup.0089');
    assert.match(message, /still copying/, message);
    assert.ok((await call('GET', `/cloudbackups/${backupId}/export`)).json<{ exports: LiveExport[] }>().exports.some((x) => x.export_name === e.export_name), 'the export is still there');
    // The volume is served (and restoring): its delete is refused.
    const delVol = () => svc.req({ method: 'DELETE', url: `/v3/${who.projectId}/volumes/${volumeId}`, token: who.token });
    assertCinderError(await delVol(), 400);
    // Still served over NBD: a raw read gets data.
    await readAndDrop(e.uri, 1, 4096);
    await svc.app.runner.start();
    const job = await svc.waitJob(who.token, who.projectId, jobId);
    await svc.app.runner.stop();
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    await assertSameVolume(file, atBackup, 'the volume after the live restore');
    // The copy has finished, the volume is available, but still served: its delete is refused.
    const v = await svc.req({ method: 'GET', url: `/v3/${who.projectId}/volumes/${volumeId}`, token: who.token });
    assert.equal((v.json() as { volume: { status: string } }).volume.status, 'available');
    const servedMessage = assertCinderError(await delVol(), 400);
    assert.match(servedMessage, /served by a live restore/, servedMessage);
    // Now the export ends, and then the volume can go.
    assert.equal((await call('DELETE', `/cloudbackups/${backupId}/export`)).statusCode, 204);
    assert.deepEqual((await call('GET', `/cloudbackups/${backupId}/export`)).json<{ exports: LiveExport[] }>().exports, []);
    await assert.rejects(readAndDrop(e.uri, 1, 4096), /GO refused|closed/);
    assert.equal((await delVol()).statusCode, 202);
  });
});
