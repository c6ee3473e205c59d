/** CSBS tags: both families (backups, policies) — add, overwrite, batch, remove, aggregate, filter. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

const PROVIDER = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';

describe('CSBS tags', () => {
  const temp = new TempDirs('haven-csbs-tags-');
  let svc: TestService;
  let token: string;
  let pid: string;
  const ids: Record<'backup' | 'policy', string> = { backup: '', policy: '' };
  before(async () => {
    svc = await startService(temp);
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
    const v = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, name: 'd' } } });
    const vid = (v.json() as { volume: { id: string } }).volume.id;
    const srv = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 's', block_device_mapping_v2: [{ source_type: 'volume', uuid: vid, boot_index: 0 }] } } });
    const serverId = (srv.json() as { server: { id: string } }).server.id;
    const pol = await svc.req({
      method: 'POST', url: `/v1/${pid}/policies`, token,
      payload: { policy: { name: 'tagged', provider_id: PROVIDER, parameters: { common: {} }, resources: [{ id: serverId, type: 'OS::Nova::Server', name: 's' }], tags: [{ key: 'env', value: 'prod' }], scheduled_operations: [{ enabled: false, operation_type: 'backup', operation_definition: { max_backups: 3 }, trigger: { properties: { pattern: 'RRULE:FREQ=DAILY;BYHOUR=3;BYMINUTE=0' } } }] } },
    });
    ids.policy = (pol.json() as { policy: { id: string } }).policy.id;
    // A backup made by the policy carries its tags.
    const ex = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/checkpoints`, token, payload: { checkpoint: { plan_id: ids.policy, parameters: {} } } });
    const cpId = (ex.json() as { checkpoint: { id: string } }).checkpoint.id;
    await svc.app.runner.idle();
    ids.backup = ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cpId}`, token })).json() as { checkpoint_items: { id: string }[] }).checkpoint_items[0]!.id;
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  for (const [segment, kind] of [['csbs_backup', 'backup'], ['csbs_backup_policy', 'policy']] as const) {
    it(`${segment}: add, overwrite, batch, remove, list, aggregate and filter`, async () => {
      const base = `/v1/${pid}/${segment}/${ids[kind]}/tags`;
      const list = async () => ((await svc.req({ method: 'GET', url: base, token })).json() as { tags: { key: string; value: string }[] }).tags.sort((a, b) => a.key.localeCompare(b.key));
      assert.deepEqual(await list(), [{ key: 'env', value: 'prod' }]);
      assert.equal((await svc.req({ method: 'POST', url: base, token, payload: { tag: { key: ' team ', value: 'ops' } } })).statusCode, 204);
      assert.equal((await svc.req({ method: 'POST', url: base, token, payload: { tag: { key: 'env', value: 'dev' } } })).statusCode, 204);
      assert.deepEqual(await list(), [{ key: 'env', value: 'dev' }, { key: 'team', value: 'ops' }]);
      assert.equal((await svc.req({ method: 'POST', url: `${base}/action`, token, payload: { action: 'create', tags: [{ key: 'a', value: '1' }, { key: 'b', value: '2' }] } })).statusCode, 204);
      assert.equal((await svc.req({ method: 'POST', url: `${base}/action`, token, payload: { action: 'delete', tags: [{ key: 'a', value: 'not-1' }, { key: 'b' }, { key: 'absent' }] } })).statusCode, 204);
      assert.deepEqual((await list()).map((t) => t.key), ['a', 'env', 'team']);
      const del = await svc.req({ method: 'DELETE', url: `${base}/a`, token });
      assert.equal(del.statusCode, 204);
      const missing = await svc.req({ method: 'DELETE', url: `${base}/a`, token });
      assert.equal(missing.statusCode, 404);
      assert.equal((missing.json() as { error_code: string }).error_code, 'CSBS.7001');
      // At most 10 tags: an 11th is refused and nothing changes.
      const many = Array.from({ length: 9 }, (_, i) => ({ key: `k${i}`, value: 'v' }));
      const tooMany = await svc.req({ method: 'POST', url: `${base}/action`, token, payload: { action: 'create', tags: many } });
      assert.equal(tooMany.statusCode, 400);
      assert.equal((tooMany.json() as { error_code: string }).error_code, 'CSBS.7000');
      assert.deepEqual((await list()).map((t) => t.key), ['env', 'team']);
      const bad = await svc.req({ method: 'POST', url: `${base}/action`, token, payload: { action: 'update', tags: [{ key: 'x', value: 'y' }] } });
      assert.equal(bad.statusCode, 400);

      const all = (await svc.req({ method: 'GET', url: `/v1/${pid}/${segment}/tags`, token })).json() as { tags: { key: string; values: string[] }[] };
      assert.deepEqual(all.tags.find((t) => t.key === 'team'), { key: 'team', values: ['ops'] });
      const filter = async (body: object) => (await svc.req({ method: 'POST', url: `/v1/${pid}/${segment}/resource_instances/action`, token, payload: body })).json() as { total_count: number; resources?: { resource_id: string }[] };
      assert.deepEqual((await filter({ action: 'filter', tags: [{ key: 'team', values: ['ops', 'x'] }], limit: '10', offset: '0' })).resources!.map((r) => r.resource_id), [ids[kind]]);
      assert.equal((await filter({ action: 'count', tags: [{ key: 'team', values: ['dev'] }] })).total_count, 0);
      assert.equal((await filter({ action: 'count', not_tags_any: [{ key: 'env', values: [] }] })).total_count, 0);
      assert.equal((await filter({ action: 'count', tags_any: [{ key: 'nope', values: [] }, { key: 'env', values: ['dev'] }] })).total_count, 1);
    });
  }

  it('an unknown resource is 404 in the family\'s terms', async () => {
    const r = await svc.req({ method: 'GET', url: `/v1/${pid}/csbs_backup/00000000-0000-4000-8000-000000000000/tags`, token });
    assert.equal(r.statusCode, 404);
    assert.equal((r.json() as { error_code: string }).error_code, 'CSBS.3001');
    const p = await svc.req({ method: 'GET', url: `/v1/${pid}/csbs_backup_policy/00000000-0000-4000-8000-000000000000/tags`, token });
    assert.equal((p.json() as { error_code: string }).error_code, 'CSBS.3000');
  });
});
