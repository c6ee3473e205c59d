/**
 * Test helpers for the HTTP service: a full Haven (catalog, engine, job runner) on a temp data
 * folder, requests through fastify's inject() (no sockets), tokens, and job polling.
 */
import assert from 'node:assert/strict';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import { composeApp, type App, type ComposeOptions } from '../../src/app/compose.ts';
import { loadConfig, type Config } from '../../src/config/config.ts';
import { TempDirs } from './volumes.ts';
import { ResponseChecker } from './response-check.ts';

export const ADMIN_PASSWORD = 'admin-test-password';

export interface TestService {
  app: App;
  dataDir: string;
  /** A project-scoped token and its project id. */
  login(user: string, password: string, project: string): Promise<{ token: string; projectId: string; userId: string }>;
  req(opts: InjectOptions & { token?: string }): Promise<LightMyRequestResponse>;
  /** Polls GET /v1/{pid}/jobs/{id} until SUCCESS or FAIL. */
  waitJob(token: string, projectId: string, jobId: string): Promise<Record<string, unknown>>;
  /** Polls a native backup until it leaves `creating`/`deleting`/`restoring` (or is gone: null). */
  waitBackup(token: string, projectId: string, backupId: string): Promise<Record<string, unknown> | null>;
  /** POST /v2/{pid}/volumes (asserting 202); the new volume as returned. */
  createVolume(who: { token: string; projectId: string }, name: string, sizeGb?: number): Promise<{ id: string; status: string }>;
  /** POST /v3/{pid}/os-volume-manage of `file` (asserting 202); the adopted volume as returned. */
  adopt(who: { token: string; projectId: string }, file: string, name: string): Promise<{ id: string; size: number; status: string }>;
  /** Where a volume's image lives (from the catalog). */
  volumePath(volumeId: string): Promise<string>;
  /** A new project with a member user; returns its token. */
  tenant(name: string): Promise<{ token: string; projectId: string; userId: string }>;
  restart(overrides?: Partial<Config>, opts?: ComposeOptions): Promise<void>;
  close(): Promise<void>;
}

export async function startService(temp: TempDirs, overrides: Partial<Config> = {}, opts: ComposeOptions = {}): Promise<TestService> {
  const dataDir = temp.make('svc');
  const config = (): Config => loadConfig({}, { dataDir, adminPassword: ADMIN_PASSWORD, jobConcurrency: 2, nbdListen: '127.0.0.1:0', ...overrides });
  let app = await composeApp(config(), { threads: 2, ...opts });
  // Every answer is checked against the response schema its route documents (OpenAPI).
  let checker: ResponseChecker | null = null;
  const req = async (o: InjectOptions & { token?: string }): Promise<LightMyRequestResponse> => {
    const { token, ...rest } = o;
    const headers = { ...(o.headers ?? {}), ...(token ? { 'x-auth-token': token } : {}) };
    const r = await app.server.inject({ ...rest, headers });
    checker ??= new ResponseChecker((app.server as unknown as { responseSchemas: Map<string, Record<string, unknown>> }).responseSchemas);
    checker.check(String(o.method ?? 'GET').toUpperCase(), String(o.url), r.statusCode, String(r.headers['content-type'] ?? ''), r.body);
    return r;
  };
  const login: TestService['login'] = async (user, password, project) => {
    const r = await req({
      method: 'POST', url: '/v3/auth/tokens',
      payload: { auth: { identity: { methods: ['password'], password: { user: { name: user, domain: { name: 'Default' }, password } } }, scope: { project: { name: project, domain: { name: 'Default' } } } } },
    });
    assert.equal(r.statusCode, 201, r.body);
    const body = r.json() as { token: { project: { id: string }; user: { id: string } } };
    return { token: String(r.headers['x-subject-token']), projectId: body.token.project.id, userId: body.token.user.id };
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const svc: TestService = {
    get app() {
      return app;
    },
    dataDir,
    login,
    req,
    async waitJob(token, projectId, jobId) {
      for (let i = 0; i < 1200; i++) {
        const r = await req({ method: 'GET', url: `/v1/${projectId}/jobs/${jobId}`, token });
        assert.equal(r.statusCode, 200, r.body);
        const j = r.json() as Record<string, unknown>;
        if (j.status === 'SUCCESS' || j.status === 'FAIL') return j;
        await sleep(25);
      }
      throw new Error(`job ${jobId} did not finish`);
    },
    async waitBackup(token, projectId, backupId) {
      for (let i = 0; i < 1200; i++) {
        const r = await req({ method: 'GET', url: `/v3/${projectId}/backups/${backupId}`, token });
        if (r.statusCode === 404) return null;
        assert.equal(r.statusCode, 200, r.body);
        const b = (r.json() as { backup: Record<string, unknown> }).backup;
        if (!['creating', 'deleting', 'restoring'].includes(String(b.status))) return b;
        await sleep(25);
      }
      throw new Error(`backup ${backupId} stayed busy`);
    },
    async createVolume(who, name, sizeGb = 1) {
      const r = await req({ method: 'POST', url: `/v2/${who.projectId}/volumes`, token: who.token, payload: { volume: { size: sizeGb, name } } });
      assert.equal(r.statusCode, 202, r.body);
      return (r.json() as { volume: { id: string; status: string } }).volume;
    },
    async adopt(who, file, name) {
      const r = await req({ method: 'POST', url: `/v3/${who.projectId}/os-volume-manage`, token: who.token, payload: { volume: { ref: { 'source-name': file }, name } } });
      assert.equal(r.statusCode, 202, r.body);
      return (r.json() as { volume: { id: string; size: number; status: string } }).volume;
    },
    async volumePath(volumeId) {
      return (await app.catalog.volumes.getVolumeById(volumeId))!.path;
    },
    async tenant(name) {
      const p = await app.identity.createProject({ name });
      const u = await app.identity.createUser({ name: `${name}-user`, password: 'tenant-password', defaultProjectId: p.id });
      await app.identity.grantRole(p.id, u.id, 'member');
      return login(`${name}-user`, 'tenant-password', name);
    },
    async restart(o = {}, copts = {}) {
      await app.close();
      app = await composeApp(loadConfig({}, { dataDir, adminPassword: ADMIN_PASSWORD, jobConcurrency: 2, nbdListen: '127.0.0.1:0', ...overrides, ...o }), { threads: 2, ...opts, ...copts });
    },
    async close() {
      await app.close();
    },
  };
  return svc;
}
