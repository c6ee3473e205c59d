/**
 * Identity on a PostgreSQL catalog: migration 0009's audit chain (a recursive delete) revokes a
 * token's derived tokens there too, and a role removed in the shared catalog ends a token.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TOKEN_CACHE_MS } from '../../src/services/identity-service.ts';
import { freshDatabase } from '../helpers/postgres.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

describe('identity on PostgreSQL', async () => {
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : false;
  const temp = new TempDirs('haven-idpg-');
  let svc: TestService;
  let t = Date.now();
  const clock = { now: () => t };
  before(async () => {
    if ('skip' in db) return;
    svc = await startService(temp, { catalogUrl: db.url }, { runJobs: false, clock });
  });
  after(async () => {
    if ('skip' in db) return;
    await svc.close();
    await db.drop();
    temp.cleanup();
  });

  it('revoking a token revokes its derived tokens at any depth, and only those', { skip }, async () => {
    const admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const url = `/v3/${admin.projectId}/volumes`;
    const rescope = async (token: string) => {
      const r = await svc.req({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['token'], token: { id: token } }, scope: { project: { id: admin.projectId } } } } });
      assert.equal(r.statusCode, 201, r.body);
      return String(r.headers['x-subject-token']);
    };
    const child = await rescope(admin.token);
    const grandchild = await rescope(child);
    const other = (await svc.login('admin', ADMIN_PASSWORD, 'admin')).token;
    const del = await svc.req({ method: 'DELETE', url: '/v3/auth/tokens', token: other, headers: { 'x-subject-token': admin.token } });
    assert.equal(del.statusCode, 204, del.body);
    for (const t of [admin.token, child, grandchild]) assert.equal((await svc.req({ method: 'GET', url, token: t })).statusCode, 401);
    assert.equal((await svc.req({ method: 'GET', url, token: other })).statusCode, 200);
  });

  it('a role removed in the shared catalog (by another process) ends the token within 5 s', { skip }, async () => {
    const ten = await svc.tenant('pgten');
    const url = `/v3/${ten.projectId}/volumes`;
    assert.equal((await svc.req({ method: 'GET', url, token: ten.token })).statusCode, 200);
    await svc.app.catalog.identity.revokeRole(ten.projectId, ten.userId, 'member');
    t += TOKEN_CACHE_MS;
    assert.equal((await svc.req({ method: 'GET', url, token: ten.token })).statusCode, 401);
  });
});
