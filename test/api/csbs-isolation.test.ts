/** CSBS between projects: another project never sees or touches a server backup or policy. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

const PROVIDER = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';

describe('CSBS isolation and providers', () => {
  const temp = new TempDirs('haven-csbs-iso-');
  let svc: TestService;
  before(async () => {
    svc = await startService(temp);
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  it('keeps each project\'s servers, backups and policies to itself', async () => {
    const { token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const other = await svc.tenant('other');
    const v = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, name: 'd' } } });
    const vid = (v.json() as { volume: { id: string } }).volume.id;
    const srv = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 's', block_device_mapping_v2: [{ source_type: 'volume', uuid: vid, boot_index: 0 }] } } });
    const serverId = (srv.json() as { server: { id: string } }).server.id;
    const prot = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/${serverId}/action`, token, payload: { protect: {} } });
    const cpId = (prot.json() as { checkpoint: { id: string } }).checkpoint.id;
    await svc.app.runner.idle();
    const itemId = ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cpId}`, token })).json() as { checkpoint_items: { id: string }[] }).checkpoint_items[0]!.id;
    const pol = await svc.req({
      method: 'POST', url: `/v1/${pid}/policies`, token,
      payload: { policy: { name: 'mine', provider_id: PROVIDER, parameters: { common: {} }, resources: [], scheduled_operations: [{ enabled: true, operation_type: 'backup', operation_definition: {}, trigger: { properties: { pattern: 'RRULE:FREQ=DAILY;BYHOUR=3' } } }] } },
    });
    const policyId = (pol.json() as { policy: { id: string } }).policy.id;

    const o = (url: string, method: 'GET' | 'POST' | 'PUT' | 'DELETE' = 'GET', payload?: object) => svc.req({ method, url: `/v1/${other.projectId}${url}`, token: other.token, ...(payload ? { payload } : {}) });
    assert.equal((await o(`/checkpoint_items/${itemId}`)).statusCode, 404);
    assert.deepEqual(((await o('/checkpoint_items')).json() as { checkpoint_items: unknown[] }).checkpoint_items, []);
    assert.deepEqual((await o('/checkpoint_items/count')).json(), { count: 0 });
    assert.equal((await o(`/providers/${PROVIDER}/checkpoints/${cpId}`, 'DELETE')).statusCode, 404);
    assert.equal((await o(`/providers/${PROVIDER}/resources/${serverId}/action`, 'POST', { protect: {} })).statusCode, 400); // server unknown there (CSBS.6000)
    assert.equal((await o(`/policies/${policyId}`)).statusCode, 404);
    assert.equal((await o(`/policies/${policyId}`, 'DELETE')).statusCode, 404);
    assert.deepEqual(((await o('/policies')).json() as { policies: unknown[] }).policies, []);
    assert.equal((await o(`/csbs_backup/${itemId}/tags`)).statusCode, 404);
    assert.equal((await o('/restores', 'POST', { restore: { provider_id: PROVIDER, checkpoint_id: cpId, parameters: { checkpoint_item_id: itemId, power_on: true, targets: { server_id: serverId, volumes: [{ backup_id: 'x', volume_id: vid }] } } } })).statusCode, 404);
    // A token of the other project on this project's paths: 403.
    assert.equal((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/${itemId}`, token: other.token })).statusCode, 403);
    // Still there for the owner.
    assert.equal((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/${itemId}`, token })).statusCode, 200);
    assert.equal((await svc.req({ method: 'GET', url: `/v1/${pid}/policies/${policyId}`, token })).statusCode, 200);

    const providers = (await svc.req({ method: 'GET', url: `/v1/${pid}/providers`, token })).json() as { providers: { id: string }[] };
    assert.deepEqual(providers.providers.map((p) => p.id), [PROVIDER]);
    assert.equal((await svc.req({ method: 'GET', url: `/v1/${pid}/providers/${PROVIDER}`, token })).statusCode, 200);
    const unknownRoute = await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoints_nope`, token });
    assert.equal(unknownRoute.statusCode, 404);
  });
});
