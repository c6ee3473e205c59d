/**
 * The cross-cutting HTTP rules (api/server.ts): 404 for unknown routes, 405 with Allow for a known
 * route and another method, 413 above the body limit, 400 for invalid JSON, 415 for non-JSON
 * bodies, empty JSON bodies accepted where no body is needed; every 4xx in the envelope of its API
 * family, no stack trace ever (a 500 included); and the operational endpoints: version discovery,
 * /healthz, /metrics and /openapi.json.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { HTTPMethods, InjectOptions, LightMyRequestResponse } from 'fastify';
import type { ObjectInfo } from '../../src/storage/object-store.ts';
import { DelegatingStore } from '../helpers/delegating-store.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';
import { assertCinderError, assertKeystoneError, assertNoStack, assertVbsError, createVolume, jobCount } from '../helpers/api.ts';

const BODY_LIMIT = 2048;

/** Delegates to a store; listing fails while `failLists` is set (a broken repository). */
class FlakyListStore extends DelegatingStore {
  failLists = false;
  override async *list(prefix: string): AsyncIterable<ObjectInfo> {
    if (this.failLists) throw new Error('simulated storage failure: /secret/internal/path is unreadable');
    yield* this.inner.list(prefix);
  }
}

type Family = 'keystone' | 'vbs' | 'cinder';
/** The API family a path belongs to (vbs.md §1.4). */
function familyOf(url: string): Family {
  const p = url.split('?')[0]!;
  if (/^\/v3\/(auth|projects|users|roles|domains)(\/|$)/.test(p)) return 'keystone';
  if (/^\/v1\//.test(p) || /^\/v2\/[^/]+\/(backuppolicy|backuppolicyresources|cloudbackups|os-vendor-backup-sharing|jobs)(\/|$)/.test(p)) return 'vbs';
  return 'cinder';
}

function assertEnvelope(url: string, r: LightMyRequestResponse): void {
  switch (familyOf(url)) {
    case 'keystone':
      assertKeystoneError(r, r.statusCode);
      break;
    case 'vbs':
      assertVbsError(r, r.statusCode);
      break;
    case 'cinder':
      assertCinderError(r, r.statusCode);
      break;
  }
}

describe('HTTP errors and operational endpoints', () => {
  const temp = new TempDirs('haven-errors-');
  let svc: TestService;
  let store: FlakyListStore | undefined;
  let token: string;
  let pid: string;
  const seen: { method: string; url: string; r: LightMyRequestResponse }[] = [];
  const req = async (o: InjectOptions & { token?: string }) => {
    const r = await svc.req(o);
    seen.push({ method: String(o.method ?? 'GET'), url: String(o.url), r });
    return r;
  };
  const json = { 'content-type': 'application/json' };

  before(async () => {
    svc = await startService(temp, { bodyLimitBytes: BODY_LIMIT }, { wrapStore: (s) => (store = new FlakyListStore(s)) });
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  it('unknown routes are 404 in the envelope of the path\'s family', async () => {
    const cases: [string, Family][] = [
      ['/nope', 'cinder'],
      ['/v3/nope', 'cinder'],
      [`/v2/${pid}/not-a-resource`, 'cinder'],
      [`/v3/${pid}/volumes/x/y/z`, 'cinder'],
      [`/v2/${pid}/cloudbackups/a/b/c/d`, 'vbs'],
      [`/v1/${pid}/nothing`, 'vbs'],
      [`/v2/${pid}/backuppolicy/a/b/c/d/e`, 'vbs'],
      ['/v3/auth/nothing', 'keystone'],
      ['/v3/users/a/b/c', 'keystone'],
    ];
    for (const [url, family] of cases) {
      const r = await req({ method: 'GET', url, token });
      assert.equal(r.statusCode, 404, `${url}: ${r.body}`);
      assert.equal(familyOf(url), family);
      assertEnvelope(url, r);
    }
    // No token needed to learn that a route does not exist, and none is leaked either.
    assertCinderError(await req({ method: 'GET', url: '/nope' }), 404);
  });

  it('a known route with another method is 405 with an Allow header that lists working methods', async () => {
    const cases: { method: HTTPMethods; url: string; allow: string[] }[] = [
      { method: 'PUT', url: `/v2/${pid}/cloudbackups`, allow: ['POST'] },
      { method: 'PATCH', url: `/v3/${pid}/volumes`, allow: ['GET', 'POST'] },
      { method: 'PUT', url: `/v2/${pid}/backups/detail`, allow: ['GET'] },
      { method: 'PATCH', url: '/v3/auth/tokens', allow: ['DELETE', 'GET', 'POST'] },
      { method: 'DELETE', url: '/', allow: ['GET'] },
      { method: 'POST', url: '/healthz', allow: ['GET'] },
      { method: 'POST', url: `/v1/${pid}/jobs/abc`, allow: ['GET'] },
      { method: 'PUT', url: `/v2/${pid}/cloudbackups/quota`, allow: ['GET'] },
    ];
    for (const c of cases) {
      const r = await req({ method: c.method, url: c.url, token });
      assert.equal(r.statusCode, 405, `${c.method} ${c.url}: ${r.body}`);
      const allow = String(r.headers.allow ?? '').split(',').map((s) => s.trim()).filter(Boolean);
      for (const m of c.allow) assert.ok(allow.includes(m), `${c.url}: Allow "${allow.join(', ')}" lacks ${m}`);
      assert.ok(!allow.includes(String(c.method)), `${c.url}: Allow lists the refused method`);
      assertEnvelope(c.url, r);
      // Every method the header names is routed (a GET may still fail for other reasons, but not 404/405).
      for (const m of allow) {
        const ok = await req({ method: m as HTTPMethods, url: c.url, token, ...(m === 'POST' || m === 'PUT' ? { payload: {} } : {}) });
        assert.ok(ok.statusCode !== 405 && !(ok.statusCode === 404 && /could not be found: /.test(ok.body)), `${m} ${c.url} is advertised but answers ${ok.statusCode} ${ok.body}`);
      }
    }
  });

  it('a body larger than the limit is 413 in the family\'s envelope, and nothing is created', async () => {
    const volumes = await svc.app.catalog.volumes.countVolumes(pid);
    const backups = await svc.app.catalog.backups.countBackups(pid, {});
    const jobs = await jobCount(svc);
    const big = 'x'.repeat(BODY_LIMIT + 100);
    const cases: InjectOptions[] = [
      { method: 'POST', url: `/v3/${pid}/volumes`, payload: { volume: { size: 1, description: big } } },
      { method: 'POST', url: `/v2/${pid}/cloudbackups`, payload: { backup: { volume_id: '7d8e8e0a-0000-4000-8000-000000000001', name: 'b', description: big } } },
      { method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['password'], password: { user: { name: big, domain: { name: 'Default' }, password: 'x' } } } } } },
      { method: 'POST', url: `/v3/${pid}/volumes`, headers: json, payload: big },
    ];
    for (const c of cases) {
      const r = await req({ ...c, token });
      assert.equal(r.statusCode, 413, `${c.url}: ${r.body}`);
      assertEnvelope(String(c.url), r);
    }
    const overLimit = (seen.at(-4)!.r.json() as { overLimit?: { code: number } }).overLimit;
    assert.equal(overLimit?.code, 413);
    // Just under the limit is fine.
    const meta: Record<string, string> = {};
    for (let i = 0; i < 8; i++) meta[`k${i}`] = 'v'.repeat(200);
    const payload = JSON.stringify({ volume: { size: 1, name: 'under-limit', metadata: meta } });
    assert.ok(payload.length < BODY_LIMIT && payload.length > BODY_LIMIT - 400, String(payload.length));
    const ok = await req({ method: 'POST', url: `/v3/${pid}/volumes`, token, headers: json, payload });
    assert.equal(ok.statusCode, 202, ok.body);
    assert.equal(await svc.app.catalog.volumes.countVolumes(pid), volumes + 1);
    assert.equal(await svc.app.catalog.backups.countBackups(pid, {}), backups);
    assert.equal(await jobCount(svc), jobs);
  });

  it('invalid JSON is 400 and a non-JSON body is 415, each in its family\'s envelope', async () => {
    for (const url of [`/v3/${pid}/volumes`, `/v2/${pid}/cloudbackups`, '/v3/auth/tokens', `/v2/${pid}/backuppolicy`, `/v3/${pid}/backups`]) {
      for (const payload of ['{"volume": ', '{bad json}', 'null x', '[1,2,']) {
        const r = await req({ method: 'POST', url, token, headers: json, payload });
        assert.equal(r.statusCode, 400, `${url} ${payload}: ${r.body}`);
        assertEnvelope(url, r);
      }
      const text = await req({ method: 'POST', url, token, headers: { 'content-type': 'text/plain' }, payload: 'hello' });
      assert.equal(text.statusCode, 415, `${url}: ${text.body}`);
      assertEnvelope(url, text);
    }
    const code = (await req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, headers: json, payload: '{x' })).json() as { error: { code: string } };
    assert.equal(code.error.code, 'VolumeBackup.0002');
  });

  it('an empty body with Content-Type application/json is accepted where no body is needed', async () => {
    // Native delete of a volume: 202.
    const v = await createVolume(svc, token, pid, { name: 'to-delete' });
    for (const payload of ['', '   \n']) {
      const r = await req({ method: 'GET', url: `/v3/${pid}/volumes/${v.id}`, token, headers: json, payload });
      assert.equal(r.statusCode, 200, r.body);
    }
    const del = await req({ method: 'DELETE', url: `/v3/${pid}/volumes/${v.id}`, token, headers: json, payload: '' });
    assert.equal(del.statusCode, 202, del.body);
    assert.equal(await svc.app.catalog.volumes.getVolumeById(v.id), undefined);
    // B2 (delete, no body): the answer is about the backup, not the body.
    const b2 = await req({ method: 'POST', url: `/v2/${pid}/cloudbackups/7d8e8e0a-0000-4000-8000-000000000002`, token, headers: json, payload: '' });
    assertVbsError(b2, 404, 'VolumeBackup.0110');
    // P7 (execute a policy now, no body): 204.
    const p = await req({ method: 'POST', url: `/v2/${pid}/backuppolicy`, token, payload: { backup_policy_name: 'empty-body', scheduled_policy: { start_time: '12:00', frequency: 1, rentention_num: 2, remain_first_backup_of_curMonth: 'N', status: 'ON' } } });
    assert.equal(p.statusCode, 200, p.body);
    const policyId = (p.json() as { backup_policy_id: string }).backup_policy_id;
    const exec = await req({ method: 'POST', url: `/v2/${pid}/backuppolicy/${policyId}/action`, token, headers: json, payload: '' });
    assert.equal(exec.statusCode, 204, exec.body);
    // Token revocation (no body).
    const other = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const rev = await req({ method: 'DELETE', url: '/v3/auth/tokens', token, headers: { ...json, 'x-subject-token': other.token }, payload: '' });
    assert.equal(rev.statusCode, 204, rev.body);
    // But an endpoint that needs a body says so (400), rather than failing on the empty body.
    const need = await req({ method: 'POST', url: `/v3/${pid}/volumes`, token, headers: json, payload: '' });
    assertCinderError(need, 400);
    const needVbs = await req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, headers: json, payload: '' });
    assertVbsError(needVbs, 400, 'VolumeBackup.0002');
  });

  it('VBS errors carry VolumeBackup/AutoBackup/common codes', async () => {
    assertVbsError(await req({ method: 'POST', url: `/v2/${pid}/backuppolicy`, token, payload: {} }), 400);
    const unknownPolicy = await req({ method: 'DELETE', url: `/v2/${pid}/backuppolicy/7d8e8e0a-0000-4000-8000-000000000003`, token });
    assert.match(assertVbsError(unknownPolicy, 404), /./);
    assert.match(String((unknownPolicy.json() as { error: { code: string } }).error.code), /^AutoBackup\./);
    assertVbsError(await req({ method: 'GET', url: `/v1/${pid}/jobs/nope`, token }), 404, 'common.0011');
    assertVbsError(await req({ method: 'POST', url: `/v2/${pid}/os-vendor-backup-sharing`, token, payload: { shared: { backup_id: '7d8e8e0a-0000-4000-8000-000000000004', to_project_ids: ['x'] } } }), 404);
    assertVbsError(await req({ method: 'GET', url: `/v2/${pid}/cloudbackups/quota` }), 401);
  });

  it('a server error is a generic 500: no stack trace, no internal detail', async () => {
    assert.ok(store, 'the store wrapper is in place');
    store.failLists = true;
    try {
      const r = await req({ method: 'GET', url: '/metrics', token }); // a cloud-admin token
      assert.equal(r.statusCode, 500, r.body.slice(0, 300));
      assert.match(String(r.headers['content-type']), /^application\/json/);
      assertNoStack(r);
      assert.ok(!r.body.includes('secret') && !r.body.includes('simulated'), r.body);
      const body = r.json() as Record<string, { code: number; message: string }>;
      assert.equal(Object.values(body)[0]!.code, 500);
    } finally {
      store.failLists = false;
    }
  });

  it('every 4xx so far was JSON in its family\'s envelope, and no response carried a stack trace', () => {
    const errors = seen.filter((s) => s.r.statusCode >= 400 && s.r.statusCode < 500 && s.method !== 'HEAD');
    assert.ok(errors.length >= 50, `only ${errors.length} error responses`);
    for (const s of errors) assertEnvelope(s.url, s.r);
    for (const s of seen) {
      assertNoStack(s.r);
      assert.ok(!s.r.body.includes('node_modules') && !s.r.body.includes('/src/'), `${s.method} ${s.url} leaks a source path: ${s.r.body.slice(0, 300)}`);
    }
  });

  it('GET / is 300 with the v2 and v3 versions; /v2 and /v3 describe one each', async () => {
    const r = await req({ method: 'GET', url: '/' });
    assert.equal(r.statusCode, 300, r.body);
    const versions = (r.json() as { versions: { id: string; status: string; version: string; min_version: string; links: { rel: string; href: string }[]; 'media-types': unknown[] }[] }).versions;
    assert.deepEqual(versions.map((v) => v.id).sort(), ['v2.0', 'v3.0']);
    const v3 = versions.find((v) => v.id === 'v3.0')!;
    assert.equal(v3.status, 'CURRENT');
    assert.match(v3.version, /^3\.\d+$/);
    assert.ok(Number(v3.version.split('.')[1]) >= 45, 'with_count needs microversion 3.45');
    assert.equal(versions.find((v) => v.id === 'v2.0')!.status, 'SUPPORTED');
    for (const v of versions) {
      const self = v.links.find((l) => l.rel === 'self')!.href;
      assert.match(self, new RegExp(`^https?://[^/]+/${v.id.slice(0, 2)}/?$`));
      assert.ok(v['media-types'].length > 0);
    }
    for (const [url, id] of [['/v2', 'v2.0'], ['/v3', 'v3.0'], ['/v3/', 'v3.0']]) {
      const one = await req({ method: 'GET', url: url! });
      assert.equal(one.statusCode, 200, one.body);
      assert.deepEqual((one.json() as { versions: { id: string }[] }).versions.map((v) => v.id), [id]);
    }
  });

  it('GET /healthz is 200 and reports its parts', async () => {
    const r = await req({ method: 'GET', url: '/healthz' });
    assert.equal(r.statusCode, 200, r.body);
    assert.deepEqual(r.json(), { status: 'ok', catalog: 'ok', dataFolder: 'ok', repository: 'ok', jobRunner: 'ok' });
  });

  it('GET /metrics is Prometheus text with haven_http_requests_total', async () => {
    const r = await req({ method: 'GET', url: '/metrics', token }); // a cloud-admin token
    assert.equal(r.statusCode, 200, r.body.slice(0, 300));
    assert.match(String(r.headers['content-type']), /^text\/plain/);
    assert.match(r.body, /^# TYPE haven_http_requests_total counter$/m);
    assert.match(r.body, /^haven_http_requests_total\{method="GET",route="\/healthz",status="200"\} [1-9]\d*$/m);
    assert.match(r.body, /^haven_http_requests_total\{[^}]*status="405"[^}]*\} [1-9]\d*$/m);
    assert.match(r.body, /^haven_http_requests_total\{[^}]*status="413"[^}]*\} [1-9]\d*$/m);
    assert.match(r.body, /^haven_repository_bytes \d+/m);
  });

  it('GET /openapi.json is an OpenAPI 3 document listing the VBS, Cinder and Keystone paths', async () => {
    const r = await req({ method: 'GET', url: '/openapi.json' });
    assert.equal(r.statusCode, 200);
    const doc = r.json() as { openapi: string; info: { title: string }; paths: Record<string, Record<string, unknown>> };
    assert.match(doc.openapi, /^3\.\d+\.\d+$/);
    assert.equal(typeof doc.info.title, 'string');
    assert.ok(doc.paths['/v2/{projectId}/cloudbackups']?.post, 'B1 is listed');
    assert.ok(doc.paths['/v2/{projectId}/cloudbackups/{backupId}/restore']?.post, 'B3 is listed');
    assert.ok(doc.paths['/v1/{projectId}/jobs/{jobId}']?.get, 'J1 is listed');
    assert.ok(doc.paths['/v3/{projectId}/backups/detail']?.get, 'N3 is listed');
    assert.ok(doc.paths['/v3/auth/tokens']?.post, 'tokens are listed');
    assert.ok(!Object.keys(doc.paths).some((p) => p.includes(':')), 'paths use {param}, not :param');
  });
});
