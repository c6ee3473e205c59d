/** The server inventory (Nova subset): servers made of volumes, attachments, isolation. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

describe('servers', () => {
  const temp = new TempDirs('haven-servers-');
  let svc: TestService;
  let token: string;
  let pid: string;
  before(async () => {
    svc = await startService(temp);
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const volume = async (name: string) => {
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, name } } });
    return (r.json() as { volume: { id: string } }).volume.id;
  };
  const volumeStatus = async (id: string) => ((await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${id}`, token })).json() as { volume: { status: string } }).volume.status;

  it('creates a server from volumes, attaches and detaches, and deletes it leaving the volumes', async () => {
    const [sys, data1, data2] = [await volume('sys'), await volume('data1'), await volume('data2')];
    const r = await svc.req({
      method: 'POST', url: `/v2.1/${pid}/servers`, token,
      payload: { server: { name: 'web1', block_device_mapping_v2: [{ source_type: 'volume', uuid: data1, boot_index: -1 }, { source_type: 'volume', uuid: sys, boot_index: 0, destination_type: 'volume' }] } },
    });
    assert.equal(r.statusCode, 202, r.body);
    const id = (r.json() as { server: { id: string } }).server.id;
    const shown = (await svc.req({ method: 'GET', url: `/v2.1/${pid}/servers/${id}`, token })).json() as { server: Record<string, unknown> };
    assert.equal(shown.server.status, 'ACTIVE');
    assert.deepEqual((shown.server['os-extended-volumes:volumes_attached'] as { id: string }[]).map((v) => v.id).sort(), [sys, data1].sort());
    const att = (await svc.req({ method: 'GET', url: `/v2.1/${pid}/servers/${id}/os-volume_attachments`, token })).json() as { volumeAttachments: { volumeId: string; device: string }[] };
    assert.deepEqual(att.volumeAttachments.map((a) => [a.device, a.volumeId]), [['/dev/vda', sys], ['/dev/vdb', data1]]);
    assert.equal(await volumeStatus(sys), 'in-use');

    // An attached volume cannot be attached again, deleted, or restored onto by VBS.
    const again = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'x', block_device_mapping_v2: [{ source_type: 'volume', uuid: sys, boot_index: 0 }] } } });
    assert.equal(again.statusCode, 400, again.body);
    assert.equal((await svc.req({ method: 'GET', url: `/v2.1/${pid}/servers?name=x`, token })).json().servers.length, 0);
    assert.equal((await svc.req({ method: 'DELETE', url: `/v3/${pid}/volumes/${sys}`, token })).statusCode, 400);

    const add = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers/${id}/os-volume_attachments`, token, payload: { volumeAttachment: { volumeId: data2 } } });
    assert.equal(add.statusCode, 200, add.body);
    assert.equal((add.json() as { volumeAttachment: { device: string } }).volumeAttachment.device, '/dev/vdc');
    const detach = await svc.req({ method: 'DELETE', url: `/v2.1/${pid}/servers/${id}/os-volume_attachments/${data1}`, token });
    assert.equal(detach.statusCode, 202);
    assert.equal(await volumeStatus(data1), 'available');

    const list = (await svc.req({ method: 'GET', url: `/v2.1/${pid}/servers/detail`, token })).json() as { servers: { id: string }[] };
    assert.ok(list.servers.some((x) => x.id === id));
    assert.equal((await svc.req({ method: 'DELETE', url: `/v2.1/${pid}/servers/${id}`, token })).statusCode, 204);
    assert.equal((await svc.req({ method: 'GET', url: `/v2.1/${pid}/servers/${id}`, token })).statusCode, 404);
    for (const v of [sys, data1, data2]) assert.equal(await volumeStatus(v), 'available');
  });

  it('refuses unknown volumes and another project\'s servers', async () => {
    const bad = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'ghost', block_device_mapping_v2: [{ source_type: 'volume', uuid: '00000000-0000-4000-8000-000000000000', boot_index: 0 }] } } });
    assert.equal(bad.statusCode, 404, bad.body);
    const sys = await volume('mine');
    const r = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'mine', block_device_mapping_v2: [{ source_type: 'volume', uuid: sys, boot_index: 0 }] } } });
    const id = (r.json() as { server: { id: string } }).server.id;
    const other = await svc.tenant('other');
    assert.equal((await svc.req({ method: 'GET', url: `/v2.1/${other.projectId}/servers/${id}`, token: other.token })).statusCode, 404);
    assert.equal((await svc.req({ method: 'DELETE', url: `/v2.1/${other.projectId}/servers/${id}`, token: other.token })).statusCode, 404);
    assert.equal((await svc.req({ method: 'GET', url: `/v2.1/${pid}/servers/${id}`, token: other.token })).statusCode, 403);
    assert.equal((await svc.req({ method: 'GET', url: `/v2.1/${pid}/servers/${id}`, token })).statusCode, 200);
  });
});
