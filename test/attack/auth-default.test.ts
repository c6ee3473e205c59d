/**
 * Authentication is the default: every route states its auth mode (a route that forgets is refused
 * when it is registered), and every route of the server, hidden ones included, answers 401 without
 * a token except the few public ones listed here. The OpenAPI document says each operation's mode
 * (x-haven-auth) and that the public ones need no token (security: []).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

/** The routes anyone may call: version discovery, logging in, health, the API document and the web
 * console's static files (a page that logs in like any client; it holds no data), /console/ and
 * /console/* as the route tree prints them. */
const PUBLIC = new Set(['GET /', 'GET /v2', 'GET /v3', 'GET /image', 'POST /v3/auth/tokens', 'GET /healthz', 'GET /openapi.json', 'GET /console', 'GET /console*']);

/** Every route and method of the server, from fastify's own route tree (hidden routes included). */
export function routesOf(tree: string): { method: string; url: string }[] {
  const out: { method: string; url: string }[] = [];
  const stack: string[] = [];
  for (const line of tree.split('\n')) {
    const m = /^([│ ]*)[├└]── (.*?)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    stack.push(m[2]!);
    for (const method of (m[3] ?? '').split(', ').filter(Boolean)) out.push({ method, url: stack.join('') });
  }
  return out;
}

describe('authentication is the default', () => {
  const temp = new TempDirs('haven-auth-default-');
  let svc: TestService;
  before(async () => {
    svc = await startService(temp);
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  it('the OpenAPI document states each operation\'s auth mode; only POST /v3/auth/tokens is public there', async () => {
    const doc = (await svc.req({ method: 'GET', url: '/openapi.json' })).json() as { paths: Record<string, Record<string, { 'x-haven-auth'?: string; security?: unknown[] }>> };
    const modes = new Map<string, number>();
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const [m, op] of Object.entries(ops)) {
        const mode = op['x-haven-auth'];
        assert.ok(mode, `${m} ${p} has no x-haven-auth`);
        modes.set(mode, (modes.get(mode) ?? 0) + 1);
        if (mode === 'none') assert.deepEqual(op.security, [], `${m} ${p}`);
        else assert.equal(op.security, undefined, `${m} ${p}`);
        if (p.includes('{projectId}') && !p.startsWith('/v3/projects')) assert.ok(['project', 'projectOrCloudAdmin'].includes(mode), `${m} ${p}: ${mode}`);
      }
    }
    assert.equal(modes.get('none'), 1);
    assert.ok((modes.get('cloudAdmin') ?? 0) >= 10);
  });
});

describe('a route that forgets its auth mode', () => {
  // Its own server: routes can be added only before the first request.
  const temp = new TempDirs('haven-auth-default-');
  let svc: TestService;
  before(async () => {
    svc = await startService(temp);
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });
  it('a route registered without an auth mode is refused at registration; auth: none is the explicit way out', () => {
    // The planted bug of issue 11: a route that forgot `auth` was open to anyone.
    assert.throws(
      () => svc.app.server.post('/v2.1/:projectId/servers/:serverId/os-volume_attachments-forgot', { config: { envelope: 'cinder' } }, async () => ({})),
      /states no auth mode/,
    );
    assert.throws(() => svc.app.server.get('/forgot-too', async () => ({})), /states no auth mode/);
    assert.throws(() => svc.app.server.get('/typo', { config: { auth: 'projet' as 'project' } }, async () => ({})), /states no auth mode/);
    svc.app.server.get('/v2/:projectId/explicit-project', { config: { envelope: 'cinder', auth: 'project' } }, async () => ({ ok: true }));
    svc.app.server.get('/explicitly-public', { config: { auth: 'none' } }, async () => ({ ok: true }));
  });

  it('without a token every route answers 401 except the public ones (the routes registered above included)', async () => {
    const routes = routesOf(svc.app.server.printRoutes({ commonPrefix: false }));
    assert.ok(routes.length >= 150, `only ${routes.length} routes parsed`);
    let open = 0;
    for (const r of routes) {
      const url = r.url.replace(/:[A-Za-z_]+/g, 'x');
      const res = await svc.req({ method: r.method as 'GET', url, ...(['POST', 'PUT', 'PATCH'].includes(r.method) ? { payload: {} } : {}) });
      const key = `${r.method === 'HEAD' ? 'GET' : r.method} ${r.url}`;
      if (PUBLIC.has(key) || key === 'GET /explicitly-public') {
        open++;
        assert.notEqual(res.statusCode, 401, `${r.method} ${r.url} is public but answered 401`);
      } else {
        assert.equal(res.statusCode, 401, `${r.method} ${r.url} without a token: ${res.statusCode} ${res.body}`);
      }
    }
    assert.equal(open, PUBLIC.size + 1 + [...PUBLIC].filter((k) => k.startsWith('GET ')).length + 1, 'every public route (and its HEAD) was seen');
  });

});
