/**
 * The same service on a PostgreSQL catalog (the scale-out mode): migrations apply, a backup and a
 * restore through the HTTP API are bit-identical, policies work, two Haven instances sharing the
 * catalog fire each scheduled slot once, and a job orphaned by a dead process is recovered by the
 * heartbeat rule (not by start-up, as other processes may be alive).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { composeApp, type App } from '../../src/app/compose.ts';
import { loadConfig } from '../../src/config/config.ts';
import { ErrorCode } from '../../src/domain/errors.ts';
import { freshDatabase } from '../helpers/postgres.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';

describe('PostgreSQL catalog', async () => {
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : false;
  const temp = new TempDirs('haven-pg-');
  let svc: TestService;
  before(async () => {
    if ('skip' in db) return;
    svc = await startService(temp, { catalogUrl: db.url });
  });
  after(async () => {
    if ('skip' in db) return;
    await svc.close();
    await db.drop();
    temp.cleanup();
  });

  it('backs up and restores bit-identical through the API', { skip }, async () => {
    const { token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const mk = async (name: string) => ((await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, name } } })).json() as { volume: { id: string } }).volume.id;
    const src = await mk('src');
    const file = (await svc.app.catalog.volumes.getVolumeById(src))!.path;
    await overwrite(file, 0, randomBytesSeeded(3 * MiB, 5));
    const want = await sha256File(file);
    const b = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: src, name: 'pg1' } } });
    const job = await svc.waitJob(token, pid, (b.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    const backupId = (job.entities as { backup_id: string }).backup_id;
    const list = (await svc.req({ method: 'GET', url: `/v3/${pid}/backups/detail?with_count=true`, token })).json() as { count: number; backups: { id: string; status: string }[] };
    assert.equal(list.count, 1);
    assert.equal(list.backups[0]!.status, 'available');
    const dst = await mk('dst');
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: dst } } });
    assert.equal((await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id)).status, 'SUCCESS');
    assert.equal(await sha256File((await svc.app.catalog.volumes.getVolumeById(dst))!.path), want);
  });

  it('keeps policies, tags and their validation as on SQLite', { skip }, async () => {
    const { token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const created = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicy`, token, payload: { backup_policy_name: 'pg_policy', scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 3, status: 'ON' }, tags: [{ key: 'k', value: 'v' }] } });
    assert.equal(created.statusCode, 200, created.body);
    const bad = await svc.req({ method: 'POST', url: `/v2/${pid}/backuppolicy`, token, payload: { backup_policy_name: 'x', scheduled_policy: { start_time: '02:30', frequency: 1, rentention_num: 3, status: 'ON' } } });
    assert.equal((bad.json() as { error: { code: string } }).error.code, 'AutoBackup.0103');
    const list = (await svc.req({ method: 'GET', url: `/v2/${pid}/backuppolicy`, token })).json() as { backup_policies: { backup_policy_name: string }[] };
    assert.deepEqual(list.backup_policies.map((p) => p.backup_policy_name), ['pg_policy']);
    const tags = (await svc.req({ method: 'GET', url: `/v2/${pid}/backuppolicy/tags`, token })).json();
    assert.deepEqual(tags, { tags: [{ key: 'k', values: ['v'] }] });
  });

  it('two instances on one catalog fire each slot once', { skip }, async () => {
    const clock = { t: Date.parse('2026-11-25T00:30:00Z'), now() { return this.t; } };
    const apps: App[] = [];
    // What the scheduler logs at warn and above, so a failure below says why a slot did not fire.
    const logged: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void logged.push(line.trim()) });
    for (let i = 0; i < 2; i++) apps.push(await composeApp(loadConfig({}, { dataDir: temp.make(`inst${i}`), adminPassword: ADMIN_PASSWORD, catalogUrl: 'skip' in db ? '' : db.url }), { clock, runJobs: false, runScheduler: false, threads: 1, logger }));
    try {
      const project = await apps[0]!.identity.findProject('admin');
      const p = await apps[0]!.policies.createPolicy(project.id, { name: 'twice', startTime: '00:00,06:00,12:00,18:00', frequency: 1, retentionNum: 3, status: 'ON' }, []);
      const v = await apps[0]!.volumes.createVolume(project.id, { sizeGb: 1, name: 'v' });
      await apps[0]!.policies.associate(project.id, p.id, [{ resourceId: v.id, resourceType: 'volume' }]);
      let fired = 0;
      for (let h = 1; h <= 24; h++) {
        clock.t = Date.parse('2026-11-25T00:30:00Z') + h * 3600_000;
        const rs = await Promise.all(apps.map((a) => a.scheduler.tick()));
        fired += rs.reduce((n, r) => n + r.fired, 0);
      }
      assert.equal(fired, 4, `fired ${fired} of 4 slots; logged:\n${logged.join('\n')}`);
      const tasks = (await apps[1]!.policies.listTasks(project.id, p.id, { sortDir: 'asc', limit: 100, offset: 0 })).tasks;
      assert.equal(new Set(tasks.map((t) => t.slotAt)).size, 4);
    } finally {
      for (const a of apps) await a.close();
    }
  });

  it('limits hold across processes: concurrent policy creations and backups on two instances never pass the limit or the quota', { skip }, async () => {
    const apps: App[] = [];
    for (let i = 0; i < 2; i++) {
      const config = loadConfig({}, { dataDir: temp.make(`limits${i}`), adminPassword: ADMIN_PASSWORD, catalogUrl: 'skip' in db ? '' : db.url, maxPoliciesPerProject: 5, quotaBackups: 3 });
      apps.push(await composeApp(config, { runJobs: false, runScheduler: false, threads: 1 }));
    }
    try {
      const project = await apps[0]!.identity.createProject({ name: 'limits', description: '', enabled: true });
      const code = (r: PromiseSettledResult<unknown>): string => (r.status === 'fulfilled' ? 'ok' : String((r.reason as { code?: string }).code));
      // 12 policies at once, half through each process, against a limit of 5.
      const made = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => apps[i % 2]!.policies.createPolicy(project.id, { name: `p${i}`, startTime: '02:00', frequency: 1, retentionNum: 3, status: 'ON' }, [])));
      assert.deepEqual(made.map(code).filter((c) => c !== 'ok').sort(), Array(7).fill(ErrorCode.QuotaPoliciesExceeded));
      assert.equal((await apps[1]!.policies.policiesWithTags(project.id)).length, 5);
      // 8 backups of 8 volumes at once against a quota of 3 backups.
      const vols = await Promise.all(Array.from({ length: 8 }, (_, i) => apps[0]!.volumes.createVolume(project.id, { sizeGb: 1, name: `v${i}` })));
      const started = await Promise.allSettled(vols.map((v, i) => apps[i % 2]!.backups.createBackup(project.id, { volumeId: v.id, origin: 'vbs' })));
      assert.deepEqual(started.map(code).filter((c) => c !== 'ok').sort(), Array(5).fill(ErrorCode.QuotaBackupsExceeded));
      assert.equal((await apps[0]!.backups.usage(project.id)).backups, 3);
    } finally {
      for (const a of apps) await a.close();
    }
  });
});

describe('PostgreSQL catalog: processes starting together', async () => {
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : false;
  const temp = new TempDirs('haven-pg-start-');
  after(async () => {
    if ('skip' in db) return;
    await db.drop();
    temp.cleanup();
  });

  it('three processes starting at once on a fresh catalog all come up, with one admin project and user', { skip }, async () => {
    const configs = [0, 1, 2].map((i) => loadConfig({}, { dataDir: temp.make(`p${i}`), adminPassword: ADMIN_PASSWORD, catalogUrl: 'skip' in db ? '' : db.url }));
    const started = await Promise.allSettled(configs.map((c) => composeApp(c, { runJobs: false, runScheduler: false, threads: 1 })));
    const apps = started.filter((r): r is PromiseFulfilledResult<App> => r.status === 'fulfilled').map((r) => r.value);
    try {
      assert.deepEqual(started.map((r) => (r.status === 'fulfilled' ? 'up' : String((r.reason as Error).message))), ['up', 'up', 'up']);
      const projects = await apps[0]!.catalog.db.all<{ n: number }>("SELECT COUNT(*) AS n FROM projects WHERE name = 'admin'");
      const users = await apps[0]!.catalog.db.all<{ n: number }>("SELECT COUNT(*) AS n FROM users WHERE name = 'admin'");
      assert.equal(Number(projects[0]!.n), 1);
      assert.equal(Number(users[0]!.n), 1);
      // Each of them signs the admin in.
      for (const a of apps) assert.ok((await a.identity.findProject('admin')).id);
    } finally {
      for (const a of apps) await a.close();
    }
  });

  it('without HAVEN_ADMIN_PASSWORD, a process joining a catalog whose admin exists leaves no password file of its own (it would not work)', { skip }, async () => {
    const first = await composeApp(loadConfig({}, { dataDir: temp.make('gen1'), catalogUrl: 'skip' in db ? '' : db.url }), { runJobs: false, runScheduler: false, threads: 1 });
    const second = await composeApp(loadConfig({}, { dataDir: temp.make('gen2'), catalogUrl: 'skip' in db ? '' : db.url }), { runJobs: false, runScheduler: false, threads: 1 });
    try {
      // (The admin already exists from the test before, made with ADMIN_PASSWORD.)
      for (const a of [first, second]) {
        assert.equal(a.adminPasswordFile, null);
        assert.equal(a.adminPasswordShared, true);
        assert.equal(existsSync(path.join(a.config.dataDir, 'admin-password')), false);
      }
      const login = await second.server.inject({ method: 'POST', url: '/v3/auth/tokens', payload: { auth: { identity: { methods: ['password'], password: { user: { name: 'admin', domain: { name: 'Default' }, password: ADMIN_PASSWORD } } } } } });
      assert.equal(login.statusCode, 201, login.body);
    } finally {
      await first.close();
      await second.close();
    }
  });
});
