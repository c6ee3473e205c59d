/**
 * VBS backup policies over HTTP (vbs.md §3, §4): create (P1) with the reference's example bodies
 * and every validation rule with its AutoBackup code (a refused request creates nothing), the
 * list shape (P2, misspelt `rentention_*` keys), partial updates (P3), delete (P4, backups stay),
 * association (P5/P6, a volume belongs to one policy), execute now (P7) and its tasks (P9), the
 * tag endpoints (T1-T6), the policy limit, and isolation between projects.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { TempDirs, MiB, overwrite, randomBytesSeeded, sha256File } from '../helpers/volumes.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';

type Json = Record<string, unknown>;
type Policy = { backup_policy_id: string; backup_policy_name: string; scheduled_policy: Json; policy_resource_count: number; time_zone?: string };
type Task = { job_id: string; status: string; created_at: string; finished_at?: string; backup_name: string; resource_id: string; resource_type: string; vbs_job_id?: string };
type Who = { token: string; projectId: string };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TASK_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$/;

/** The reference's P1 example (week_frequency + rentention_day + time_zone). */
const EXAMPLE_WEEK = () => ({
  backup_policy_name: 'policy_01',
  scheduled_policy: { remain_first_backup_of_curMonth: 'Y', rentention_day: 30, week_frequency: ['SUN', 'WED'], start_time: '12:00', status: 'ON' },
  tags: [{ key: 'key', value: 'value' }],
  time_zone: 'UTC+08:00',
});
/** The gopher fixture (frequency + rentention_num). */
const EXAMPLE_FREQ = () => ({
  backup_policy_name: 'Test_Policy',
  scheduled_policy: { frequency: 1, remain_first_backup_of_curMonth: 'Y', rentention_num: 10, start_time: '12:00', status: 'ON' },
  tags: [{ key: 'key', value: 'value' }],
});
const minimal = (name: string, extra: Json = {}) => ({ backup_policy_name: name, scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 2, status: 'ON' }, ...extra });

describe('VBS backup policies over HTTP', () => {
  const temp = new TempDirs('haven-api-policies-');
  let svc: TestService;
  let admin: Who;

  before(async () => {
    svc = await startService(temp);
    const a = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    admin = { token: a.token, projectId: a.projectId };
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  // ---- helpers ----
  const call = (who: Who, method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, payload?: unknown) =>
    svc.req({ method, url: `/v2/${who.projectId}${path}`, token: who.token, ...(payload === undefined ? {} : { payload: payload as Json }) });
  const create = (who: Who, body: unknown) => call(who, 'POST', '/backuppolicy', body);
  const createOk = async (who: Who, body: unknown): Promise<string> => {
    const r = await create(who, body);
    assert.equal(r.statusCode, 200, r.body);
    const id = (r.json() as { backup_policy_id: string }).backup_policy_id;
    assert.match(id, UUID);
    return id;
  };
  const list = async (who: Who): Promise<Policy[]> => {
    const r = await call(who, 'GET', '/backuppolicy');
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { backup_policies: Policy[] }).backup_policies;
  };
  const getPolicy = async (who: Who, id: string): Promise<Policy> => {
    const p = (await list(who)).find((x) => x.backup_policy_id === id);
    assert.ok(p, `policy ${id} is not in the list`);
    return p;
  };
  const expectError = (r: LightMyRequestResponse, status: number, code: string) => {
    assert.equal(r.statusCode, status, r.body);
    const e = (r.json() as { error: { code: string; message: string } }).error;
    assert.equal(e.code, code, r.body);
    assert.equal(typeof e.message, 'string');
    assert.ok(e.message.length > 0);
  };
  const createVolume = async (who: Who, name: string): Promise<string> => (await svc.createVolume(who, name)).id;
  const volumePath = (id: string) => svc.volumePath(id);
  const associate = async (who: Who, policyId: string, resources: { resource_id: string; resource_type: string }[]) => {
    const r = await call(who, 'POST', '/backuppolicyresources', { backup_policy_id: policyId, resources });
    assert.equal(r.statusCode, 200, r.body);
    return r.json() as { success_resources: Json[]; fail_resources: Json[] };
  };
  const tasks = async (who: Who, policyId: string, query = '') => {
    const r = await call(who, 'GET', `/backuppolicy/${policyId}/backuptasks${query}`);
    assert.equal(r.statusCode, 200, r.body);
    return r.json() as { tasks: Task[]; count: number };
  };
  const tagsOf = async (who: Who, policyId: string) => {
    const r = await call(who, 'GET', `/backuppolicy/${policyId}/tags`);
    assert.equal(r.statusCode, 200, r.body);
    return ((r.json() as { tags: { key: string; value: string }[] }).tags).slice().sort((a, b) => a.key.localeCompare(b.key));
  };
  const backupsDetail = async (who: Who) => {
    const r = await svc.req({ method: 'GET', url: `/v2/${who.projectId}/backups/detail`, token: who.token });
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { backups: Json[] }).backups;
  };

  // ---- P1 / P2 ----

  it('P1 creates the reference example bodies and P2 lists exactly the keys that were set', async () => {
    const before = await list(admin);
    const weekId = await createOk(admin, EXAMPLE_WEEK());
    const freqId = await createOk(admin, EXAMPLE_FREQ());
    // The create response holds only the id.
    const again = await create(admin, { ...EXAMPLE_FREQ(), backup_policy_name: 'Test_Policy_2' });
    assert.deepEqual(Object.keys(again.json() as Json), ['backup_policy_id']);
    const all = await list(admin);
    assert.equal(all.length, before.length + 3);

    const week = await getPolicy(admin, weekId);
    assert.deepEqual(Object.keys(week).sort(), ['backup_policy_id', 'backup_policy_name', 'policy_resource_count', 'scheduled_policy', 'time_zone']);
    assert.equal(week.backup_policy_name, 'policy_01');
    assert.equal(week.policy_resource_count, 0);
    assert.equal(week.time_zone, 'UTC+08:00');
    // Only the set schedule/retention keys, with OTC's misspelling, and a "Y"/"N" string.
    assert.deepEqual(week.scheduled_policy, { remain_first_backup_of_curMonth: 'Y', rentention_day: 30, week_frequency: ['SUN', 'WED'], start_time: '12:00', status: 'ON' });

    const freq = await getPolicy(admin, freqId);
    assert.equal(freq.backup_policy_name, 'Test_Policy');
    assert.equal(freq.policy_resource_count, 0);
    assert.deepEqual(freq.scheduled_policy, { frequency: 1, remain_first_backup_of_curMonth: 'Y', rentention_num: 10, start_time: '12:00', status: 'ON' });
    assert.equal(freq.time_zone, undefined, 'no time_zone was given');
    for (const p of [week, freq]) {
      assert.equal(typeof p.scheduled_policy.remain_first_backup_of_curMonth, 'string');
      for (const k of Object.keys(p.scheduled_policy)) assert.doesNotMatch(k, /^retention/, 'the keys keep the misspelling rentention_*');
    }
    // The P1 tags were stored.
    assert.deepEqual(await tagsOf(admin, weekId), [{ key: 'key', value: 'value' }]);
    assert.deepEqual(await tagsOf(admin, freqId), [{ key: 'key', value: 'value' }]);
  });

  it('P1 stores remain_first as "N" when not given, truncates rentention_day and keeps several start times', async () => {
    const id = await createOk(admin, {
      backup_policy_name: 'trunc-days',
      scheduled_policy: { start_time: '22:00,00:00,02:00', week_frequency: ['MON'], rentention_day: 30.7, status: 'OFF' },
      time_zone: 'UTC+02:00',
    });
    const p = await getPolicy(admin, id);
    assert.deepEqual(p.scheduled_policy, { start_time: '22:00,00:00,02:00', week_frequency: ['MON'], rentention_day: 30, remain_first_backup_of_curMonth: 'N', status: 'OFF' });
    assert.equal(p.time_zone, 'UTC+02:00');
    // A JSON boolean (otcextensions' fixture) is tolerated and still listed as a "Y" string.
    const boolId = await createOk(admin, minimal('bool-remain', { scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 2, status: 'ON', remain_first_backup_of_curMonth: true } }));
    assert.equal((await getPolicy(admin, boolId)).scheduled_policy.remain_first_backup_of_curMonth, 'Y');
  });

  it('P1 with both frequency and week_frequency keeps frequency; with both retentions keeps the count', async () => {
    const id = await createOk(admin, {
      backup_policy_name: 'both-modes',
      scheduled_policy: { start_time: '03:00', frequency: 7, week_frequency: ['SUN'], rentention_num: 5, rentention_day: 40, status: 'ON', remain_first_backup_of_curMonth: 'N' },
    });
    const s = (await getPolicy(admin, id)).scheduled_policy;
    assert.equal(s.frequency, 7);
    assert.equal('week_frequency' in s, false);
    assert.equal(s.rentention_num, 5);
    assert.equal('rentention_day' in s, false);
    const row = await svc.app.catalog.policies.getPolicyById(id);
    assert.equal(row!.weekFrequency, null);
    assert.equal(row!.retentionDay, null);
  });

  it('P1 accepts the boundary values (64-char name, frequency 30, rentention_num 99, 10 tags)', async () => {
    const name = 'a'.repeat(64);
    const tags = Array.from({ length: 10 }, (_, i) => ({ key: `k${i}`, value: i === 0 ? '' : `v${i}` }));
    const id = await createOk(admin, { backup_policy_name: name, scheduled_policy: { start_time: '23:00', frequency: 30, rentention_num: 99, status: 'ON' }, tags });
    const p = await getPolicy(admin, id);
    assert.equal(p.backup_policy_name, name);
    assert.equal(p.scheduled_policy.frequency, 30);
    assert.equal(p.scheduled_policy.rentention_num, 99);
    assert.equal((await tagsOf(admin, id)).length, 10);
  });

  it('P1 refuses every invalid field with its own code and creates nothing', async () => {
    type Mut = (b: { backup_policy_name: string; scheduled_policy: Json; tags?: unknown[]; time_zone?: string }) => void;
    const cases: [string, Mut, string][] = [
      ['empty name', (b) => (b.backup_policy_name = ''), 'AutoBackup.0101'],
      ['65-char name', (b) => (b.backup_policy_name = 'n'.repeat(65)), 'AutoBackup.0101'],
      ['name with a space', (b) => (b.backup_policy_name = 'bad name'), 'AutoBackup.0102'],
      ['name with a slash', (b) => (b.backup_policy_name = 'bad/name'), 'AutoBackup.0102'],
      ['name starting with default', (b) => (b.backup_policy_name = 'default_x'), 'AutoBackup.0102'],
      ['name starting with Default', (b) => (b.backup_policy_name = 'Default'), 'AutoBackup.0102'],
      ['start_time 12:30', (b) => (b.scheduled_policy.start_time = '12:30'), 'AutoBackup.0103'],
      ['start_time 25:00', (b) => (b.scheduled_policy.start_time = '25:00'), 'AutoBackup.0103'],
      ['start_time 12:00,13:15', (b) => (b.scheduled_policy.start_time = '12:00,13:15'), 'AutoBackup.0103'],
      ['status on', (b) => (b.scheduled_policy.status = 'on'), 'AutoBackup.0104'],
      ['remain_first X', (b) => (b.scheduled_policy.remain_first_backup_of_curMonth = 'X'), 'AutoBackup.0105'],
      ['frequency 0', (b) => (b.scheduled_policy.frequency = 0), 'AutoBackup.0106'],
      ['frequency 31', (b) => (b.scheduled_policy.frequency = 31), 'AutoBackup.0106'],
      ['week_frequency XYZ', (b) => (delete b.scheduled_policy.frequency, (b.scheduled_policy.week_frequency = ['XYZ'])), 'AutoBackup.0106'],
      ['no frequency nor week_frequency', (b) => delete b.scheduled_policy.frequency, 'AutoBackup.0106'],
      ['rentention_num 1', (b) => (b.scheduled_policy.rentention_num = 1), 'AutoBackup.0107'],
      ['rentention_num 100', (b) => (b.scheduled_policy.rentention_num = 100), 'AutoBackup.0107'],
      ['no retention', (b) => delete b.scheduled_policy.rentention_num, 'AutoBackup.0107'],
      ['11 tags', (b) => (b.tags = Array.from({ length: 11 }, (_, i) => ({ key: `k${i}`, value: 'v' }))), 'AutoBackup.0215'],
      ['bad tag key', (b) => (b.tags = [{ key: 'bad key!', value: 'v' }]), 'AutoBackup.0214'],
      ['empty tag key', (b) => (b.tags = [{ key: '', value: 'v' }]), 'AutoBackup.0214'],
      ['duplicate tag keys', (b) => (b.tags = [{ key: 'k', value: '1' }, { key: 'k', value: '2' }]), 'AutoBackup.0214'],
      ['< in a tag value', (b) => (b.tags = [{ key: 'k', value: '<script>' }]), 'AutoBackup.0221'],
      ['> in the name', (b) => (b.backup_policy_name = 'a>b'), 'AutoBackup.0221'],
      ['time_zone UTC+8', (b) => (b.time_zone = 'UTC+8'), 'AutoBackup.0226'],
      ['time_zone UTC+15:00', (b) => (b.time_zone = 'UTC+15:00'), 'AutoBackup.0226'],
    ];
    const before = await list(admin);
    for (const [what, mut, code] of cases) {
      const body = { backup_policy_name: 'valid_name', scheduled_policy: { start_time: '12:00', frequency: 1, rentention_num: 2, status: 'ON' } as Json };
      mut(body);
      const r = await create(admin, body);
      assert.equal(r.statusCode, 400, `${what}: ${r.body}`);
      assert.equal((r.json() as { error: { code: string } }).error.code, code, `${what}: ${r.body}`);
    }
    // An empty body with a JSON content type.
    const empty = await svc.req({ method: 'POST', url: `/v2/${admin.projectId}/backuppolicy`, token: admin.token, headers: { 'content-type': 'application/json' }, payload: '' });
    expectError(empty, 400, 'AutoBackup.0000');
    const after = await list(admin);
    assert.deepEqual(after, before, 'a refused create must not create or change anything');
  });

  // ---- P3 ----

  it('P3 updates partially, switches the schedule mode, renames, and refuses bad input', async () => {
    const who = await svc.tenant('p3');
    const id = await createOk(who, EXAMPLE_WEEK());
    const original = await getPolicy(who, id);

    // Only the status changes.
    const off = await call(who, 'PUT', `/backuppolicy/${id}`, { scheduled_policy: { status: 'OFF' } });
    assert.equal(off.statusCode, 200, off.body);
    assert.deepEqual(off.json(), { backup_policy_id: id });
    assert.deepEqual(await getPolicy(who, id), { ...original, scheduled_policy: { ...original.scheduled_policy, status: 'OFF' } });

    // frequency replaces week_frequency.
    const sw = await call(who, 'PUT', `/backuppolicy/${id}`, { scheduled_policy: { frequency: 3 } });
    assert.equal(sw.statusCode, 200, sw.body);
    let p = await getPolicy(who, id);
    assert.equal(p.scheduled_policy.frequency, 3);
    assert.equal('week_frequency' in p.scheduled_policy, false);
    assert.equal(p.scheduled_policy.rentention_day, 30, 'the retention is untouched');
    assert.equal(p.scheduled_policy.status, 'OFF');
    assert.equal(p.time_zone, 'UTC+08:00');

    // ...and back: week_frequency clears frequency; a count retention clears the day retention.
    const back = await call(who, 'PUT', `/backuppolicy/${id}`, { scheduled_policy: { week_frequency: ['TUE', 'FRI'], rentention_num: 4 } });
    assert.equal(back.statusCode, 200, back.body);
    p = await getPolicy(who, id);
    assert.deepEqual(p.scheduled_policy.week_frequency, ['TUE', 'FRI']);
    assert.equal('frequency' in p.scheduled_policy, false);
    assert.equal(p.scheduled_policy.rentention_num, 4);
    assert.equal('rentention_day' in p.scheduled_policy, false);

    // Rename, new start time and time zone, status ON (P8).
    const ren = await call(who, 'PUT', `/backuppolicy/${id}`, { backup_policy_name: 'renamed-01', scheduled_policy: { status: 'ON', start_time: '04:00', remain_first_backup_of_curMonth: 'N' }, time_zone: 'UTC-03:30' });
    assert.equal(ren.statusCode, 200, ren.body);
    p = await getPolicy(who, id);
    assert.equal(p.backup_policy_name, 'renamed-01');
    assert.deepEqual(p.scheduled_policy, { start_time: '04:00', week_frequency: ['TUE', 'FRI'], rentention_num: 4, remain_first_backup_of_curMonth: 'N', status: 'ON' });
    assert.equal(p.time_zone, 'UTC-03:30');
    assert.equal((await list(who)).length, 1, 'an update never creates a policy');

    // Refused updates change nothing.
    const snapshot = await getPolicy(who, id);
    const bad: [unknown, string][] = [
      [{ backup_policy_name: 'default-policy' }, 'AutoBackup.0102'],
      [{ backup_policy_name: '' }, 'AutoBackup.0101'],
      [{ scheduled_policy: { start_time: '04:30' } }, 'AutoBackup.0103'],
      [{ scheduled_policy: { status: 'off' } }, 'AutoBackup.0104'],
      [{ scheduled_policy: { frequency: 31 } }, 'AutoBackup.0106'],
      [{ scheduled_policy: { rentention_num: 1 } }, 'AutoBackup.0107'],
      [{ time_zone: 'UTC+15:00' }, 'AutoBackup.0226'],
      [{ backup_policy_name: 'x<y' }, 'AutoBackup.0221'],
    ];
    for (const [body, code] of bad) expectError(await call(who, 'PUT', `/backuppolicy/${id}`, body), 400, code);
    assert.deepEqual(await getPolicy(who, id), snapshot);

    // Unknown policy.
    expectError(await call(who, 'PUT', `/backuppolicy/${randomUUID()}`, { scheduled_policy: { status: 'OFF' } }), 404, 'AutoBackup.0205');
  });

  // ---- P4 ----

  it('P4 deletes a policy (204) and keeps the backups it made', async () => {
    const who = await svc.tenant('p4');
    const vol = await createVolume(who, 'p4-vol');
    await overwrite(await volumePath(vol), 0, randomBytesSeeded(1 * MiB, 41));
    // Disabled (P8): a manual run still works.
    const id = await createOk(who, { ...minimal('to-delete', { tags: [{ key: 'gone', value: 'soon' }] }), scheduled_policy: { start_time: '02:00', frequency: 1, rentention_num: 2, status: 'OFF' } });
    const keep = await createOk(who, minimal('to-keep'));
    await associate(who, id, [{ resource_id: vol, resource_type: 'volume' }]);
    const ex = await call(who, 'POST', `/backuppolicy/${id}/action`);
    assert.equal(ex.statusCode, 204, ex.body);
    const [task] = (await tasks(who, id)).tasks;
    assert.ok(task?.vbs_job_id);
    const job = await svc.waitJob(who.token, who.projectId, task.vbs_job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    const backupId = (job.entities as Record<string, string>).backup_id!;

    const del = await call(who, 'DELETE', `/backuppolicy/${id}`);
    assert.equal(del.statusCode, 204, del.body);
    assert.equal(del.body, '');
    const remaining = await list(who);
    assert.deepEqual(remaining.map((p) => p.backup_policy_id), [keep]);
    expectError(await call(who, 'DELETE', `/backuppolicy/${id}`), 404, 'AutoBackup.0205');
    expectError(await call(who, 'GET', `/backuppolicy/${id}/tags`), 404, 'AutoBackup.0205');
    const t3 = await call(who, 'GET', '/backuppolicy/tags');
    assert.deepEqual(t3.json(), { tags: [] }, 'the deleted policy\'s tags are gone');
    assert.equal(await svc.app.catalog.policies.getPolicyById(id), undefined);
    // The backup is still there.
    const shown = await svc.req({ method: 'GET', url: `/v2/${who.projectId}/backups/${backupId}`, token: who.token });
    assert.equal(shown.statusCode, 200, shown.body);
    assert.equal((shown.json() as { backup: { status: string } }).backup.status, 'available');
    assert.equal((await svc.app.catalog.backups.getBackupById(backupId))?.status, 'available');
    // The volume is free to join another policy.
    const moved = await associate(who, keep, [{ resource_id: vol, resource_type: 'volume' }]);
    assert.equal(moved.success_resources.length, 1);
    assert.equal((await getPolicy(who, keep)).policy_resource_count, 1);
  });

  // ---- P5 / P6 ----

  it('P5 associates volumes with per-item results and moves a volume between policies; P6 disassociates', async () => {
    const who = await svc.tenant('assoc');
    const stranger = await svc.tenant('assoc-stranger');
    const v1 = await createVolume(who, 'v1');
    const v2 = await createVolume(who, 'v2');
    const foreign = await createVolume(stranger, 'foreign');
    const a = await createOk(who, minimal('policy-a'));
    const b = await createOk(who, minimal('policy-b'));
    const unknown = randomUUID();

    const r = await associate(who, a, [
      { resource_id: v1, resource_type: 'volume' },
      { resource_id: unknown, resource_type: 'volume' },
      { resource_id: v2, resource_type: 'server' },
      { resource_id: foreign, resource_type: 'volume' },
    ]);
    assert.ok(Array.isArray(r.success_resources) && Array.isArray(r.fail_resources));
    assert.deepEqual(r.success_resources.map((x) => x.resource_id), [v1]);
    const ok = r.success_resources[0]!;
    assert.equal(ok.resource_type, 'volume');
    assert.equal(typeof ok.availability_zone, 'string');
    assert.equal(typeof ok.os_vol_host_attr, 'string');
    assert.equal('code' in ok, false, 'a success item carries no error code');
    const fails = new Map(r.fail_resources.map((x) => [x.resource_id as string, x]));
    assert.deepEqual([...fails.keys()].sort(), [unknown, v2, foreign].sort());
    assert.equal(fails.get(v2)!.code, 'AutoBackup.0211');
    assert.equal(fails.get(v2)!.resource_type, 'server');
    for (const id of [unknown, foreign]) {
      assert.match(String(fails.get(id)!.code), /^AutoBackup\.\d{4}$/);
      assert.equal(typeof fails.get(id)!.message, 'string');
    }
    assert.equal((await getPolicy(who, a)).policy_resource_count, 1);
    assert.deepEqual(await svc.app.catalog.policies.policyVolumes(a), [v1]);

    // All succeed: fail_resources is present and empty.
    const r2 = await associate(who, a, [{ resource_id: v2, resource_type: 'volume' }]);
    assert.deepEqual(r2.success_resources.map((x) => x.resource_id), [v2]);
    assert.deepEqual(r2.fail_resources, []);
    assert.equal((await getPolicy(who, a)).policy_resource_count, 2);
    // Associating again is harmless and does not double count.
    await associate(who, a, [{ resource_id: v2, resource_type: 'volume' }]);
    assert.equal((await getPolicy(who, a)).policy_resource_count, 2);

    // v1 moves to b.
    const mv = await associate(who, b, [{ resource_id: v1, resource_type: 'volume' }]);
    assert.deepEqual(mv.success_resources.map((x) => x.resource_id), [v1]);
    assert.equal((await getPolicy(who, a)).policy_resource_count, 1);
    assert.equal((await getPolicy(who, b)).policy_resource_count, 1);
    assert.deepEqual(await svc.app.catalog.policies.policyVolumes(a), [v2]);
    assert.deepEqual(await svc.app.catalog.policies.policyVolumes(b), [v1]);

    // Request-level errors.
    expectError(await call(who, 'POST', '/backuppolicyresources', { backup_policy_id: randomUUID(), resources: [{ resource_id: v1, resource_type: 'volume' }] }), 404, 'AutoBackup.0205');
    expectError(await call(who, 'POST', '/backuppolicyresources', { backup_policy_id: a, resources: [] }), 400, 'AutoBackup.0207');
    assert.deepEqual(await svc.app.catalog.policies.policyVolumes(b), [v1], 'a refused association moves nothing');

    // P6: v2 is on a; v1 is on b, not a; unknown is nowhere.
    const d = await call(who, 'POST', `/backuppolicyresources/${a}/deleted_resources`, { resources: [{ resource_id: v2 }, { resource_id: v1 }, { resource_id: unknown }] });
    assert.equal(d.statusCode, 200, d.body);
    const dj = d.json() as { success_resources: Json[]; fail_resources: Json[] };
    assert.deepEqual(dj.success_resources, [{ resource_id: v2 }]);
    assert.deepEqual(dj.fail_resources.map((x) => x.resource_id).sort(), [v1, unknown].sort());
    for (const f of dj.fail_resources) assert.match(String(f.code), /^AutoBackup\.\d{4}$/);
    assert.equal((await getPolicy(who, a)).policy_resource_count, 0);
    assert.equal((await getPolicy(who, b)).policy_resource_count, 1, 'disassociating from a leaves b alone');
    const d2 = await call(who, 'POST', `/backuppolicyresources/${b}/deleted_resources`, { resources: [{ resource_id: v1 }] });
    assert.deepEqual(d2.json(), { success_resources: [{ resource_id: v1 }], fail_resources: [] });
    assert.equal((await getPolicy(who, b)).policy_resource_count, 0);
    expectError(await call(who, 'POST', `/backuppolicyresources/${randomUUID()}/deleted_resources`, { resources: [{ resource_id: v1 }] }), 404, 'AutoBackup.0205');

    // A policy's only volume moves away: its count goes 1 -> 0.
    await associate(who, a, [{ resource_id: v1, resource_type: 'volume' }]);
    assert.equal((await getPolicy(who, a)).policy_resource_count, 1);
    await associate(who, b, [{ resource_id: v1, resource_type: 'volume' }]);
    assert.equal((await getPolicy(who, a)).policy_resource_count, 0);
    assert.equal((await getPolicy(who, b)).policy_resource_count, 1);
  });

  it('a deleted volume no longer counts as associated and is not backed up by the policy', async () => {
    const who = await svc.tenant('voldel');
    const keep = await createVolume(who, 'keep');
    const gone = await createVolume(who, 'gone');
    const id = await createOk(who, minimal('voldel-policy'));
    await associate(who, id, [{ resource_id: keep, resource_type: 'volume' }, { resource_id: gone, resource_type: 'volume' }]);
    assert.equal((await getPolicy(who, id)).policy_resource_count, 2);
    const del = await call(who, 'DELETE', `/volumes/${gone}`);
    assert.equal(del.statusCode, 202, del.body);
    assert.equal((await getPolicy(who, id)).policy_resource_count, 1);
    assert.deepEqual(await svc.app.catalog.policies.policyVolumes(id), [keep]);
    assert.equal((await call(who, 'POST', `/backuppolicy/${id}/action`)).statusCode, 204);
    await svc.app.runner.idle();
    const t = await tasks(who, id);
    assert.deepEqual(t.tasks.map((x) => [x.resource_id, x.status]), [[keep, 'EXECUTE_SUCCESS']]);
  });

  // ---- P7 / P9 ----

  it('P7 runs one task per volume (P9), refuses to run twice at once, and makes tagged autobk_ backups', async () => {
    const who = await svc.tenant('exec');
    const va = await createVolume(who, 'exec-a');
    const vb = await createVolume(who, 'exec-b');
    const fa = await volumePath(va);
    await overwrite(fa, 0, randomBytesSeeded(3 * MiB, 71));
    await overwrite(fa, 600 * MiB, randomBytesSeeded(1 * MiB, 72));
    await overwrite(await volumePath(vb), 10 * MiB, randomBytesSeeded(2 * MiB, 73));
    const shaA = await sha256File(fa);
    const policyTags = [{ key: 'env', value: 'prod' }, { key: 'team', value: 'a' }];
    const id = await createOk(who, minimal('exec-policy', { tags: policyTags }));
    const empty = await createOk(who, minimal('exec-empty'));
    await associate(who, id, [{ resource_id: va, resource_type: 'volume' }, { resource_id: vb, resource_type: 'volume' }]);
    const backupsBefore = (await backupsDetail(who)).length;
    assert.equal(backupsBefore, 0);

    // Hold the job runner so the tasks stay WAITING while we look.
    await svc.app.runner.stop();
    let waiting: Task[];
    try {
      // Two requests at once: one runs, the other is refused (not run twice, not SKIPped).
      const both = await Promise.all([call(who, 'POST', `/backuppolicy/${id}/action`), call(who, 'POST', `/backuppolicy/${id}/action`)]);
      both.sort((x, y) => x.statusCode - y.statusCode);
      assert.equal(both[0]!.statusCode, 204, both[0]!.body);
      assert.equal(both[0]!.body, '');
      expectError(both[1]!, 409, 'AutoBackup.0225');
      const t = await tasks(who, id);
      assert.equal(t.count, 2, JSON.stringify(t.tasks));
      waiting = t.tasks;
      for (const task of waiting) {
        assert.equal(task.status, 'WAITING');
        assert.equal('finished_at' in task, false);
      }
      // A second run while the first is pending.
      expectError(await call(who, 'POST', `/backuppolicy/${id}/action`), 409, 'AutoBackup.0225');
      assert.equal((await tasks(who, id)).count, 2, 'the refused run made no tasks');
    } finally {
      await svc.app.runner.start();
    }

    assert.deepEqual(waiting.map((t) => t.resource_id).sort(), [va, vb].sort());
    for (const task of waiting) {
      assert.match(task.job_id, UUID);
      assert.match(task.backup_name, /^autobk_[0-9a-f]{4}$/);
      assert.equal(task.resource_type, 'volume');
      assert.match(task.created_at, TASK_TIME);
      assert.match(String(task.vbs_job_id), /^[0-9a-f]{32}$/);
      const job = await svc.waitJob(who.token, who.projectId, task.vbs_job_id!);
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
      assert.equal(job.job_type, 'bksCreateBackup');
    }
    const done = await tasks(who, id);
    assert.equal(done.count, 2);
    for (const task of done.tasks) {
      assert.equal(task.status, 'EXECUTE_SUCCESS');
      assert.match(String(task.finished_at), TASK_TIME);
      assert.ok(task.finished_at! >= task.created_at, `${task.finished_at} before ${task.created_at}`);
    }

    // The backups: named like the tasks, listed, tagged like the policy, restorable.
    const detail = await backupsDetail(who);
    assert.equal(detail.length, 2);
    for (const task of waiting) {
      const job = await svc.waitJob(who.token, who.projectId, task.vbs_job_id!);
      const backupId = (job.entities as Record<string, string>).backup_id!;
      const listed = detail.find((b) => b.id === backupId);
      assert.ok(listed, `backup ${backupId} is not in backups/detail`);
      assert.equal(listed.name, task.backup_name);
      assert.equal(listed.volume_id, task.resource_id);
      assert.equal(listed.status, 'available');
      const row = await svc.app.catalog.backups.getBackupById(backupId);
      assert.equal(row!.origin, 'policy');
      assert.equal(row!.policyId, id);
      assert.deepEqual(row!.tags.slice().sort((x, y) => x.key.localeCompare(y.key)), policyTags);
      if (task.resource_id === va) {
        const target = await createVolume(who, 'exec-restore');
        const rr = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups/${backupId}/restore`, token: who.token, payload: { restore: { volume_id: target } } });
        assert.equal(rr.statusCode, 200, rr.body);
        const rj = await svc.waitJob(who.token, who.projectId, (rr.json() as { job_id: string }).job_id);
        assert.equal(rj.status, 'SUCCESS', JSON.stringify(rj));
        assert.equal(await sha256File(await volumePath(target)), shaA);
      }
    }

    // Once finished, it runs again (incremental backups this time).
    const ex2 = await call(who, 'POST', `/backuppolicy/${id}/action`);
    assert.equal(ex2.statusCode, 204, ex2.body);
    await svc.app.runner.idle();
    const all = await tasks(who, id);
    assert.equal(all.count, 4);
    assert.ok(all.tasks.every((t) => t.status === 'EXECUTE_SUCCESS'), JSON.stringify(all.tasks));
    assert.equal((await backupsDetail(who)).length, 4);
    assert.equal(new Set(all.tasks.map((t) => t.job_id)).size, 4);

    // A policy without volumes: 204 and nothing happens.
    const ex3 = await call(who, 'POST', `/backuppolicy/${empty}/action`);
    assert.equal(ex3.statusCode, 204, ex3.body);
    await svc.app.runner.idle();
    assert.deepEqual(await tasks(who, empty), { tasks: [], count: 0 });
    assert.equal((await backupsDetail(who)).length, 4);

    expectError(await call(who, 'POST', `/backuppolicy/${randomUUID()}/action`), 404, 'AutoBackup.0205');
    expectError(await call(who, 'GET', `/backuppolicy/${randomUUID()}/backuptasks`), 404, 'AutoBackup.0205');

    // ---- P9 paging, order and filters ----
    const desc = (await tasks(who, id)).tasks;
    assert.equal(desc.length, 4);
    for (let i = 1; i < desc.length; i++) assert.ok(desc[i - 1]!.created_at >= desc[i]!.created_at, 'default order is newest first');
    const asc = (await tasks(who, id, '?sort_dir=asc')).tasks;
    for (let i = 1; i < asc.length; i++) assert.ok(asc[i - 1]!.created_at <= asc[i]!.created_at, 'sort_dir=asc is oldest first');
    const firstRun = new Set(waiting.map((t) => t.job_id));
    assert.ok(firstRun.has(asc[0]!.job_id) && firstRun.has(asc[1]!.job_id), 'asc starts with the first run');
    assert.ok(!firstRun.has(desc[0]!.job_id) && !firstRun.has(desc[1]!.job_id), 'desc starts with the second run');

    const paged: string[] = [];
    for (let off = 0; off < 5; off++) {
      const pg = await tasks(who, id, `?limit=1&offset=${off}`);
      assert.equal(pg.count, 4, 'count is the total, not the page size');
      assert.equal(pg.tasks.length, off < 4 ? 1 : 0);
      paged.push(...pg.tasks.map((t) => t.job_id));
    }
    assert.deepEqual(paged, desc.map((t) => t.job_id));
    const two = await tasks(who, id, '?limit=2&offset=1');
    assert.deepEqual(two.tasks.map((t) => t.job_id), desc.slice(1, 3).map((t) => t.job_id));
    const marker = await tasks(who, id, `?marker=${desc[1]!.job_id}`);
    assert.deepEqual(marker.tasks.map((t) => t.job_id), desc.slice(2).map((t) => t.job_id));

    assert.equal((await tasks(who, id, '?status=EXECUTE_SUCCESS')).count, 4);
    const none = await tasks(who, id, '?status=WAITING');
    assert.deepEqual(none, { tasks: [], count: 0 });
    const one = await tasks(who, id, `?job_id=${desc[2]!.job_id}`);
    assert.equal(one.count, 1);
    assert.equal(one.tasks[0]!.job_id, desc[2]!.job_id);
    assert.equal((await call(who, 'GET', `/backuppolicy/${id}/backuptasks?limit=0`)).statusCode, 400);
    assert.equal((await call(who, 'GET', `/backuppolicy/${id}/backuptasks?status=DONE`)).statusCode, 400);
    assert.equal((await call(who, 'GET', `/backuppolicy/${id}/backuptasks?sort_dir=up`)).statusCode, 400);
  });

  // ---- Tags T1-T5 ----

  it('T1/T2/T4/T5 add, overwrite, list, batch-edit and delete policy tags', async () => {
    const who = await svc.tenant('tags');
    const id = await createOk(who, minimal('tagged'));
    assert.deepEqual(await tagsOf(who, id), []);

    const add = (key: string, value: string) => call(who, 'POST', `/backuppolicy/${id}/tags`, { tag: { key, value } });
    const a1 = await add('k1', 'v1');
    assert.equal(a1.statusCode, 204, a1.body);
    assert.equal(a1.body, '');
    assert.deepEqual(await tagsOf(who, id), [{ key: 'k1', value: 'v1' }]);
    // Same key: overwritten, not duplicated.
    assert.equal((await add('k1', 'v2')).statusCode, 204);
    assert.deepEqual(await tagsOf(who, id), [{ key: 'k1', value: 'v2' }]);
    // Refused tags change nothing.
    expectError(await add('bad key!', 'v'), 400, 'AutoBackup.0214');
    expectError(await add('k'.repeat(37), 'v'), 400, 'AutoBackup.0214');
    expectError(await add('k2', 'v'.repeat(44)), 400, 'AutoBackup.0214');
    expectError(await add('k2', '<b>'), 400, 'AutoBackup.0221');
    assert.deepEqual(await tagsOf(who, id), [{ key: 'k1', value: 'v2' }]);

    // T5 create/update (both upsert) and delete.
    const batch = (body: unknown) => call(who, 'POST', `/backuppolicy/${id}/tags/action`, body);
    const c = await batch({ action: 'create', tags: [{ key: 'a', value: '1' }, { key: 'b', value: '2' }] });
    assert.equal(c.statusCode, 204, c.body);
    assert.equal(c.body, '');
    assert.deepEqual(await tagsOf(who, id), [{ key: 'a', value: '1' }, { key: 'b', value: '2' }, { key: 'k1', value: 'v2' }]);
    assert.equal((await batch({ action: 'update', tags: [{ key: 'a', value: '3' }, { key: 'c', value: '4' }] })).statusCode, 204);
    assert.deepEqual(await tagsOf(who, id), [{ key: 'a', value: '3' }, { key: 'b', value: '2' }, { key: 'c', value: '4' }, { key: 'k1', value: 'v2' }]);
    const d = await batch({ action: 'delete', tags: [{ key: 'a', value: 'ignored' }, { key: 'b' }, { key: 'never-there' }] });
    assert.equal(d.statusCode, 204, d.body);
    assert.deepEqual(await tagsOf(who, id), [{ key: 'c', value: '4' }, { key: 'k1', value: 'v2' }]);
    // Bad actions and bad tags: nothing applied.
    expectError(await batch({ action: 'remove', tags: [{ key: 'c' }] }), 400, 'AutoBackup.0222');
    expectError(await batch({ action: 'CREATE', tags: [{ key: 'x', value: 'y' }] }), 400, 'AutoBackup.0222');
    expectError(await batch({ action: 'create', tags: [{ key: 'ok', value: 'y' }, { key: 'no good', value: 'y' }] }), 400, 'AutoBackup.0214');
    expectError(await batch({ action: 'create', tags: [{ key: 'x', value: 'a>b' }] }), 400, 'AutoBackup.0221');
    assert.deepEqual(await tagsOf(who, id), [{ key: 'c', value: '4' }, { key: 'k1', value: 'v2' }]);

    // Ten tags at most: 2 + 8 = 10 fits; the 11th is refused whole (T1 and T5); overwriting still works.
    const eight = Array.from({ length: 8 }, (_, i) => ({ key: `n${i}`, value: `${i}` }));
    assert.equal((await batch({ action: 'create', tags: eight })).statusCode, 204);
    assert.equal((await tagsOf(who, id)).length, 10);
    expectError(await add('eleventh', 'x'), 400, 'AutoBackup.0215');
    expectError(await batch({ action: 'create', tags: [{ key: 'c', value: 'changed' }, { key: 'eleventh', value: 'x' }] }), 400, 'AutoBackup.0215');
    let now = await tagsOf(who, id);
    assert.equal(now.length, 10);
    assert.equal(now.find((t) => t.key === 'c')!.value, '4', 'a refused batch applies none of its tags');
    assert.equal((await add('c', '5')).statusCode, 204);
    now = await tagsOf(who, id);
    assert.equal(now.length, 10);
    assert.equal(now.find((t) => t.key === 'c')!.value, '5');

    // T2.
    const del = await call(who, 'DELETE', `/backuppolicy/${id}/tags/k1`);
    assert.equal(del.statusCode, 204, del.body);
    assert.equal(del.body, '');
    assert.equal((await tagsOf(who, id)).some((t) => t.key === 'k1'), false);
    expectError(await call(who, 'DELETE', `/backuppolicy/${id}/tags/k1`), 404, 'AutoBackup.0216');
    expectError(await call(who, 'DELETE', `/backuppolicy/${id}/tags/nope`), 404, 'AutoBackup.0216');
    assert.equal((await tagsOf(who, id)).length, 9);

    // Unknown policy.
    const ghost = randomUUID();
    expectError(await call(who, 'POST', `/backuppolicy/${ghost}/tags`, { tag: { key: 'k', value: 'v' } }), 404, 'AutoBackup.0205');
    expectError(await call(who, 'GET', `/backuppolicy/${ghost}/tags`), 404, 'AutoBackup.0205');
    expectError(await call(who, 'DELETE', `/backuppolicy/${ghost}/tags/c`), 404, 'AutoBackup.0205');
    expectError(await call(who, 'POST', `/backuppolicy/${ghost}/tags/action`, { action: 'create', tags: [{ key: 'k', value: 'v' }] }), 404, 'AutoBackup.0205');
  });

  it('T3 lists every key of the project with its distinct values; T6 filters and counts policies by tag', async () => {
    const who = await svc.tenant('tagfilter');
    const pa = await createOk(who, minimal('alpha-web', { tags: [{ key: 'env', value: 'prod' }, { key: 'team', value: 'a' }] }));
    const pb = await createOk(who, minimal('beta-db', { tags: [{ key: 'env', value: 'dev' }, { key: 'team', value: 'b' }] }));
    const pc = await createOk(who, minimal('gamma-web', { tags: [{ key: 'env', value: 'prod' }] }));
    const pd = await createOk(who, minimal('delta'));

    const t3 = await call(who, 'GET', '/backuppolicy/tags');
    assert.equal(t3.statusCode, 200, t3.body);
    const keys = (t3.json() as { tags: { key: string; values: string[] }[] }).tags.map((t) => ({ key: t.key, values: t.values.slice().sort() })).sort((x, y) => x.key.localeCompare(y.key));
    assert.deepEqual(keys, [{ key: 'env', values: ['dev', 'prod'] }, { key: 'team', values: ['a', 'b'] }]);

    const t6 = async (body: Json) => {
      const r = await call(who, 'POST', '/backuppolicy/resource_instances/action', { action: 'filter', ...body });
      assert.equal(r.statusCode, 200, r.body);
      return r.json() as { total_count: number; resources: { resource_id: string; resource_name: string; resource_detail: unknown; tags: { key: string; value: string }[] }[] };
    };
    const ids = async (body: Json) => {
      const r = await t6(body);
      assert.equal(r.total_count, r.resources.length);
      return r.resources.map((x) => x.resource_id).sort();
    };
    const set = (...xs: string[]) => xs.slice().sort();

    const everything = await t6({});
    assert.equal(everything.total_count, 4);
    const ra = everything.resources.find((x) => x.resource_id === pa)!;
    assert.equal(ra.resource_name, 'alpha-web');
    assert.equal(ra.resource_detail, null);
    assert.deepEqual(ra.tags.slice().sort((x, y) => x.key.localeCompare(y.key)), [{ key: 'env', value: 'prod' }, { key: 'team', value: 'a' }]);
    assert.deepEqual(everything.resources.find((x) => x.resource_id === pd)!.tags, []);

    assert.deepEqual(await ids({ tags: [{ key: 'env', values: ['prod'] }] }), set(pa, pc));
    assert.deepEqual(await ids({ tags: [{ key: 'env', values: ['prod'] }, { key: 'team', values: ['a'] }] }), set(pa), 'keys are ANDed');
    assert.deepEqual(await ids({ tags: [{ key: 'env', values: ['prod'] }, { key: 'team', values: ['b'] }] }), []);
    assert.deepEqual(await ids({ tags: [{ key: 'env', values: ['prod', 'dev'] }] }), set(pa, pb, pc), 'values are ORed');
    assert.deepEqual(await ids({ tags: [{ key: 'team', values: [] }] }), set(pa, pb), 'no values: any value of the key');
    assert.deepEqual(await ids({ tags: [{ key: 'env', values: ['staging'] }] }), []);
    assert.deepEqual(await ids({ tags_any: [{ key: 'env', values: ['dev'] }, { key: 'team', values: ['a'] }] }), set(pa, pb), 'tags_any ORs keys');
    assert.deepEqual(await ids({ not_tags: [{ key: 'env', values: ['prod'] }] }), set(pb, pd));
    assert.deepEqual(await ids({ not_tags: [{ key: 'env', values: ['prod'] }, { key: 'team', values: ['a'] }] }), set(pb, pc, pd), 'not_tags excludes only policies with all of them');
    assert.deepEqual(await ids({ not_tags_any: [{ key: 'env', values: ['dev'] }, { key: 'team', values: ['a'] }] }), set(pc, pd), 'not_tags_any excludes policies with any of them');
    assert.deepEqual(await ids({ matches: [{ key: 'resource_name', value: 'web' }] }), set(pa, pc));
    assert.deepEqual(await ids({ matches: [{ key: 'resource_name', value: 'gamma' }], tags: [{ key: 'env', values: ['prod'] }] }), set(pc));
    assert.deepEqual(await ids({ matches: [{ key: 'resource_name', value: 'zzz' }] }), []);

    // count: only total_count.
    const cnt = await call(who, 'POST', '/backuppolicy/resource_instances/action', { action: 'count', tags: [{ key: 'env', values: ['prod'] }] });
    assert.equal(cnt.statusCode, 200, cnt.body);
    assert.deepEqual(cnt.json(), { total_count: 2 });

    // limit/offset as strings: pages of one add up to the whole.
    const all = everything.resources.map((x) => x.resource_id);
    const pages: string[] = [];
    for (let off = 0; off < 4; off++) {
      const pg = await t6({ limit: '1', offset: String(off) });
      assert.equal(pg.total_count, 4, 'total_count ignores paging');
      assert.equal(pg.resources.length, 1);
      pages.push(pg.resources[0]!.resource_id);
    }
    assert.deepEqual(pages, all);
    const pg2 = await t6({ limit: '2', offset: '3' });
    assert.deepEqual(pg2.resources.map((x) => x.resource_id), all.slice(3));
    assert.deepEqual((await t6({ offset: '4' })).resources, []);

    for (const bad of [{ limit: '0' }, { limit: '1001' }, { offset: '-1' }, { limit: 'ten' }]) {
      const r = await call(who, 'POST', '/backuppolicy/resource_instances/action', { action: 'filter', ...bad });
      assert.equal(r.statusCode, 400, `${JSON.stringify(bad)}: ${r.body}`);
    }
    expectError(await call(who, 'POST', '/backuppolicy/resource_instances/action', { action: 'list' }), 400, 'AutoBackup.0222');
  });

  // ---- Isolation ----

  it('another project cannot see, change, run or tag a policy', async () => {
    const owner = await svc.tenant('iso-owner');
    const other = await svc.tenant('other');
    const vol = await createVolume(owner, 'iso-vol');
    const otherVol = await createVolume(other, 'other-vol');
    const id = await createOk(owner, minimal('private', { tags: [{ key: 'secret', value: 'yes' }] }));
    await associate(owner, id, [{ resource_id: vol, resource_type: 'volume' }]);
    const snapshot = await getPolicy(owner, id);

    assert.deepEqual(await list(other), []);
    expectError(await call(other, 'PUT', `/backuppolicy/${id}`, { backup_policy_name: 'stolen', scheduled_policy: { status: 'OFF' } }), 404, 'AutoBackup.0205');
    expectError(await call(other, 'DELETE', `/backuppolicy/${id}`), 404, 'AutoBackup.0205');
    expectError(await call(other, 'POST', `/backuppolicy/${id}/action`), 404, 'AutoBackup.0205');
    expectError(await call(other, 'GET', `/backuppolicy/${id}/backuptasks`), 404, 'AutoBackup.0205');
    expectError(await call(other, 'POST', `/backuppolicy/${id}/tags`, { tag: { key: 'x', value: 'y' } }), 404, 'AutoBackup.0205');
    expectError(await call(other, 'GET', `/backuppolicy/${id}/tags`), 404, 'AutoBackup.0205');
    expectError(await call(other, 'DELETE', `/backuppolicy/${id}/tags/secret`), 404, 'AutoBackup.0205');
    expectError(await call(other, 'POST', `/backuppolicy/${id}/tags/action`, { action: 'delete', tags: [{ key: 'secret' }] }), 404, 'AutoBackup.0205');
    expectError(await call(other, 'POST', '/backuppolicyresources', { backup_policy_id: id, resources: [{ resource_id: otherVol, resource_type: 'volume' }] }), 404, 'AutoBackup.0205');
    expectError(await call(other, 'POST', `/backuppolicyresources/${id}/deleted_resources`, { resources: [{ resource_id: vol }] }), 404, 'AutoBackup.0205');
    assert.deepEqual(await call(other, 'GET', '/backuppolicy/tags').then((r) => r.json()), { tags: [] });
    assert.deepEqual(await call(other, 'POST', '/backuppolicy/resource_instances/action', { action: 'count' }).then((r) => r.json()), { total_count: 0 });

    // The other project cannot pull the owner's volume into its own policy either.
    const mine = await createOk(other, minimal('mine'));
    const grab = await associate(other, mine, [{ resource_id: vol, resource_type: 'volume' }]);
    assert.deepEqual(grab.success_resources, []);
    assert.equal(grab.fail_resources.length, 1);

    // Nothing changed for the owner, and nothing ran.
    assert.deepEqual(await getPolicy(owner, id), snapshot);
    assert.deepEqual(await tagsOf(owner, id), [{ key: 'secret', value: 'yes' }]);
    assert.deepEqual(await tasks(owner, id), { tasks: [], count: 0 });
    assert.deepEqual(await svc.app.catalog.policies.policyVolumes(id), [vol]);
    assert.deepEqual(await backupsDetail(owner), []);
  });

  // ---- Limit (last: it restarts the service with a lower limit) ----

  it('refuses a policy beyond the per-project limit (AutoBackup.0203) and creates nothing', async () => {
    await svc.restart({ maxPoliciesPerProject: 2 });
    const who = await svc.tenant('limited');
    await createOk(who, minimal('first'));
    await createOk(who, minimal('second'));
    expectError(await create(who, minimal('third')), 400, 'AutoBackup.0203');
    const names = (await list(who)).map((p) => p.backup_policy_name).sort();
    assert.deepEqual(names, ['first', 'second']);
    // Deleting one makes room again.
    const firstId = (await list(who)).find((p) => p.backup_policy_name === 'first')!.backup_policy_id;
    assert.equal((await call(who, 'DELETE', `/backuppolicy/${firstId}`)).statusCode, 204);
    await createOk(who, minimal('third'));
    assert.equal((await list(who)).length, 2);
  });
});
