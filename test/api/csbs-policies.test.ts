/**
 * CSBS policies over HTTP: create with the reference's body (200, status suspended), list, show,
 * update (servers, schedule, enabled), run now (B1: a checkpoint with an item per server), delete;
 * validation with CSBS codes; and on a fake clock, the RRULE schedule firing with retention keeping
 * max_backups scheduled backups.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const PROVIDER = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';
const PATTERN = 'BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nRRULE:FREQ=WEEKLY;BYDAY=TH;BYHOUR=12;BYMINUTE=27\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n';
const clock = { t: Date.parse('2026-11-25T10:00:00Z'), now() { return this.t; } };

describe('CSBS policies', () => {
  const temp = new TempDirs('haven-csbs-pol-');
  let svc: TestService;
  let token: string;
  let pid: string;
  before(async () => {
    svc = await startService(temp, {}, { clock, runScheduler: false });
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const server = async (name: string, disks: number) => {
    const ids: string[] = [];
    for (let i = 0; i < disks; i++) {
      const v = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, name: `${name}-d${i}` } } });
      const id = (v.json() as { volume: { id: string } }).volume.id;
      await overwrite((await svc.app.catalog.volumes.getVolumeById(id))!.path, 0, randomBytesSeeded(MiB, ids.length + name.length));
      ids.push(id);
    }
    const r = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name, block_device_mapping_v2: ids.map((uuid, i) => ({ source_type: 'volume', uuid, boot_index: i === 0 ? 0 : -1 })) } } });
    return (r.json() as { server: { id: string } }).server.id;
  };
  const body = (name: string, resources: { id: string; name: string }[], def: Record<string, unknown> = { max_backups: 20, permanent: false }, pattern = PATTERN) => ({
    policy: {
      name, description: 'My plan', provider_id: PROVIDER, parameters: { common: {} },
      scheduled_operations: [{ name: 'my-backup-policy', description: 'My backup policy', enabled: true, operation_type: 'backup', operation_definition: def, trigger: { properties: { pattern } } }],
      resources: resources.map((r) => ({ ...r, type: 'OS::Nova::Server' })),
      tags: [{ key: 'env', value: 'prod' }],
    },
  });
  const listCount = async () => ((await svc.req({ method: 'GET', url: `/v1/${pid}/policies`, token })).json() as { policies: unknown[] }).policies.length;

  it('creates, lists, shows, updates, runs and deletes a policy', async () => {
    const s1 = await server('web', 2);
    const s2 = await server('db', 1);
    const r = await svc.req({ method: 'POST', url: `/v1/${pid}/policies`, token, payload: body('my-plan', [{ id: s1, name: 'web' }]) });
    assert.equal(r.statusCode, 200, r.body);
    const p = (r.json() as { policy: Record<string, unknown> }).policy;
    assert.equal(p.status, 'suspended');
    assert.equal(p.provider_id, PROVIDER);
    assert.match(String(p.created_at), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$/);
    const op = (p.scheduled_operations as Record<string, unknown>[])[0]!;
    assert.equal(op.enabled, true);
    assert.deepEqual(op.operation_definition, { plan_id: p.id, provider_id: PROVIDER, max_backups: 20, permanent: false });
    const trigger = op.trigger as { id: string; properties: { pattern: string; start_time: string; format: string } };
    assert.equal(op.trigger_id, trigger.id);
    assert.equal(trigger.properties.pattern, PATTERN);
    assert.equal(trigger.properties.format, 'ical');
    assert.match(trigger.properties.start_time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);

    const shown = (await svc.req({ method: 'GET', url: `/v1/${pid}/policies/${String(p.id)}`, token })).json() as { policy: { resources: { id: string }[] } };
    assert.deepEqual(shown.policy.resources.map((x) => x.id), [s1]);
    // Update: add the second server, switch the schedule off.
    const up = await svc.req({ method: 'PUT', url: `/v1/${pid}/policies/${String(p.id)}`, token, payload: { policy: { name: 'my-plan-2', parameters: { common: {} }, resources: [{ id: s1, type: 'OS::Nova::Server', name: 'web' }, { id: s2, type: 'OS::Nova::Server', name: 'db' }], scheduled_operations: [{ id: op.id, enabled: false, operation_definition: { max_backups: '5', retention_duration_days: '-1', permanent: 'False' } }] } } });
    assert.equal(up.statusCode, 200, up.body);
    const after2 = (up.json() as { policy: { name: string; resources: unknown[]; scheduled_operations: { enabled: boolean; operation_definition: Record<string, unknown> }[] } }).policy;
    assert.equal(after2.name, 'my-plan-2');
    assert.equal(after2.resources.length, 2);
    assert.equal(after2.scheduled_operations[0]!.enabled, false);
    assert.equal(after2.scheduled_operations[0]!.operation_definition.max_backups, 5);

    // Run now (B1): one checkpoint, an item per server, each reaching available.
    const ex = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/checkpoints`, token, payload: { checkpoint: { plan_id: p.id, parameters: { auto_trigger: false } } } });
    assert.equal(ex.statusCode, 200, ex.body);
    const cp = (ex.json() as { checkpoint: { id: string; status: string; extra_info: string; protection_plan: { id: string; resources: { id: string }[] } } }).checkpoint;
    assert.equal(cp.protection_plan.id, p.id);
    assert.deepEqual(JSON.parse(cp.extra_info), { created_by: 'manual' });
    assert.deepEqual(cp.protection_plan.resources.map((x) => x.id).sort(), [s1, s2].sort());
    await svc.app.runner.idle();
    const items = ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cp.id}`, token })).json() as { checkpoint_items: { status: string; resource_id: string; extend_info: { auto_trigger: boolean } }[] }).checkpoint_items;
    assert.deepEqual(items.map((i) => i.status), ['available', 'available']);
    assert.ok(items.every((i) => i.extend_info.auto_trigger === false));
    const byPolicy = (await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/count?policy_id=${String(p.id)}`, token })).json() as { count: number };
    assert.equal(byPolicy.count, 2);

    const del = await svc.req({ method: 'DELETE', url: `/v1/${pid}/policies/${String(p.id)}`, token });
    assert.equal(del.statusCode, 200, del.body);
    const gone = await svc.req({ method: 'GET', url: `/v1/${pid}/policies/${String(p.id)}`, token });
    assert.equal(gone.statusCode, 404);
    assert.equal((gone.json() as { error_code: string }).error_code, 'CSBS.3000');
    // The backups stay.
    assert.equal(((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cp.id}`, token })).json() as { checkpoint_items: unknown[] }).checkpoint_items.length, 2);
  });

  it('refuses bad input with CSBS codes and creates nothing', async () => {
    const s1 = await server('solo', 1);
    const before = await listCount();
    const cases: [unknown, string][] = [
      [{ ...body('bad', []), policy: { ...body('bad', []).policy, provider_id: 'nope' } }, 'CSBS.9001'],
      [body('bad name!', []), 'CSBS.9001'],
      [body('bad', [], {}, 'RRULE:FREQ=HOURLY;BYHOUR=1'), 'CSBS.9001'],
      [body('bad', [], {}, 'RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=0,30'), 'CSBS.9001'],
      [body('bad', [], { max_backups: 100000 }), 'CSBS.9001'],
      [body('bad', [], { day_backups: 3 }), 'CSBS.9001'],
      [body('bad', [{ id: '00000000-0000-4000-8000-000000000000', name: 'ghost' }]), 'CSBS.6000'],
      [{ policy: { ...body('bad', []).policy, resources: [{ id: s1, name: 'x', type: 'OS::Cinder::Volume' }] } }, 'CSBS.6003'],
      [{ policy: { ...body('bad', []).policy, tags: Array.from({ length: 11 }, (_, i) => ({ key: `k${i}`, value: 'v' })) } }, 'CSBS.7000'],
    ];
    for (const [payload, code] of cases) {
      const r = await svc.req({ method: 'POST', url: `/v1/${pid}/policies`, token, payload: payload as object });
      assert.equal(r.statusCode, 400, `${code}: ${r.body}`);
      assert.equal((r.json() as { error_code: string }).error_code, code, r.body);
    }
    assert.equal(await listCount(), before);
    // A server belongs to at most one policy; names are unique.
    assert.equal((await svc.req({ method: 'POST', url: `/v1/${pid}/policies`, token, payload: body('first', [{ id: s1, name: 'solo' }]) })).statusCode, 200);
    const twice = await svc.req({ method: 'POST', url: `/v1/${pid}/policies`, token, payload: body('second', [{ id: s1, name: 'solo' }]) });
    assert.equal((twice.json() as { error_code: string }).error_code, 'CSBS.6004');
    const dup = await svc.req({ method: 'POST', url: `/v1/${pid}/policies`, token, payload: body('first', []) });
    assert.equal((dup.json() as { error_code: string }).error_code, 'CSBS.9007');
  });

  it('runs on its RRULE schedule and keeps max_backups scheduled backups', async () => {
    const s1 = await server('sched', 1);
    clock.t = Date.parse('2026-11-25T10:00:00Z'); // a Wednesday
    const r = await svc.req({ method: 'POST', url: `/v1/${pid}/policies`, token, payload: body('daily', [{ id: s1, name: 'sched' }], { max_backups: 2, permanent: false }, 'BEGIN:VEVENT\r\nRRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=0\r\nEND:VEVENT') });
    assert.equal(r.statusCode, 200, r.body);
    const policyId = (r.json() as { policy: { id: string } }).policy.id;
    await svc.app.scheduler.tick(); // computes the first slot: 11-26 02:00
    for (let day = 0; day < 4; day++) {
      clock.t = Date.parse('2026-11-26T02:00:10Z') + day * 86_400_000;
      const t = await svc.app.scheduler.tick();
      assert.ok(t.fired >= 1, `day ${day}: ${JSON.stringify(t)}`);
      await svc.app.runner.idle();
      await svc.app.runner.idle();
    }
    ({ token } = await svc.login('admin', ADMIN_PASSWORD, 'admin')); // the fake clock moved past the token's life
    const listed = await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?policy_id=${policyId}&sort=created_at:asc`, token });
    assert.equal(listed.statusCode, 200, listed.body);
    const items = (listed.json() as { checkpoint_items: { name: string; created_at: string; extend_info: { auto_trigger: boolean } }[] }).checkpoint_items;
    assert.deepEqual(items.map((i) => i.created_at.slice(0, 10)), ['2026-11-28', '2026-11-29']);
    assert.ok(items.every((i) => i.extend_info.auto_trigger && /^autobk_[0-9a-f]{4}$/.test(i.name)));
  });
});
