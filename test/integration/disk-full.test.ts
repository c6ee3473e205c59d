/**
 * A full disk under the data folder (a 16 MiB tmpfs mounted for the test; CI runs as root): /healthz
 * says `degraded` (503) with the reason, a login and a volume creation that cannot be written answer
 * 507 in their API's own envelope (never a 500), and once space is freed everything works again.
 * Mounting needs root (CAP_SYS_ADMIN): without it the test skips, except under CI=true.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { assertCinderError, assertKeystoneError } from '../helpers/api.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';
import { fill, mountTmpfs } from '../helpers/tmpfs.ts';

const run = promisify(execFile);


const loginPayload = { auth: { identity: { methods: ['password'], password: { user: { name: 'admin', domain: { name: 'Default' }, password: ADMIN_PASSWORD } } }, scope: { project: { name: 'admin', domain: { name: 'Default' } } } } };

describe('a full disk under the data folder', () => {
  const temp = new TempDirs('haven-diskfull-');
  const mountPoint = temp.make('mnt');
  let skip: string | false = false;
  let svc: TestService | undefined;
  let mounted = false;
  before(async () => {
    const why = await mountTmpfs(mountPoint, '16m');
    if (why) {
      if (process.env.CI === 'true') throw new Error(`${why}: required under CI (runs as root)`);
      skip = why;
      return;
    }
    mounted = true;
    svc = await startService(temp, { dataDir: path.join(mountPoint, 'data') });
  });
  after(async () => {
    await svc?.close();
    if (mounted) await run('umount', [mountPoint]);
    temp.cleanup();
  });

  it('healthz says degraded, writes answer 507 in the envelope, and all works again once space is freed', async (t) => {
    if (skip) return t.skip(skip);
    const s = svc!;
    const { token, projectId } = await s.login('admin', ADMIN_PASSWORD, 'admin');
    const healthy = await s.req({ method: 'GET', url: '/healthz' });
    assert.equal(healthy.statusCode, 200, healthy.body);

    // The write-ahead log emptied, so the next catalog write needs new space; then no space is left.
    await s.app.catalog.db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
    const filler = await fill(mountPoint);
    const volumesBefore = (await s.req({ method: 'GET', url: `/v3/${projectId}/volumes`, token })).json() as { volumes: unknown[] };

    // Probes are cached for a few seconds, each on its own clock: wait until both have run on the
    // full disk (one may still say ok for a moment after the other saw it full).
    const bothFull = (r: { statusCode: number; body: string }): boolean => {
      if (r.statusCode !== 503) return false;
      const parts = JSON.parse(r.body) as Record<string, string>;
      return /no space left/.test(parts.catalog ?? '') && /no space left/.test(parts.repository ?? '');
    };
    let health = await s.req({ method: 'GET', url: '/healthz' });
    for (let i = 0; i < 200 && !bothFull(health); i++) {
      await new Promise((r) => setTimeout(r, 50));
      health = await s.req({ method: 'GET', url: '/healthz' });
    }
    assert.equal(health.statusCode, 503, health.body);
    const h = health.json() as Record<string, string>;
    assert.equal(h.status, 'degraded');
    assert.match(h.reason!, /no space left/);
    assert.match(h.catalog!, /no space left/);
    assert.match(h.repository!, /no space left/);

    const login = await s.req({ method: 'POST', url: '/v3/auth/tokens', payload: loginPayload });
    assert.match(assertKeystoneError(login, 507), /disk is full/);
    assert.equal((login.json() as { error: { title: string } }).error.title, 'Insufficient Storage');

    const vol = await s.req({ method: 'POST', url: `/v3/${projectId}/volumes`, token, payload: { volume: { size: 1, name: 'full' } } });
    assert.match(assertCinderError(vol, 507), /disk is full/);
    // Nothing was created.
    const volumesDuring = (await s.req({ method: 'GET', url: `/v3/${projectId}/volumes`, token })).json() as { volumes: unknown[] };
    assert.equal(volumesDuring.volumes.length, volumesBefore.volumes.length);

    // The operator frees space: the service recovers by itself.
    await fs.rm(filler);
    health = await s.req({ method: 'GET', url: '/healthz' });
    for (let i = 0; i < 200 && health.statusCode !== 200; i++) {
      await new Promise((r) => setTimeout(r, 50));
      health = await s.req({ method: 'GET', url: '/healthz' });
    }
    assert.equal(health.statusCode, 200, health.body);
    const again = await s.req({ method: 'POST', url: '/v3/auth/tokens', payload: loginPayload });
    assert.equal(again.statusCode, 201, again.body);
    const created = await s.req({ method: 'POST', url: `/v3/${projectId}/volumes`, token, payload: { volume: { size: 1, name: 'after' } } });
    assert.equal(created.statusCode, 202, created.body);
  });
});
