/**
 * Identity under attack (issue 11, "Identity"): what a token may do is resolved again within 5 s
 * (a removed role, a disabled or deleted user or project ends it, even for a token issued before);
 * revoking a token revokes every token derived from it (audit chain); only the admin role on the
 * admin project is cloud admin; failed logins are throttled per (user, address), per address and
 * per user (429 + Retry-After) without locking the user out from elsewhere; /metrics needs a
 * cloud-admin token, or a listener of its own. Time is a fake clock: nothing sleeps.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import { TOKEN_CACHE_MS } from '../../src/services/identity-service.ts';
import { HashingGate } from '../../src/services/passwords.ts';
import { LOGIN_LIMITS } from '../../src/services/login-throttle.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';
import { assertKeystoneError } from '../helpers/api.ts';

const PASSWORD = 'sec-test-Pa55word';
const WRONG = 'not-the-password';

/** A clock the test moves by hand. */
class FakeClock {
  t = Date.now();
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

describe('identity security', () => {
  const temp = new TempDirs('haven-idsec-');
  const clock = new FakeClock();
  let svc: TestService;
  let root: string;
  let admin: { token: string; projectId: string; userId: string };

  const req = (o: InjectOptions & { token?: string }): Promise<LightMyRequestResponse> => svc.req(o);
  const byName = (name: string) => ({ name, domain: { name: 'Default' } });
  const passwordLogin = (user: string, password: string, opts: { project?: string; from?: string } = {}) =>
    req({
      method: 'POST', url: '/v3/auth/tokens', remoteAddress: opts.from ?? '127.0.0.1',
      payload: { auth: { identity: { methods: ['password'], password: { user: { ...byName(user), password } } }, ...(opts.project ? { scope: { project: byName(opts.project) } } : {}) } },
    });
  const tokenOf = (r: LightMyRequestResponse): string => {
    assert.equal(r.statusCode, 201, r.body);
    return String(r.headers['x-subject-token']);
  };
  /** A user with `roles` on `project` (created if needed); returns its id. */
  const user = async (name: string, grants: [project: string, role: 'admin' | 'member'][]): Promise<string> => {
    const u = await svc.app.identity.createUser({ name, password: PASSWORD });
    for (const [p, role] of grants) {
      const project = await svc.app.identity.findProject(p).catch(() => svc.app.identity.createProject({ name: p }));
      await svc.app.identity.grantRole(project.id, u.id, role);
    }
    return u.id;
  };
  const pid = async (name: string) => (await svc.app.identity.findProject(name)).id;

  before(async () => {
    root = temp.make('roots');
    svc = await startService(temp, { volumeRoots: [root] }, { clock, runJobs: false });
    admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  describe('roles are resolved again on every validation (cache at most 5 s)', () => {
    it('a role removed by another process ends a cloud-admin token within 5 s, though it was issued with the role', async () => {
      const ops = await user('ops1', [['admin', 'admin']]);
      const t = tokenOf(await passwordLogin('ops1', PASSWORD, { project: 'admin' }));
      assert.equal((await req({ method: 'GET', url: '/v3/users', token: t })).statusCode, 200);
      // Straight in the catalog, as another Haven process sharing it would: this process learns of
      // it only when its cached context expires.
      await svc.app.catalog.identity.revokeRole(admin.projectId, ops, 'admin');
      clock.advance(TOKEN_CACHE_MS);
      // No role left on the token's project: the token itself is invalid.
      assertKeystoneError(await req({ method: 'GET', url: '/v3/users', token: t }), 401);
      assertKeystoneError(await req({ method: 'POST', url: '/v3/projects', token: t, payload: { project: { name: 'made-by-ex-admin' } } }), 401);
      assert.equal(await svc.app.catalog.identity.findProjectByName('default', 'made-by-ex-admin'), undefined);
    });

    it('a role removed through the API takes effect at once; the member role that remains still works', async () => {
      const ops = await user('ops2', [['admin', 'admin'], ['admin', 'member']]);
      const t = tokenOf(await passwordLogin('ops2', PASSWORD, { project: 'admin' }));
      assert.equal((await req({ method: 'GET', url: '/v3/users', token: t })).statusCode, 200);
      const del = await req({ method: 'DELETE', url: `/v3/projects/${admin.projectId}/users/${ops}/roles/admin`, token: admin.token });
      assert.equal(del.statusCode, 204, del.body);
      assertKeystoneError(await req({ method: 'GET', url: '/v3/users', token: t }), 403);
      const body = (await req({ method: 'GET', url: '/v3/auth/tokens', token: t, headers: { 'x-subject-token': t } })).json() as { token: { roles: { name: string }[] } };
      assert.deepEqual(body.token.roles.map((r) => r.name), ['member'], 'the token body shows the roles held now');
      assert.equal((await req({ method: 'GET', url: `/v3/${admin.projectId}/volumes`, token: t })).statusCode, 200);
    });

    it('disabling or deleting the user, or disabling the project, ends its tokens (API: at once; another process: within 5 s)', async () => {
      const a = await user('dora', [['dproj', 'member']]);
      const dproj = await pid('dproj');
      const url = `/v3/${dproj}/volumes`;
      let t = tokenOf(await passwordLogin('dora', PASSWORD, { project: 'dproj' }));
      assert.equal((await req({ method: 'GET', url, token: t })).statusCode, 200);
      // Disabled in the catalog by another process.
      await svc.app.catalog.identity.setUserEnabled(a, false);
      clock.advance(TOKEN_CACHE_MS);
      assertKeystoneError(await req({ method: 'GET', url: '/v3/auth/projects', token: t }), 401);
      await svc.app.catalog.identity.setUserEnabled(a, true);
      t = tokenOf(await passwordLogin('dora', PASSWORD, { project: 'dproj' }));
      // Disabled through the API (openstack user set --disable).
      const off = await req({ method: 'PATCH', url: `/v3/users/${a}`, token: admin.token, payload: { user: { enabled: false } } });
      assert.equal(off.statusCode, 200, off.body);
      assert.equal((off.json() as { user: { enabled: boolean } }).user.enabled, false);
      assert.equal((await req({ method: 'GET', url, token: t })).statusCode, 401);
      assert.equal((await req({ method: 'PATCH', url: `/v3/users/${a}`, token: admin.token, payload: { user: { enabled: true } } })).statusCode, 200);
      t = tokenOf(await passwordLogin('dora', PASSWORD, { project: 'dproj' }));
      // The project disabled through the API.
      assert.equal((await req({ method: 'PATCH', url: `/v3/projects/${dproj}`, token: admin.token, payload: { project: { enabled: false } } })).statusCode, 200);
      assert.equal((await req({ method: 'GET', url, token: t })).statusCode, 401);
      assert.equal((await req({ method: 'PATCH', url: `/v3/projects/${dproj}`, token: admin.token, payload: { project: { enabled: true } } })).statusCode, 200);
      t = tokenOf(await passwordLogin('dora', PASSWORD, { project: 'dproj' }));
      // Deleted through the API: its tokens and role assignments go with it.
      assert.equal((await req({ method: 'DELETE', url: `/v3/users/${a}`, token: admin.token })).statusCode, 204);
      assert.equal((await req({ method: 'GET', url, token: t })).statusCode, 401);
      assert.equal(await svc.app.catalog.identity.getUser(a), undefined);
      assert.deepEqual(await svc.app.catalog.identity.rolesOf(dproj, a), []);
      // The way back in cannot be closed.
      assertKeystoneError(await req({ method: 'PATCH', url: `/v3/users/${admin.userId}`, token: admin.token, payload: { user: { enabled: false } } }), 403);
      assertKeystoneError(await req({ method: 'DELETE', url: `/v3/users/${admin.userId}`, token: admin.token }), 403);
      assertKeystoneError(await req({ method: 'PATCH', url: `/v3/projects/${admin.projectId}`, token: admin.token, payload: { project: { enabled: false } } }), 403);
      assert.equal((await req({ method: 'GET', url: '/v3/users', token: admin.token })).statusCode, 200);
    });
  });

  describe('audit chain', () => {
    const rescope = async (token: string, project?: string) =>
      tokenOf(await req({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['token'], token: { id: token } }, ...(project ? { scope: { project: byName(project) } } : {}) } } }));
    const auditIds = async (token: string) =>
      ((await req({ method: 'GET', url: '/v3/auth/tokens', token, headers: { 'x-subject-token': token } })).json() as { token: { audit_ids: string[] } }).token.audit_ids;

    it('revoking a token revokes the tokens obtained from it, and theirs; not its parent, not other tokens', async () => {
      await user('chain', [['cproj', 'member']]);
      const url = `/v3/${await pid('cproj')}/volumes`;
      const root = tokenOf(await passwordLogin('chain', PASSWORD));
      const child = await rescope(root, 'cproj');
      const grandchild = await rescope(child, 'cproj');
      const other = tokenOf(await passwordLogin('chain', PASSWORD, { project: 'cproj' }));
      const [rootAudit] = await auditIds(root);
      const childIds = await auditIds(child);
      const grandIds = await auditIds(grandchild);
      // Keystone's shape: [own audit id, audit id of the chain's first token].
      assert.equal(childIds.length, 2);
      assert.equal(childIds[1], rootAudit);
      assert.deepEqual(grandIds.slice(1), [rootAudit]);
      assert.notEqual(grandIds[0], childIds[0]);
      for (const t of [child, grandchild, other]) assert.equal((await req({ method: 'GET', url, token: t })).statusCode, 200);

      const del = await req({ method: 'DELETE', url: '/v3/auth/tokens', token: root, headers: { 'x-subject-token': root } });
      assert.equal(del.statusCode, 204, del.body);
      assert.equal((await req({ method: 'GET', url, token: child })).statusCode, 401);
      assert.equal((await req({ method: 'GET', url, token: grandchild })).statusCode, 401);
      assert.equal((await req({ method: 'GET', url, token: other })).statusCode, 200, 'a token of another login stays');
      // Gone from the catalog, not only from this process's cache (other processes see it).
      assert.equal(await svc.app.catalog.identity.getToken(sha256(child)), undefined);
      assert.equal(await svc.app.catalog.identity.getToken(sha256(grandchild)), undefined);

      // Revoking a child leaves its parent.
      const parent = tokenOf(await passwordLogin('chain', PASSWORD, { project: 'cproj' }));
      const kid = await rescope(parent);
      assert.equal((await req({ method: 'DELETE', url: '/v3/auth/tokens', token: parent, headers: { 'x-subject-token': kid } })).statusCode, 204);
      assert.equal((await req({ method: 'GET', url, token: parent })).statusCode, 200);
      assertKeystoneError(await req({ method: 'GET', url: '/v3/auth/tokens', token: parent, headers: { 'x-subject-token': kid } }), 404);
    });
  });

  describe('cloud admin: the admin role on the admin project', () => {
    let boss: { token: string; projectId: string; userId: string };
    let other: { token: string; projectId: string; userId: string };

    before(async () => {
      await user('boss', [['xproj', 'admin']]);
      boss = await svc.login('boss', PASSWORD, 'xproj');
      other = await svc.tenant('yproj');
    });

    it('the admin of project X cannot manage identity, grant itself roles elsewhere, adopt host files, read other projects\' quotas or /metrics', async () => {
      const projectsBefore = (await svc.app.catalog.identity.listProjects()).length;
      const usersBefore = (await svc.app.catalog.identity.listUsers()).length;
      const calls: InjectOptions[] = [
        { method: 'GET', url: '/v3/users' },
        { method: 'GET', url: '/v3/projects' },
        { method: 'GET', url: `/v3/users/${admin.userId}` },
        { method: 'POST', url: '/v3/users', payload: { user: { name: 'minion', password: 'minion-pass' } } },
        { method: 'POST', url: '/v3/projects', payload: { project: { name: 'empire' } } },
        { method: 'PUT', url: `/v3/projects/${admin.projectId}/users/${boss.userId}/roles/admin` },
        { method: 'PUT', url: `/v3/projects/${other.projectId}/users/${boss.userId}/roles/admin` },
        { method: 'PUT', url: `/v3/projects/${boss.projectId}/users/${other.userId}/roles/admin` },
        { method: 'GET', url: `/v3/projects/${other.projectId}/users/${other.userId}/roles` },
        { method: 'PATCH', url: `/v3/users/${other.userId}`, payload: { user: { enabled: false } } },
        { method: 'DELETE', url: `/v3/users/${other.userId}` },
        { method: 'GET', url: `/v3/projects/${other.projectId}` },
      ];
      for (const c of calls) assertKeystoneError(await req({ ...c, token: boss.token }), 403);
      assert.equal((await svc.app.catalog.identity.listProjects()).length, projectsBefore);
      assert.equal((await svc.app.catalog.identity.listUsers()).length, usersBefore);
      assert.deepEqual(await svc.app.catalog.identity.rolesOf(admin.projectId, boss.userId), []);
      assert.deepEqual(await svc.app.catalog.identity.rolesOf(other.projectId, boss.userId), []);
      assert.deepEqual(await svc.app.catalog.identity.rolesOf(boss.projectId, other.userId), []);
      assert.ok((await svc.app.catalog.identity.getUser(other.userId))!.enabled);

      // Adopting a host file, even into its own project.
      const file = path.join(root, 'host.img');
      writeFileSync(file, randomBytesSeeded(65536, 7));
      const before = readFileSync(file);
      const adopt = await req({ method: 'POST', url: `/v3/${boss.projectId}/os-volume-manage`, token: boss.token, payload: { volume: { ref: { 'source-name': file } } } });
      assert.equal(adopt.statusCode, 403, adopt.body);
      assert.ok('forbidden' in (adopt.json() as object), adopt.body);
      assert.equal(await svc.app.catalog.volumes.countVolumes(boss.projectId), 0);
      assert.deepEqual(readFileSync(file), before);

      // Other projects' quotas, in each family.
      assert.equal((await req({ method: 'GET', url: `/v2/${other.projectId}/cloudbackups/quota`, token: boss.token })).statusCode, 403);
      assert.equal((await req({ method: 'GET', url: `/v1/${other.projectId}/quotas`, token: boss.token })).statusCode, 403);
      // Its own are fine.
      assert.equal((await req({ method: 'GET', url: `/v2/${boss.projectId}/cloudbackups/quota`, token: boss.token })).statusCode, 200);
      assert.equal((await req({ method: 'GET', url: `/v3/projects/${boss.projectId}`, token: boss.token })).statusCode, 200);
      assert.equal((await req({ method: 'GET', url: '/metrics', token: boss.token })).statusCode, 403);
    });

    it('the admin user scoped to another project is not cloud admin with that token', async () => {
      await svc.app.identity.grantRole(other.projectId, admin.userId, 'admin');
      const elsewhere = await svc.login('admin', ADMIN_PASSWORD, 'yproj');
      assertKeystoneError(await req({ method: 'GET', url: '/v3/users', token: elsewhere.token }), 403);
      await svc.app.identity.revokeRole(other.projectId, admin.userId, 'admin');
    });

    it('the cloud admin adopts a file into any existing project', async () => {
      const dir = path.join(root, 'y');
      if (!existsSync(dir)) mkdirSync(dir);
      const file = path.join(dir, 'for-y.img');
      writeFileSync(file, randomBytesSeeded(65536, 8));
      const r = await req({ method: 'POST', url: `/v3/${other.projectId}/os-volume-manage`, token: admin.token, payload: { volume: { ref: { 'source-name': file }, name: 'for-y' } } });
      assert.equal(r.statusCode, 202, r.body);
      const id = (r.json() as { volume: { id: string } }).volume.id;
      assert.equal((await svc.app.catalog.volumes.getVolumeById(id))!.projectId, other.projectId);
      assert.equal((await req({ method: 'GET', url: `/v3/${other.projectId}/volumes/${id}`, token: other.token })).statusCode, 200, 'the tenant sees its adopted volume');
      const missing = await req({ method: 'POST', url: '/v3/0123456789abcdef0123456789abcdef/os-volume-manage', token: admin.token, payload: { volume: { ref: { 'source-name': path.join(root, 'host.img') } } } });
      assert.equal(missing.statusCode, 404, missing.body);
    });
  });

  describe('failed-login throttling', () => {
    const retryAfter = (r: LightMyRequestResponse): number => {
      assertKeystoneError(r, 429);
      assert.equal((r.json() as { error: { title: string } }).error.title, 'Too Many Requests');
      const s = Number(r.headers['retry-after']);
      assert.ok(Number.isInteger(s) && s >= 1, `Retry-After: ${String(r.headers['retry-after'])}`);
      return s;
    };

    it('per (user, address): 429 with Retry-After after the free failures; elsewhere and other users unaffected; the password works after the wait', async () => {
      await user('victim', [['vproj', 'member']]);
      await user('neighbour', [['vproj', 'member']]);
      const A = '10.1.0.1';
      for (let i = 0; i < LOGIN_LIMITS.pair.freeFailures; i++) assertKeystoneError(await passwordLogin('victim', WRONG, { from: A }), 401);
      assertKeystoneError(await passwordLogin('victim', WRONG, { from: A }), 401); // this one locks the pair
      const wait = retryAfter(await passwordLogin('victim', PASSWORD, { from: A, project: 'vproj' }));
      // Attempts while locked are refused without a password check and do not extend the lock.
      for (let i = 0; i < 10; i++) assert.ok(retryAfter(await passwordLogin('victim', WRONG, { from: A })) <= wait);
      // The same user from another address, and another user from this address, log in.
      tokenOf(await passwordLogin('victim', PASSWORD, { from: '10.1.0.2', project: 'vproj' }));
      tokenOf(await passwordLogin('neighbour', PASSWORD, { from: A, project: 'vproj' }));
      clock.advance(wait * 1000);
      tokenOf(await passwordLogin('victim', PASSWORD, { from: A, project: 'vproj' }));
      // The success cleared the pair's count: five free failures again.
      for (let i = 0; i < LOGIN_LIMITS.pair.freeFailures; i++) assertKeystoneError(await passwordLogin('victim', WRONG, { from: A }), 401);
    });

    it('the lock grows exponentially with further failures and stays short', async () => {
      await user('grower', []);
      const A = '10.2.0.1';
      for (let i = 0; i <= LOGIN_LIMITS.pair.freeFailures; i++) await passwordLogin('grower', WRONG, { from: A });
      const waits: number[] = [];
      for (let i = 0; i < 12; i++) {
        const w = retryAfter(await passwordLogin('grower', WRONG, { from: A }));
        waits.push(w);
        clock.advance(w * 1000);
        assertKeystoneError(await passwordLogin('grower', WRONG, { from: A }), 401); // counted: the next lock doubles
      }
      assert.deepEqual(waits.slice(0, 4), [1, 2, 4, 8]);
      assert.equal(Math.max(...waits), LOGIN_LIMITS.pair.maxLockMs / 1000);
    });

    it('per address: spraying many user names from one address locks that address only', async () => {
      const C = '10.3.0.1';
      for (let i = 0; i < LOGIN_LIMITS.address.freeFailures; i++) assertKeystoneError(await passwordLogin(`nobody-${i}`, WRONG, { from: C }), 401);
      assertKeystoneError(await passwordLogin('nobody-x', WRONG, { from: C }), 401);
      retryAfter(await passwordLogin('victim', PASSWORD, { from: C, project: 'vproj' }));
      tokenOf(await passwordLogin('victim', PASSWORD, { from: '10.3.0.2', project: 'vproj' }));
      clock.advance(LOGIN_LIMITS.address.maxLockMs);
    });

    it('per user: guesses from many addresses lock the user, except from addresses it logged in from', async () => {
      await user('celebrity', [['vproj', 'member']]);
      const home = '10.4.0.1';
      tokenOf(await passwordLogin('celebrity', PASSWORD, { from: home, project: 'vproj' }));
      for (let i = 0; i <= LOGIN_LIMITS.user.freeFailures; i++) assertKeystoneError(await passwordLogin('celebrity', WRONG, { from: `10.5.${i >> 8}.${i & 255}` }), 401);
      retryAfter(await passwordLogin('celebrity', PASSWORD, { from: '10.6.0.1', project: 'vproj' }));
      tokenOf(await passwordLogin('celebrity', PASSWORD, { from: home, project: 'vproj' }));
      clock.advance(LOGIN_LIMITS.user.maxLockMs);
    });

    it('unknown user names are throttled like known ones (the answers do not tell which exist)', async () => {
      const A = '10.7.0.1';
      for (let i = 0; i <= LOGIN_LIMITS.pair.freeFailures; i++) assertKeystoneError(await passwordLogin('ghost', WRONG, { from: A }), 401);
      retryAfter(await passwordLogin('ghost', WRONG, { from: A }));
    });
  });

  describe('password hashing is capped', () => {
    it('at most `concurrency` run, `maxWaiting` wait, the rest are refused at once', async () => {
      const gate = new HashingGate({ concurrency: 1, maxWaiting: 1, onBusy: () => new Error('busy') });
      const order: string[] = [];
      let release!: () => void;
      const first = gate.run(() => new Promise<void>((r) => (release = () => { order.push('first'); r(); })));
      const second = gate.run(async () => void order.push('second'));
      await assert.rejects(gate.run(async () => void order.push('third')), /busy/);
      await Promise.resolve();
      assert.equal(order.length, 0, 'the second waits for the first');
      release();
      await Promise.all([first, second]);
      assert.deepEqual(order, ['first', 'second']);
      // Free again: one runs at once.
      await gate.run(async () => void order.push('fourth'));
      assert.deepEqual(order, ['first', 'second', 'fourth']);
    });
  });

  describe('/metrics', () => {
    it('on the API: 401 without a token, 403 for a member or a project admin, 200 for the cloud admin', async () => {
      assert.equal((await req({ method: 'GET', url: '/metrics' })).statusCode, 401);
      const member = await svc.tenant('mproj');
      assert.equal((await req({ method: 'GET', url: '/metrics', token: member.token })).statusCode, 403);
      const r = await req({ method: 'GET', url: '/metrics', token: admin.token });
      assert.equal(r.statusCode, 200);
      assert.match(r.body, /^# TYPE haven_http_requests_total counter$/m);
      assert.equal(svc.app.metricsServer, null, 'no token-less listener unless HAVEN_METRICS_PORT is set');
    });

    it('HAVEN_METRICS_PORT: a listener of its own serves /metrics without a token, and nothing else', async () => {
      const other = await startService(temp, { metricsPort: 9 }, { runJobs: false });
      try {
        const m = other.app.metricsServer!;
        assert.ok(m, 'the metrics listener is built');
        // Over a real socket (on a free port rather than the configured one, which serve would use).
        await m.listen({ host: '127.0.0.1', port: 0 });
        const port = (m.server.address() as { port: number }).port;
        const r = await fetch(`http://127.0.0.1:${port}/metrics`);
        assert.equal(r.status, 200);
        assert.match(await r.text(), /^# TYPE haven_http_requests_total counter$/m);
        assert.equal((await fetch(`http://127.0.0.1:${port}/v3/users`)).status, 404);
        // The API's own /metrics still needs the token.
        assert.equal((await other.req({ method: 'GET', url: '/metrics' })).statusCode, 401);
      } finally {
        await other.close();
      }
    });
  });
});

function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}
