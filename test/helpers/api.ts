/**
 * Helpers shared by the HTTP API tests: volumes, byte comparison of (large, sparse) volume files,
 * the three error envelopes, pausing the job runner, and catalog counts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { promisify } from 'node:util';
import type { LightMyRequestResponse } from 'fastify';
import type { TestService } from './service.ts';

const run = promisify(execFile);

/** Creates a volume through the API (202, available) and returns its id and file. */
export async function createVolume(svc: TestService, token: string, pid: string, opts: { size?: number; name?: string; version?: 'v2' | 'v3' } = {}): Promise<{ id: string; path: string }> {
  const r = await svc.req({ method: 'POST', url: `/${opts.version ?? 'v3'}/${pid}/volumes`, token, payload: { volume: { size: opts.size ?? 1, name: opts.name ?? 'vol' } } });
  assert.equal(r.statusCode, 202, r.body);
  const v = (r.json() as { volume: { id: string; status: string } }).volume;
  assert.equal(v.status, 'available');
  const row = await svc.app.catalog.volumes.getVolumeById(v.id);
  assert.ok(row, `volume ${v.id} is not in the catalog`);
  return { id: v.id, path: row.path };
}

/** Whether two files hold the same bytes (compared block by block; no hashing, which costs seconds per GiB). */
export async function sameBytes(a: string, b: string): Promise<boolean> {
  const [fa, fb] = [await fs.open(a, 'r'), await fs.open(b, 'r')];
  try {
    const [sa, sb] = [await fa.stat(), await fb.stat()];
    if (sa.size !== sb.size) return false;
    const block = 16 * 1024 * 1024;
    const x = Buffer.alloc(block);
    const y = Buffer.alloc(block);
    for (let pos = 0; pos < sa.size; pos += block) {
      const n = Math.min(block, sa.size - pos);
      await Promise.all([readFully(fa, x, n, pos), readFully(fb, y, n, pos)]);
      if (!x.subarray(0, n).equals(y.subarray(0, n))) return false;
    }
    return true;
  } finally {
    await fa.close();
    await fb.close();
  }
}

async function readFully(fh: fs.FileHandle, buf: Buffer, n: number, position: number): Promise<void> {
  for (let off = 0; off < n; ) {
    const { bytesRead } = await fh.read(buf, off, n - off, position + off);
    if (bytesRead === 0) throw new Error(`unexpected end of file at ${position + off}`);
    off += bytesRead;
  }
}

export async function assertSameBytes(a: string, b: string, what = 'files'): Promise<void> {
  assert.ok(await sameBytes(a, b), `${what} differ: ${a} vs ${b}`);
}

/** A sparse copy of a file (keeps the holes, so copying a 1 GiB volume is cheap). */
export async function sparseCopy(from: string, to: string): Promise<void> {
  await run('cp', ['--sparse=always', '--', from, to]);
}

const STACK_LINE = /\n\s+at /;

/** Fails when a body looks like it carries a stack trace. */
export function assertNoStack(r: LightMyRequestResponse): void {
  assert.doesNotMatch(r.body, STACK_LINE, `stack trace in response: ${r.body}`);
  assert.doesNotMatch(r.body, /\\n\s+at /, `stack trace (escaped) in response: ${r.body}`);
}

const CINDER_FAULT: Record<number, string> = { 400: 'badRequest', 401: 'unauthorized', 403: 'forbidden', 404: 'itemNotFound', 405: 'badMethod', 409: 'conflictingRequest', 413: 'overLimit', 415: 'badMediaType' };

/** {"badRequest": {"code": 400, "message": "..."}}: one key, the fault name of the status. */
export function assertCinderError(r: LightMyRequestResponse, status: number): string {
  assert.equal(r.statusCode, status, r.body);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const body = r.json() as Record<string, { code: unknown; message: unknown }>;
  const keys = Object.keys(body);
  assert.equal(keys.length, 1, r.body);
  const fault = CINDER_FAULT[status];
  if (fault) assert.equal(keys[0], fault, r.body);
  const inner = body[keys[0]!]!;
  assert.equal(inner.code, status, r.body);
  assert.equal(typeof inner.message, 'string');
  assert.ok((inner.message as string).length > 0);
  assertNoStack(r);
  return inner.message as string;
}

/** {"error": {"code": "VolumeBackup.0010", "message": "..."}} with the exact code when given. */
export function assertVbsError(r: LightMyRequestResponse, status: number, code?: string): string {
  assert.equal(r.statusCode, status, r.body);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const body = r.json() as { error?: { code?: unknown; message?: unknown } };
  assert.deepEqual(Object.keys(body), ['error'], r.body);
  assert.match(String(body.error!.code), /^(VolumeBackup|AutoBackup|common)\.\d{4}$/, r.body);
  if (code) assert.equal(body.error!.code, code, r.body);
  assert.equal(typeof body.error!.message, 'string');
  assertNoStack(r);
  return body.error!.message as string;
}

const TITLES: Record<number, string> = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 409: 'Conflict', 413: 'Request Entity Too Large', 415: 'Unsupported Media Type' };

/** {"error": {"code": 401, "title": "Unauthorized", "message": "..."}} */
export function assertKeystoneError(r: LightMyRequestResponse, status: number): string {
  assert.equal(r.statusCode, status, r.body);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  const body = r.json() as { error?: { code?: unknown; title?: unknown; message?: unknown } };
  assert.deepEqual(Object.keys(body), ['error'], r.body);
  assert.equal(body.error!.code, status, r.body);
  if (TITLES[status]) assert.equal(body.error!.title, TITLES[status], r.body);
  assert.equal(typeof body.error!.message, 'string');
  assertNoStack(r);
  return body.error!.message as string;
}

/** Jobs in the catalog, of any project and status. */
export async function jobCount(svc: TestService): Promise<number> {
  const counts = await svc.app.catalog.jobs.countByStatus();
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

/**
 * Runs `fn` with the job runner stopped, so backups created meanwhile stay `creating` (no race
 * with a fast job). Waits for running work first; restarts the runner afterwards.
 */
export async function withRunnerPaused<T>(svc: TestService, fn: () => Promise<T>): Promise<T> {
  await svc.app.runner.idle();
  await svc.app.runner.stop();
  try {
    return await fn();
  } finally {
    await svc.app.runner.start();
  }
}

/** The path and query of an absolute link, for inject(). */
export function pathOf(href: string): string {
  const u = new URL(href);
  return `${u.pathname}${u.search}`;
}

/** Runs an outside client (nbdinfo, nbdcopy, qemu-img, qemu-io): whether it succeeded, and what it printed. */
export async function runTool(cmd: string, args: string[]): Promise<{ ok: boolean; out: string; err: string }> {
  try {
    const r = await run(cmd, args, { maxBuffer: 64 * 1024 * 1024 });
    return { ok: true, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string };
    return { ok: false, out: x.stdout ?? '', err: x.stderr ?? '' };
  }
}

/**
 * A VBS backup of a new 1 GB volume that `fill` writes into, with the job runner held before and
 * after it (started for the backup only): the backup's id, and a sparse copy of the volume as
 * backed up (in `dir`).
 */
export async function backUpWithRunnerHeld(svc: TestService, who: { token: string; projectId: string }, name: string, dir: string, fill: (file: string) => Promise<void>): Promise<{ backupId: string; atBackup: string }> {
  const src = (await svc.createVolume(who, `${name}-src`, 1)).id;
  const file = (await svc.app.catalog.volumes.getVolumeById(src))!.path;
  await fill(file);
  const atBackup = `${dir}/at-backup.raw`;
  await run('cp', ['--sparse=always', file, atBackup]);
  const r = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: src, name } } });
  assert.equal(r.statusCode, 200, r.body);
  await svc.app.runner.start();
  const job = await svc.waitJob(who.token, who.projectId, (r.json() as { job_id: string }).job_id);
  assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
  await svc.app.runner.stop();
  return { backupId: String((job.entities as { backup_id: string }).backup_id), atBackup };
}
