/**
 * Exports over HTTP (Haven extension): POST /v2/{pid}/cloudbackups/{id}/export serves a backup as
 * an NBD disk with a secret export name, read by the real clients (nbdinfo, nbdcopy, qemu-img,
 * qemu-io). Only the backup's project or one it is shared with may export it; a revoked share, a
 * DELETE of the export or its expiry end access; a writable export's writes stay in its
 * connection's overlay and the repository is unchanged; bad requests change nothing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';
import { assertSameBytes, runTool } from '../helpers/api.ts';
import { makeLoopbackCert } from '../helpers/tls.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';

const run = promisify(execFile);
type Who = { token: string; projectId: string };
type ExportJson = { id: string; backup_id: string; uri: string; export_name: string; writable: boolean; tls: boolean; created_at: string; expires_at: string };

function expectVbsError(r: LightMyRequestResponse, status: number): string {
  assert.equal(r.statusCode, status, r.body);
  const e = (r.json() as { error: { code: string; message: string } }).error;
  assert.match(e.code, /^VolumeBackup\.\d{4}$/, r.body);
  assert.ok(e.message.length > 0);
  assert.doesNotMatch(r.body, /\n\s+at /);
  return e.message;
}

describe('exports: a backup served as an NBD disk through the API', () => {
  const temp = new TempDirs('haven-api-exports-');
  let svc: TestService;
  let owner: Who;
  let other: Who;
  let friend: Who;
  let volumeId: string;
  let backupId: string;
  let atBackup: string; // a copy of the volume as backed up

  const call = (who: Who, method: 'GET' | 'POST' | 'DELETE', p: string, payload?: unknown) =>
    svc.req({ method, url: `/v2/${who.projectId}${p}`, token: who.token, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) });
  const exportOk = async (who: Who, body?: unknown): Promise<ExportJson> => {
    const r = await call(who, 'POST', `/cloudbackups/${backupId}/export`, body);
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { export: ExportJson }).export;
  };

  before(async () => {
    svc = await startService(temp, { nbdListen: '127.0.0.1:0' });
    owner = await svc.login('admin', 'admin-test-password', 'admin');
    other = await svc.tenant('exp-other');
    friend = await svc.tenant('exp-friend');
    volumeId = (await svc.createVolume(owner, 'exp-src', 1)).id;
    const file = await svc.volumePath(volumeId);
    // Data in a few places, the rest holes; one write straddles a 64 KiB chunk boundary.
    await overwrite(file, 0, randomBytesSeeded(3 * MiB, 1));
    await overwrite(file, 300 * MiB + 65536 - 1000, randomBytesSeeded(5000, 2));
    await overwrite(file, 1024 * MiB - 4096, randomBytesSeeded(4096, 3));
    atBackup = path.join(temp.make('copy'), 'at-backup.raw');
    await run('cp', ['--sparse=always', file, atBackup]);
    const r = await call(owner, 'POST', '/cloudbackups', { backup: { volume_id: volumeId, name: 'exp-b1' } });
    assert.equal(r.statusCode, 200, r.body);
    const job = await svc.waitJob(owner.token, owner.projectId, (r.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    backupId = String((job.entities as { backup_id: string }).backup_id);
    // The volume changes after the backup: an export serves the backup, not the volume.
    await overwrite(file, 0, randomBytesSeeded(MiB, 9));
  });
  after(async () => {
    await svc?.close();
    temp.cleanup();
  });

  it('serves the backup read-only: nbdcopy and qemu-img read the bytes backed up, the map shows its holes, writes are refused', async () => {
    const e = await exportOk(owner);
    assert.equal(e.backup_id, backupId);
    assert.equal(e.writable, false);
    assert.equal(e.tls, false);
    assert.match(e.export_name, /^[A-Za-z0-9_-]{43}$/);
    assert.match(e.uri, new RegExp(`^nbd://127\\.0\\.0\\.1:\\d+/${e.export_name}$`));
    assert.ok(Date.parse(e.expires_at) - Date.parse(e.created_at) === 3600_000, 'one hour by default');
    const info = JSON.parse((await runTool('nbdinfo', ['--json', e.uri])).out) as { exports: { 'export-size': number; is_read_only: boolean }[] };
    assert.equal(info.exports[0]!['export-size'], 1024 * MiB);
    assert.equal(info.exports[0]!.is_read_only, true);
    const out = path.join(temp.make('out'), 'copy.raw');
    const c = await runTool('nbdcopy', [e.uri, out]);
    assert.ok(c.ok, c.err);
    await assertSameBytes(out, atBackup, 'nbdcopy of the export and the volume at backup time');
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', atBackup, e.uri]);
    assert.ok(cmp.ok, cmp.out + cmp.err);
    // The map: data exactly at the chunks written (64 KiB granularity), holes elsewhere.
    const map = JSON.parse((await runTool('nbdinfo', ['--map', '--json', e.uri])).out) as { offset: number; length: number; type: number }[];
    const data = map.filter((m) => (m.type & 1) === 0).map((m) => [m.offset, m.length]);
    assert.deepEqual(data, [[0, 3 * MiB], [300 * MiB, 2 * 65536], [1024 * MiB - 65536, 65536]]);
    const w = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 4096', e.uri]);
    assert.ok(!w.ok || /failed|Operation not permitted|read-only/i.test(w.out + w.err), w.out + w.err);
    assert.ok((await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', atBackup, e.uri])).ok);
    // Listed to its project; the listing of exports over NBD is refused (names are secrets).
    const l = await call(owner, 'GET', `/cloudbackups/${backupId}/export`);
    assert.equal(l.statusCode, 200, l.body);
    assert.ok((l.json() as { exports: ExportJson[] }).exports.some((x) => x.id === e.id));
    const list = await runTool('nbdinfo', ['--list', e.uri.replace(/\/[^/]+$/, '/')]);
    assert.ok(!list.out.includes(e.export_name), list.out);
  });

  it('another project can neither export nor see the exports; a wrong export name opens nothing', async () => {
    const before = svc.app.exports.exportsOf(owner.projectId, backupId).length;
    expectVbsError(await call(other, 'POST', `/cloudbackups/${backupId}/export`), 404);
    expectVbsError(await call(other, 'GET', `/cloudbackups/${backupId}/export`), 404);
    expectVbsError(await call(other, 'DELETE', `/cloudbackups/${backupId}/export`), 404);
    assert.equal(svc.app.exports.exportsOf(owner.projectId, backupId).length, before, 'nothing created or ended');
    // Another project's token on the owner's path: refused before anything.
    const r = await svc.req({ method: 'POST', url: `/v2/${owner.projectId}/cloudbackups/${backupId}/export`, token: other.token });
    assert.ok(r.statusCode === 401 || r.statusCode === 403, r.body);
    const e = await exportOk(owner);
    const guessed = e.uri.replace(e.export_name, `${e.export_name.slice(0, -1)}${e.export_name.endsWith('A') ? 'B' : 'A'}`);
    assert.equal((await runTool('nbdinfo', [guessed])).ok, false);
    assert.equal((await runTool('nbdinfo', [e.uri.replace(e.export_name, backupId)])).ok, false, 'the backup id is not an export name');
  });

  it('a project the backup is shared with may export it; revoking the share ends new connections', async () => {
    const s = await call(owner, 'POST', '/os-vendor-backup-sharing', { shared: { backup_id: backupId, to_project_ids: [friend.projectId] } });
    assert.equal(s.statusCode, 200, s.body);
    const e = await exportOk(friend);
    assert.ok((await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', atBackup, e.uri])).ok);
    const d = await call(owner, 'DELETE', `/os-vendor-backup-sharing/${backupId}?is_backup_id=true`);
    assert.ok(d.statusCode < 300, d.body);
    assert.equal((await runTool('nbdinfo', [e.uri])).ok, false, 'the share is gone: so is the export');
  });

  it('DELETE ends the exports (open connections too); an expired export opens nothing', async () => {
    const e = await exportOk(owner, { export: { expires_in: 120 } });
    assert.equal(Date.parse(e.expires_at) - Date.parse(e.created_at), 120_000);
    assert.ok((await runTool('nbdinfo', [e.uri])).ok);
    // A reader in the middle of a long copy is cut off.
    const slow = runTool('nbdcopy', ['--requests=1', '--connections=1', '--request-size=65536', e.uri, 'null:']);
    const d = await call(owner, 'DELETE', `/cloudbackups/${backupId}/export`);
    assert.equal(d.statusCode, 204, d.body);
    assert.equal((await runTool('nbdinfo', [e.uri])).ok, false);
    await slow; // ended, one way or the other: it must not hang
    expectVbsError(await call(owner, 'DELETE', `/cloudbackups/${backupId}/export`), 404);
    assert.equal((await call(owner, 'GET', `/cloudbackups/${backupId}/export`)).json().exports.length, 0);
    // Expiry, as the clock sees it.
    const x = await exportOk(owner, { export: { expires_in: 60 } });
    const real = Date.now;
    const clock = svc.app.exports as unknown as { clock: { now(): number } };
    const saved = clock.clock;
    clock.clock = { now: () => real() + 61_000 };
    try {
      assert.equal((await runTool('nbdinfo', [x.uri])).ok, false);
    } finally {
      clock.clock = saved;
    }
  });

  it('a writable export: writes are the connection\'s own, the backup and the repository are unchanged', async () => {
    const e = await exportOk(owner, { export: { writable: true } });
    assert.equal(e.writable, true);
    const w = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1000 5000', '-c', 'read -P 0xab 1000 5000', '-c', 'write -P 0xcd 500000000 512', '-c', 'read -P 0xcd 500000000 512', '-c', 'flush', e.uri]);
    assert.ok(w.ok && !/failed/i.test(w.out), w.out + w.err);
    // A later connection starts from the backup again.
    assert.ok((await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', atBackup, e.uri])).ok);
    const report = await verifyRepository(svc.app.engine.repo, {});
    assert.equal(report.ok, true);
    const overlays = await fs.readdir(path.join(svc.dataDir, 'overlays')).catch(() => []);
    assert.deepEqual(overlays, [], 'temporary overlays leave no file');
  });

  it('the OpenAPI document describes the export routes and the live restore field', async () => {
    const r = await svc.req({ method: 'GET', url: '/openapi.json' });
    assert.equal(r.statusCode, 200);
    const doc = r.json() as { paths: Record<string, Record<string, { responses?: Record<string, unknown>; requestBody?: { content: Record<string, { schema: unknown }> } }>> };
    const p = doc.paths['/v2/{projectId}/cloudbackups/{backupId}/export'];
    assert.ok(p?.post && p.get && p.delete, Object.keys(doc.paths).filter((k) => k.includes('export')).join(', '));
    assert.ok(p.post.responses?.['200'], 'POST export describes its answer');
    const restore = doc.paths['/v2/{projectId}/cloudbackups/{backupId}/restore']?.post;
    assert.match(JSON.stringify(restore?.requestBody), /"live"/);
  });

  it('bad requests change nothing: a short or unknown field, an unknown backup, a backup not available', async () => {
    const before = svc.app.exports.exportsOf(owner.projectId, backupId).length;
    expectVbsError(await call(owner, 'POST', `/cloudbackups/${backupId}/export`, { export: { expires_in: 5 } }), 400);
    expectVbsError(await call(owner, 'POST', `/cloudbackups/${backupId}/export`, { export: { expires_in: 'soon' } }), 400);
    expectVbsError(await call(owner, 'POST', `/cloudbackups/${backupId}/export`, { export: { nbd: true } }), 400);
    expectVbsError(await call(owner, 'POST', `/cloudbackups/${backupId}/export`, { export: { expires_in: 10 * 365 * 86400 } }), 400);
    expectVbsError(await call(owner, 'POST', `/cloudbackups/00000000-0000-4000-8000-000000000000/export`), 404);
    expectVbsError(await call(owner, 'POST', `/cloudbackups/not-a-uuid/export`), 404);
    assert.equal(svc.app.exports.exportsOf(owner.projectId, backupId).length, before);
  });
});

describe('exports with TLS, and switched off', () => {
  const temp = new TempDirs('haven-api-exports-tls-');
  after(() => temp.cleanup());

  it('with TLS the URI is nbds:// and a client without TLS is refused; HAVEN_NBD_LISTEN=off answers 503', async () => {
    const certs = temp.make('certs');
    const t = makeLoopbackCert(certs);
    const svc = await startService(temp, { nbdListen: '127.0.0.1:0', tlsCert: t.certFile, tlsKey: t.keyFile });
    try {
      const who = await svc.login('admin', 'admin-test-password', 'admin');
      const vol = (await svc.createVolume(who, 'tls-src', 1)).id;
      const file = await svc.volumePath(vol);
      await overwrite(file, 4096, randomBytesSeeded(MiB, 4));
      const r = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: vol, name: 'tls-b' } } });
      const job = await svc.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
      const id = String((job.entities as { backup_id: string }).backup_id);
      const x = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups/${id}/export`, token: who.token });
      assert.equal(x.statusCode, 200, x.body);
      const e = (x.json() as { export: ExportJson }).export;
      assert.equal(e.tls, true);
      assert.match(e.uri, /^nbds:\/\//);
      // libnbd: the CA as ca-cert.pem in a folder.
      const caDir = temp.make('ca');
      await fs.copyFile(t.certFile, path.join(caDir, 'ca-cert.pem'));
      const plain = await runTool('nbdinfo', [e.uri.replace(/^nbds:/, 'nbd:')]);
      assert.equal(plain.ok, false, 'no data without TLS');
      const out = path.join(temp.make('o'), 'tls.raw');
      const c = await runTool('nbdcopy', [`${e.uri}?tls-certificates=${caDir}`, out]);
      assert.ok(c.ok, c.err);
      await assertSameBytes(out, file, 'the export over TLS and the volume');
    } finally {
      await svc.close();
    }
    const off = await startService(temp, { nbdListen: 'off' });
    try {
      const who = await off.login('admin', 'admin-test-password', 'admin');
      const vol = (await off.createVolume(who, 'off-src', 1)).id;
      const r = await off.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: vol, name: 'off-b' } } });
      const job = await off.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
      const id = String((job.entities as { backup_id: string }).backup_id);
      expectVbsError(await off.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups/${id}/export`, token: who.token }), 503);
    } finally {
      await off.close();
    }
  });
});
