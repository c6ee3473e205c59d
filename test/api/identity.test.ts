/**
 * Keystone v3 subset over HTTP: tokens (password and token methods, project scope by name and by
 * id), the token body and its service catalog, validate/check/revoke, the admin calls that create
 * tenants, 401/403 in the Keystone envelope, and no password ever echoed in a response.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';
import { assertKeystoneError, assertNoStack } from '../helpers/api.ts';

interface TokenBody {
  token: {
    methods: string[];
    user: { id: string; name: string; domain: { id: string; name: string } };
    project?: { id: string; name: string; domain: { id: string; name: string } };
    roles?: { id: string; name: string }[];
    expires_at: string;
    issued_at: string;
    catalog?: { type: string; name: string; endpoints: { interface: string; region: string; region_id: string; url: string }[] }[];
  };
}

const NEW_USER_PASSWORD = 'n3w-user-Pa55word-xyz';
const WRONG_PASSWORD = 'definitely-wrong-Pa55';
const TENANT_PASSWORD = 'tenant-password'; // the one svc.tenant() uses
const KEYSTONE_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

describe('identity (Keystone v3 subset)', () => {
  const temp = new TempDirs('haven-identity-');
  let svc: TestService;
  /** Every response this file saw: none may contain a password. */
  const seen: LightMyRequestResponse[] = [];
  const req = async (o: InjectOptions & { token?: string }) => {
    const r = await svc.req(o);
    seen.push(r);
    return r;
  };
  let adminToken: string;
  let adminPid: string;
  let adminUserId: string;
  let tenant: { token: string; projectId: string; userId: string };

  const passwordAuth = (user: Record<string, unknown>, password: string, scope?: Record<string, unknown>) => ({
    auth: { identity: { methods: ['password'], password: { user: { ...user, password } } }, ...(scope ? { scope } : {}) },
  });
  const byName = (name: string) => ({ name, domain: { name: 'Default' } });

  before(async () => {
    svc = await startService(temp);
    tenant = await svc.tenant('acme');
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  it('issues a project-scoped token by user and project name (201, X-Subject-Token, full body)', async () => {
    const r = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('admin'), ADMIN_PASSWORD, { project: byName('admin') }) });
    assert.equal(r.statusCode, 201, r.body);
    const token = r.headers['x-subject-token'];
    assert.equal(typeof token, 'string');
    assert.ok((token as string).length >= 32);
    assert.ok(!r.body.includes(token as string), 'the token itself belongs in the header, not the body');
    const t = (r.json() as TokenBody).token;
    assert.deepEqual(t.methods, ['password']);
    assert.equal(t.user.name, 'admin');
    assert.match(t.user.id, /^[0-9a-f]{32}$/);
    assert.deepEqual(t.user.domain, { id: 'default', name: 'Default' });
    assert.ok(t.project);
    assert.equal(t.project.name, 'admin');
    assert.match(t.project.id, /^[0-9a-f]{32}$/);
    assert.deepEqual(t.project.domain, { id: 'default', name: 'Default' });
    assert.ok(t.roles?.some((x) => x.name === 'admin'), JSON.stringify(t.roles));
    for (const role of t.roles!) assert.equal(typeof role.id, 'string');
    assert.match(t.expires_at, KEYSTONE_TIME);
    assert.match(t.issued_at, KEYSTONE_TIME);
    const ttl = Date.parse(t.expires_at) - Date.parse(t.issued_at);
    assert.ok(Math.abs(ttl - 86_400_000) < 2000, `token lifetime ${ttl} ms, expected 24 h`);
    assert.ok(Date.parse(t.expires_at) > Date.now());

    // The service catalog: every type a client looks up, all in region eu-de, all on this server.
    const types = t.catalog!.map((e) => e.type).sort();
    for (const want of ['identity', 'volumev2', 'volumev3', 'block-storage', 'vbs', 'vbsv2']) assert.ok(types.includes(want), `catalog lacks ${want}: ${types.join(', ')}`);
    for (const e of t.catalog!) {
      assert.ok(e.endpoints.length > 0, `${e.type} has no endpoints`);
      assert.ok(e.endpoints.some((ep) => ep.interface === 'public'), `${e.type} has no public endpoint`);
      for (const ep of e.endpoints) {
        assert.equal(ep.region, 'eu-de');
        assert.equal(ep.region_id, 'eu-de');
        assert.match(ep.url, /^https?:\/\/[^/]+\//);
      }
    }
    const url = (type: string) => t.catalog!.find((e) => e.type === type)!.endpoints[0]!.url;
    assert.match(url('identity'), /\/v3$/);
    assert.ok(url('volumev2').endsWith(`/v2/${t.project.id}`), url('volumev2'));
    assert.ok(url('vbs').endsWith(`/v2/${t.project.id}`), url('vbs'));
    assert.ok(url('vbsv2').endsWith(`/v2/${t.project.id}`), url('vbsv2'));
    assert.ok(url('volumev3').endsWith(`/v3/${t.project.id}`), url('volumev3'));
    assert.ok(url('block-storage').endsWith(`/v3/${t.project.id}`), url('block-storage'));
    // gophercloud derives the jobs URL by replacing the first "v2" with "v1" (vbs.md §1.1).
    assert.ok(!new URL(url('volumev2')).host.includes('v2'));

    adminToken = token as string;
    adminPid = t.project.id;
    adminUserId = t.user.id;
    // The token works on the project it is scoped to.
    const vols = await req({ method: 'GET', url: `/v3/${adminPid}/volumes`, token: adminToken });
    assert.equal(vols.statusCode, 200, vols.body);
  });

  it('issues a token by user id and project id', async () => {
    const r = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth({ id: adminUserId }, ADMIN_PASSWORD, { project: { id: adminPid } }) });
    assert.equal(r.statusCode, 201, r.body);
    const t = (r.json() as TokenBody).token;
    assert.equal(t.project!.id, adminPid);
    assert.equal(t.user.id, adminUserId);
    assert.ok(typeof r.headers['x-subject-token'] === 'string' && r.headers['x-subject-token'] !== adminToken, 'a new token each time');
    // The tenant's member user, by id, on its own project.
    const m = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth({ id: tenant.userId }, TENANT_PASSWORD, { project: { id: tenant.projectId } }) });
    assert.equal(m.statusCode, 201, m.body);
    const mt = (m.json() as TokenBody).token;
    assert.deepEqual(mt.roles!.map((x) => x.name), ['member']);
    assert.equal(mt.project!.name, 'acme');
  });

  it('an unscoped token has no project, roles or catalog', async () => {
    const r = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('admin'), ADMIN_PASSWORD) });
    assert.equal(r.statusCode, 201, r.body);
    const t = (r.json() as TokenBody).token;
    assert.equal(t.project, undefined);
    assert.equal(t.catalog, undefined);
    // It is not accepted on a project path.
    const v = await req({ method: 'GET', url: `/v3/${adminPid}/volumes`, token: String(r.headers['x-subject-token']) });
    assert.equal(v.statusCode, 403, v.body);
  });

  it('wrong password, unknown user, wrong domain and a project without a role: 401 in the Keystone envelope', async () => {
    const cases = [
      passwordAuth(byName('admin'), WRONG_PASSWORD, { project: byName('admin') }),
      passwordAuth(byName('nobody-here'), WRONG_PASSWORD, { project: byName('admin') }),
      passwordAuth({ id: '0123456789abcdef0123456789abcdef' }, ADMIN_PASSWORD, { project: byName('admin') }),
      passwordAuth({ name: 'admin', domain: { name: 'OtherDomain' } }, ADMIN_PASSWORD, { project: byName('admin') }),
      // acme-user exists and the password is right, but it has no role on project admin.
      passwordAuth(byName('acme-user'), TENANT_PASSWORD, { project: byName('admin') }),
      passwordAuth(byName('acme-user'), TENANT_PASSWORD, { project: { id: '0123456789abcdef0123456789abcdef' } }),
    ];
    const messages = new Set<string>();
    for (const payload of cases) {
      const r = await req({ method: 'POST', url: '/v3/auth/tokens', payload });
      messages.add(assertKeystoneError(r, 401));
      assert.equal(r.headers['x-subject-token'], undefined);
    }
    // One message for every failure: nothing tells which user names exist.
    assert.equal(messages.size, 1, [...messages].join(' | '));
  });

  it('rejects malformed auth requests with 400 (Keystone envelope)', async () => {
    const noDomain = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth({ name: 'admin' }, ADMIN_PASSWORD, { project: byName('admin') }) });
    assertKeystoneError(noDomain, 400);
    const noIdentity = await req({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: {} } });
    assertKeystoneError(noIdentity, 400);
    const noBody = await req({ method: 'POST', url: '/v3/auth/tokens' });
    assertKeystoneError(noBody, 400);
  });

  it('rescopes with the token method: a new token for the project, same user, life not extended', async () => {
    const unscoped = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('acme-user'), TENANT_PASSWORD) });
    assert.equal(unscoped.statusCode, 201, unscoped.body);
    const u = (unscoped.json() as TokenBody).token;
    const from = String(unscoped.headers['x-subject-token']);
    const r = await req({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['token'], token: { id: from } }, scope: { project: { id: tenant.projectId } } } } });
    assert.equal(r.statusCode, 201, r.body);
    const t = (r.json() as TokenBody).token;
    const rescoped = String(r.headers['x-subject-token']);
    assert.notEqual(rescoped, from);
    assert.equal(t.user.id, tenant.userId);
    assert.equal(t.project!.id, tenant.projectId);
    assert.deepEqual([...t.methods].sort(), ['password', 'token']);
    assert.equal(t.expires_at, u.expires_at);
    assert.ok(t.catalog!.length >= 6);
    const vols = await req({ method: 'GET', url: `/v3/${tenant.projectId}/volumes`, token: rescoped });
    assert.equal(vols.statusCode, 200, vols.body);
    // Rescoping cannot reach a project the user has no role on.
    const other = await req({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['token'], token: { id: from } }, scope: { project: { id: adminPid } } } } });
    assertKeystoneError(other, 401);
    // Nor does an unknown token rescope.
    const bogus = await req({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['token'], token: { id: 'not-a-token' } }, scope: { project: { id: tenant.projectId } } } } });
    assertKeystoneError(bogus, 401);
  });

  it('GET validates, HEAD checks, DELETE revokes; a revoked token no longer works', async () => {
    const fresh = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('acme-user'), TENANT_PASSWORD, { project: { id: tenant.projectId } }) });
    assert.equal(fresh.statusCode, 201);
    const subject = String(fresh.headers['x-subject-token']);

    const got = await req({ method: 'GET', url: '/v3/auth/tokens', token: adminToken, headers: { 'x-subject-token': subject } });
    assert.equal(got.statusCode, 200, got.body);
    assert.equal(got.headers['x-subject-token'], subject);
    const t = (got.json() as TokenBody).token;
    assert.equal(t.user.id, tenant.userId);
    assert.equal(t.project!.id, tenant.projectId);
    assert.deepEqual(t.roles!.map((x) => x.name), ['member']);
    assert.equal(t.expires_at, (fresh.json() as TokenBody).token.expires_at);

    const head = await req({ method: 'HEAD', url: '/v3/auth/tokens', token: adminToken, headers: { 'x-subject-token': subject } });
    assert.equal(head.statusCode, 200);
    assert.equal(head.body, '');

    // A user may validate their own token without the admin role.
    const own = await req({ method: 'GET', url: '/v3/auth/tokens', token: subject, headers: { 'x-subject-token': subject } });
    assert.equal(own.statusCode, 200, own.body);
    // ... but not someone else's.
    const foreign = await req({ method: 'GET', url: '/v3/auth/tokens', token: subject, headers: { 'x-subject-token': adminToken } });
    assertKeystoneError(foreign, 403);
    const foreignDel = await req({ method: 'DELETE', url: '/v3/auth/tokens', token: subject, headers: { 'x-subject-token': adminToken } });
    assertKeystoneError(foreignDel, 403);
    assert.equal((await req({ method: 'GET', url: `/v3/${adminPid}/volumes`, token: adminToken })).statusCode, 200, 'the admin token survived');

    assertKeystoneError(await req({ method: 'GET', url: '/v3/auth/tokens', token: adminToken }), 400);
    assertKeystoneError(await req({ method: 'GET', url: '/v3/auth/tokens', token: adminToken, headers: { 'x-subject-token': 'no-such-token' } }), 404);
    assertKeystoneError(await req({ method: 'GET', url: '/v3/auth/tokens', headers: { 'x-subject-token': subject } }), 401);
    assertKeystoneError(await req({ method: 'GET', url: '/v3/auth/tokens', token: 'garbage', headers: { 'x-subject-token': subject } }), 401);

    const del = await req({ method: 'DELETE', url: '/v3/auth/tokens', token: adminToken, headers: { 'x-subject-token': subject } });
    assert.equal(del.statusCode, 204, del.body);
    assert.equal(del.body, '');

    // Revoked: no API accepts it, it does not validate, it cannot be rescoped or revoked again.
    const use = await req({ method: 'GET', url: `/v3/${tenant.projectId}/volumes`, token: subject });
    assert.equal(use.statusCode, 401, use.body);
    const vbs = await req({ method: 'GET', url: `/v2/${tenant.projectId}/cloudbackups/quota`, token: subject });
    assert.equal(vbs.statusCode, 401, vbs.body);
    assertKeystoneError(await req({ method: 'GET', url: '/v3/auth/tokens', token: adminToken, headers: { 'x-subject-token': subject } }), 404);
    assert.equal((await req({ method: 'HEAD', url: '/v3/auth/tokens', token: adminToken, headers: { 'x-subject-token': subject } })).statusCode, 404);
    assertKeystoneError(await req({ method: 'DELETE', url: '/v3/auth/tokens', token: adminToken, headers: { 'x-subject-token': subject } }), 404);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['token'], token: { id: subject } } } } }), 401);
    // Revoking one token leaves the user's others alone.
    assert.equal((await req({ method: 'GET', url: `/v3/${tenant.projectId}/volumes`, token: tenant.token })).statusCode, 200);
    // A user can revoke their own token.
    const mine = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('acme-user'), TENANT_PASSWORD, { project: { id: tenant.projectId } }) });
    const mineToken = String(mine.headers['x-subject-token']);
    assert.equal((await req({ method: 'DELETE', url: '/v3/auth/tokens', token: mineToken, headers: { 'x-subject-token': mineToken } })).statusCode, 204);
    assert.equal((await req({ method: 'GET', url: `/v3/${tenant.projectId}/volumes`, token: mineToken })).statusCode, 401);
  });

  it('an admin creates a project and a user, grants member, and the new user logs in', async () => {
    const p = await req({ method: 'POST', url: '/v3/projects', token: adminToken, payload: { project: { name: 'newco', description: 'a new tenant' } } });
    assert.equal(p.statusCode, 201, p.body);
    const project = (p.json() as { project: { id: string; name: string; domain_id: string; enabled: boolean; description: string } }).project;
    assert.match(project.id, /^[0-9a-f]{32}$/);
    assert.equal(project.name, 'newco');
    assert.equal(project.domain_id, 'default');
    assert.equal(project.enabled, true);
    assert.equal(project.description, 'a new tenant');
    assert.ok(await svc.app.catalog.identity.getProject(project.id), 'project in the catalog');
    assertKeystoneError(await req({ method: 'POST', url: '/v3/projects', token: adminToken, payload: { project: { name: 'newco' } } }), 409);

    const u = await req({ method: 'POST', url: '/v3/users', token: adminToken, payload: { user: { name: 'newco-alice', password: NEW_USER_PASSWORD, default_project_id: project.id } } });
    assert.equal(u.statusCode, 201, u.body);
    const user = (u.json() as { user: Record<string, unknown> }).user;
    assert.match(String(user.id), /^[0-9a-f]{32}$/);
    assert.equal(user.name, 'newco-alice');
    assert.equal(user.default_project_id, project.id);
    assert.equal(user.enabled, true);
    assert.equal(user.password, undefined);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/users', token: adminToken, payload: { user: { name: 'newco-alice', password: 'whatever-else' } } }), 409);

    // No role yet: the login is refused.
    assertKeystoneError(await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('newco-alice'), NEW_USER_PASSWORD, { project: byName('newco') }) }), 401);

    const grant = await req({ method: 'PUT', url: `/v3/projects/${project.id}/users/${String(user.id)}/roles/member`, token: adminToken });
    assert.equal(grant.statusCode, 204, grant.body);
    assert.equal(grant.body, '');
    assert.equal((await req({ method: 'HEAD', url: `/v3/projects/${project.id}/users/${String(user.id)}/roles/member`, token: adminToken })).statusCode, 204);
    assert.equal((await req({ method: 'HEAD', url: `/v3/projects/${project.id}/users/${String(user.id)}/roles/admin`, token: adminToken })).statusCode, 404);
    const roles = await req({ method: 'GET', url: `/v3/projects/${project.id}/users/${String(user.id)}/roles`, token: adminToken });
    assert.deepEqual((roles.json() as { roles: { name: string }[] }).roles.map((r) => r.name), ['member']);
    assertKeystoneError(await req({ method: 'PUT', url: `/v3/projects/${project.id}/users/${String(user.id)}/roles/superuser`, token: adminToken }), 404);
    assertKeystoneError(await req({ method: 'PUT', url: `/v3/projects/0123456789abcdef0123456789abcdef/users/${String(user.id)}/roles/member`, token: adminToken }), 404);

    const login = await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('newco-alice'), NEW_USER_PASSWORD, { project: byName('newco') }) });
    assert.equal(login.statusCode, 201, login.body);
    const lt = (login.json() as TokenBody).token;
    assert.equal(lt.project!.id, project.id);
    assert.equal(lt.user.id, user.id);
    assert.deepEqual(lt.roles!.map((r) => r.name), ['member']);
    const aliceToken = String(login.headers['x-subject-token']);
    const vols = await req({ method: 'GET', url: `/v3/${project.id}/volumes`, token: aliceToken });
    assert.equal(vols.statusCode, 200, vols.body);
    // The new user is a member, not an admin.
    assertKeystoneError(await req({ method: 'GET', url: '/v3/users', token: aliceToken }), 403);

    // The admin lists find them; user listings carry no password material.
    const projects = await req({ method: 'GET', url: '/v3/projects', token: adminToken });
    assert.ok((projects.json() as { projects: { name: string }[] }).projects.some((x) => x.name === 'newco'));
    const users = await req({ method: 'GET', url: '/v3/users', token: adminToken });
    const listed = (users.json() as { users: Record<string, unknown>[] }).users;
    assert.ok(listed.some((x) => x.name === 'newco-alice'));
    for (const x of listed) for (const k of Object.keys(x)) assert.ok(k === 'password_expires_at' || !/password|hash/i.test(k), `user field ${k}`);
    const one = await req({ method: 'GET', url: `/v3/users/${String(user.id)}`, token: adminToken });
    assert.equal(one.statusCode, 200);
    assert.equal((one.json() as { user: { name: string } }).user.name, 'newco-alice');

    // Revoking the role ends new logins to the project.
    assert.equal((await req({ method: 'DELETE', url: `/v3/projects/${project.id}/users/${String(user.id)}/roles/member`, token: adminToken })).statusCode, 204);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('newco-alice'), NEW_USER_PASSWORD, { project: byName('newco') }) }), 401);
  });

  it('disabled users and projects cannot get tokens; role ids work like role names; /v3/auth/projects lists only the user\'s', async () => {
    const p = await req({ method: 'POST', url: '/v3/projects', token: adminToken, payload: { project: { name: 'dormant', enabled: false } } });
    assert.equal(p.statusCode, 201, p.body);
    const dormant = (p.json() as { project: { id: string; enabled: boolean } }).project;
    assert.equal(dormant.enabled, false);
    const u = await req({ method: 'POST', url: '/v3/users', token: adminToken, payload: { user: { name: 'sleepy', password: NEW_USER_PASSWORD, enabled: false } } });
    assert.equal(u.statusCode, 201, u.body);
    const sleepy = (u.json() as { user: { id: string; enabled: boolean } }).user;
    assert.equal(sleepy.enabled, false);
    // Grant by role id ("role-member"), as openstackclient sends it after looking the role up.
    const roles = (await req({ method: 'GET', url: '/v3/roles', token: adminToken })).json() as { roles: { id: string; name: string }[] };
    const memberRole = roles.roles.find((r) => r.name === 'member')!;
    assert.equal((await req({ method: 'PUT', url: `/v3/projects/${dormant.id}/users/${sleepy.id}/roles/${memberRole.id}`, token: adminToken })).statusCode, 204);
    assert.equal((await req({ method: 'PUT', url: `/v3/projects/${tenant.projectId}/users/${sleepy.id}/roles/${memberRole.id}`, token: adminToken })).statusCode, 204);
    assert.deepEqual(await svc.app.catalog.identity.rolesOf(tenant.projectId, sleepy.id), ['member']);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('sleepy'), NEW_USER_PASSWORD, { project: { id: tenant.projectId } }) }), 401);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('sleepy'), NEW_USER_PASSWORD) }), 401);
    // An enabled member of a disabled project cannot scope to it.
    assert.equal((await req({ method: 'PUT', url: `/v3/projects/${dormant.id}/users/${tenant.userId}/roles/member`, token: adminToken })).statusCode, 204);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/auth/tokens', payload: passwordAuth(byName('acme-user'), TENANT_PASSWORD, { project: { id: dormant.id } }) }), 401);
    // The user's own project list: acme and dormant, nothing else.
    const mine = (await req({ method: 'GET', url: '/v3/auth/projects', token: tenant.token })).json() as { projects: { name: string }[] };
    assert.deepEqual(mine.projects.map((x) => x.name).sort(), ['acme', 'dormant']);
    assert.equal((await req({ method: 'DELETE', url: `/v3/projects/${dormant.id}/users/${tenant.userId}/roles/member`, token: adminToken })).statusCode, 204);
    // A default project that does not exist is refused.
    assertKeystoneError(await req({ method: 'POST', url: '/v3/users', token: adminToken, payload: { user: { name: 'orphan', password: 'orphan-pass-1', default_project_id: '0123456789abcdef0123456789abcdef' } } }), 404);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/users', token: adminToken, payload: { user: { name: 'nopass' } } }), 400);
    assertKeystoneError(await req({ method: 'POST', url: '/v3/projects', token: adminToken, payload: { project: { name: '' } } }), 400);
  });

  it('a non-admin gets 403 on every admin call, and nothing is created', async () => {
    const projectsBefore = (await svc.app.catalog.identity.listProjects()).length;
    const usersBefore = (await svc.app.catalog.identity.listUsers()).length;
    const t = tenant.token;
    const calls: InjectOptions[] = [
      { method: 'POST', url: '/v3/projects', payload: { project: { name: 'sneaky' } } },
      { method: 'GET', url: '/v3/projects' },
      { method: 'POST', url: '/v3/users', payload: { user: { name: 'sneaky', password: 'sneaky-pass' } } },
      { method: 'GET', url: '/v3/users' },
      { method: 'GET', url: `/v3/users/${adminUserId}` },
      { method: 'PUT', url: `/v3/projects/${tenant.projectId}/users/${tenant.userId}/roles/admin` },
      { method: 'PUT', url: `/v3/projects/${adminPid}/users/${tenant.userId}/roles/member` },
      { method: 'DELETE', url: `/v3/projects/${adminPid}/users/${adminUserId}/roles/admin` },
      { method: 'GET', url: `/v3/projects/${adminPid}/users/${adminUserId}/roles` },
      { method: 'GET', url: `/v3/projects/${adminPid}` },
    ];
    for (const c of calls) assertKeystoneError(await req({ ...c, token: t }), 403);
    assert.equal((await svc.app.catalog.identity.listProjects()).length, projectsBefore);
    assert.equal((await svc.app.catalog.identity.listUsers()).length, usersBefore);
    assert.deepEqual(await svc.app.catalog.identity.rolesOf(tenant.projectId, tenant.userId), ['member']);
    assert.deepEqual(await svc.app.catalog.identity.rolesOf(adminPid, tenant.userId), []);
    assert.ok((await svc.app.catalog.identity.rolesOf(adminPid, adminUserId)).includes('admin'));
    // Its own project is visible to it.
    assert.equal((await req({ method: 'GET', url: `/v3/projects/${tenant.projectId}`, token: t })).statusCode, 200);
    // Without a token, the admin calls are 401.
    for (const c of calls) assertKeystoneError(await req(c), 401);
  });

  it('no response body or header contains a password', async () => {
    assert.ok(seen.length > 50, `only ${seen.length} responses recorded`);
    const secrets = [ADMIN_PASSWORD, TENANT_PASSWORD, NEW_USER_PASSWORD, WRONG_PASSWORD, 'sneaky-pass', 'whatever-else', 'orphan-pass-1'];
    for (const r of seen) {
      assertNoStack(r);
      const text = `${JSON.stringify(r.headers)}\n${r.body}`;
      for (const s of secrets) assert.ok(!text.includes(s), `a response contains the password ${s}: ${r.body.slice(0, 300)}`);
      assert.doesNotMatch(text, /scrypt\$|password_hash/, 'a response contains a password hash');
    }
  });

  it('a malformed auth body is not echoed back with the password in it', async () => {
    const secret = 'Lk-9x7q'; // V8 quotes about ten characters after the error position: a short password is quoted whole
    const r = await req({
      method: 'POST', url: '/v3/auth/tokens', headers: { 'content-type': 'application/json' },
      payload: `{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":${secret}}}}}}`,
    });
    assertKeystoneError(r, 400);
    assert.ok(!r.body.includes(secret), `400 body echoes the password: ${r.body}`);
  });
});
