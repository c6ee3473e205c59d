/**
 * CSBS end to end: a server with three volumes of known data is backed up (B2), its backup polled
 * to available (B4/B3), the data changed, the server restored (S1) and every volume compared byte
 * for byte. The snapshot moment is tested with a thaw hook that overwrites the volumes right after
 * the snapshots: those writes must not leak into the backup.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';

const PROVIDER = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';

describe('CSBS server backup and restore', () => {
  const temp = new TempDirs('haven-csbs-');
  let svc: TestService;
  let token: string;
  let pid: string;
  before(async () => {
    // The thaw hook scribbles over every volume right after the snapshots were taken.
    svc = await startService(temp, { thawCommand: 'for f in $HAVEN_VOLUME_PATHS; do printf "WRITTEN-AFTER-SNAPSHOT" | dd of="$f" bs=1 seek=1024 conv=notrunc status=none; done' });
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const volumeWithData = async (name: string, seed: number) => {
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, name } } });
    const id = (r.json() as { volume: { id: string } }).volume.id;
    const file = (await svc.app.catalog.volumes.getVolumeById(id))!.path;
    await overwrite(file, 0, randomBytesSeeded(2 * MiB, seed));
    await overwrite(file, 500 * MiB, randomBytesSeeded(1 * MiB, seed + 100));
    return { id, file };
  };

  async function waitItem(itemId: string, done: (status: string) => boolean) {
    for (let i = 0; i < 2400; i++) {
      const r = await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/${itemId}`, token });
      if (r.statusCode === 404) return null;
      assert.equal(r.statusCode, 200, r.body);
      const item = (r.json() as { checkpoint_item: Record<string, unknown> }).checkpoint_item;
      if (done(String(item.status))) return item;
      await new Promise((res) => setTimeout(res, 25));
    }
    throw new Error('item did not settle');
  }

  it('backs up all volumes at one moment and restores them bit-identical', async () => {
    const vols = [await volumeWithData('sys', 1), await volumeWithData('data1', 2), await volumeWithData('data2', 3)];
    const srv = await svc.req({
      method: 'POST', url: `/v2.1/${pid}/servers`, token,
      payload: { server: { name: 'app1', block_device_mapping_v2: vols.map((v, i) => ({ source_type: 'volume', uuid: v.id, boot_index: i === 0 ? 0 : -1 })) } },
    });
    assert.equal(srv.statusCode, 202, srv.body);
    const serverId = (srv.json() as { server: { id: string } }).server.id;
    const atBackup = await Promise.all(vols.map((v) => sha256File(v.file)));

    const prot = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/${serverId}/action`, token, payload: { protect: { backup_name: 'app1_b1', description: 'before upgrade' } } });
    assert.equal(prot.statusCode, 200, prot.body);
    const cp = (prot.json() as { checkpoint: { id: string; status: string; protection_plan: { id: string; name: string; resources: { id: string }[] } } }).checkpoint;
    assert.equal(cp.status, 'protecting');
    assert.match(cp.protection_plan.id, /^fake_/);
    assert.equal(cp.protection_plan.name, `server protect plan for ${serverId}`);
    assert.deepEqual(cp.protection_plan.resources.map((r) => r.id), [serverId]);

    // Terraform's flow: list the checkpoint's items, poll the item to available.
    const list = await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cp.id}`, token });
    const items = (list.json() as { checkpoint_items: { id: string }[] }).checkpoint_items;
    assert.equal(items.length, 1);
    const item = (await waitItem(items[0]!.id, (st) => st === 'available' || st === 'error'))!;
    assert.equal(item.status, 'available', JSON.stringify(item));
    assert.equal(item.name, 'app1_b1');
    assert.equal(item.resource_id, serverId);
    const ext = item.extend_info as { volume_backups: { id: string; source_volume_id: string; bootable: boolean }[]; progress: number };
    assert.equal(ext.progress, 100);
    assert.deepEqual(ext.volume_backups.map((b) => b.source_volume_id).sort(), vols.map((v) => v.id).sort());

    // The thaw hook wrote into the volumes after the snapshots: the live volumes changed ...
    const afterThaw = await Promise.all(vols.map((v) => sha256File(v.file)));
    for (let i = 0; i < 3; i++) assert.notEqual(afterThaw[i], atBackup[i]);

    // The volume backups are VBS backups too, but deletable only through CSBS.
    for (const b of ext.volume_backups) {
      const shown = await svc.req({ method: 'GET', url: `/v3/${pid}/backups/${b.id}`, token });
      assert.equal((shown.json() as { backup: { status: string } }).backup.status, 'available');
      const del = await svc.req({ method: 'DELETE', url: `/v3/${pid}/backups/${b.id}`, token });
      assert.equal(del.statusCode, 403, del.body);
    }

    // Change the data again, then restore the server.
    for (const [i, v] of vols.entries()) await overwrite(v.file, 100 * MiB, randomBytesSeeded(MiB, 50 + i));
    const res = await svc.req({
      method: 'POST', url: `/v1/${pid}/restores`, token,
      payload: { restore: { provider_id: PROVIDER, checkpoint_id: cp.id, parameters: { checkpoint_item_id: item.id, power_on: true, targets: { server_id: serverId, volumes: ext.volume_backups.map((b) => ({ backup_id: b.id, volume_id: b.source_volume_id })) } } } },
    });
    assert.equal(res.statusCode, 200, res.body);
    assert.equal((res.json() as { restore: { status: string } }).restore.status, 'in_progress');
    const back = (await waitItem(String(item.id), (st) => st === 'available'))!;
    assert.equal(back.status, 'available');
    await svc.app.runner.idle();
    // ... but the restore brings back exactly the snapshot moment, not the thaw hook's writes.
    for (const [i, v] of vols.entries()) assert.equal(await sha256File(v.file), atBackup[i], `volume ${i}`);
    // The volumes were locked for the restore and are attached (in-use) again after it.
    for (const v of vols) assert.equal((await svc.app.catalog.volumes.getVolumeById(v.id))!.status, 'in-use');

    // Restore onto another server, disk by disk through the mapping: its volumes get the same bytes.
    const others = [await volumeWithData('o-sys', 91), await volumeWithData('o-d1', 92), await volumeWithData('o-d2', 93)];
    const osrv = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'app2', block_device_mapping_v2: others.map((v, i) => ({ source_type: 'volume', uuid: v.id, boot_index: i === 0 ? 0 : -1 })) } } });
    const otherId = (osrv.json() as { server: { id: string } }).server.id;
    const mapping = ext.volume_backups.map((b) => ({ backup_id: b.id, volume_id: others[vols.findIndex((v) => v.id === b.source_volume_id)]!.id }));
    const res2 = await svc.req({ method: 'POST', url: `/v1/${pid}/restores`, token, payload: { restore: { provider_id: PROVIDER, checkpoint_id: cp.id, parameters: { checkpoint_item_id: item.id, power_on: false, targets: { server_id: otherId, volumes: mapping } } } } });
    assert.equal(res2.statusCode, 200, res2.body);
    await waitItem(String(item.id), (st) => st === 'available');
    await svc.app.runner.idle();
    for (const [i, v] of others.entries()) assert.equal(await sha256File(v.file), atBackup[i], `other server's volume ${i}`);

    // Delete the backup record (B6): the item goes away, and so do its volume backups.
    const del = await svc.req({ method: 'DELETE', url: `/v1/${pid}/providers/${PROVIDER}/checkpoints/${cp.id}`, token });
    assert.equal(del.statusCode, 200, del.body);
    assert.deepEqual(del.json(), {});
    assert.equal(await waitItem(String(item.id), () => false).catch(() => 'stuck'), null);
    const gone = await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/${item.id}`, token });
    assert.equal(gone.statusCode, 404);
    assert.equal((gone.json() as { error_code: string }).error_code, 'CSBS.3001');
    for (const b of ext.volume_backups) assert.equal((await svc.req({ method: 'GET', url: `/v3/${pid}/backups/${b.id}`, token })).statusCode, 404);
  });

  it('refuses partial restores, unknown servers and wrong providers with CSBS codes', async () => {
    const vols = [await volumeWithData('a', 7), await volumeWithData('b', 8)];
    const srv = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'two', block_device_mapping_v2: vols.map((v, i) => ({ source_type: 'volume', uuid: v.id, boot_index: i === 0 ? 0 : -1 })) } } });
    const serverId = (srv.json() as { server: { id: string } }).server.id;
    const wrong = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/00000000-0000-4000-8000-000000000000/resources/${serverId}/action`, token, payload: { protect: {} } });
    assert.equal(wrong.statusCode, 400);
    assert.equal((wrong.json() as { error_code: string }).error_code, 'CSBS.9001');
    const ghost = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/00000000-0000-4000-8000-000000000000/action`, token, payload: { protect: {} } });
    assert.equal(ghost.statusCode, 400);
    assert.equal((ghost.json() as { error_code: string }).error_code, 'CSBS.6000');

    const prot = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/${serverId}/action`, token, payload: { protect: {} } });
    const cpId = (prot.json() as { checkpoint: { id: string } }).checkpoint.id;
    const items = ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cpId}`, token })).json() as { checkpoint_items: { id: string; name: string }[] }).checkpoint_items;
    assert.match(items[0]!.name, /^manualbk_[0-9a-f]{4}$/);
    const item = (await waitItem(items[0]!.id, (st) => st === 'available'))!;
    const vb = (item.extend_info as { volume_backups: { id: string; source_volume_id: string }[] }).volume_backups;
    const before = await Promise.all(vols.map((v) => sha256File(v.file)));
    const partial = await svc.req({
      method: 'POST', url: `/v1/${pid}/restores`, token,
      payload: { restore: { provider_id: PROVIDER, checkpoint_id: cpId, parameters: { checkpoint_item_id: item.id, power_on: false, targets: { server_id: serverId, volumes: [{ backup_id: vb[0]!.id, volume_id: vb[0]!.source_volume_id }] } } } },
    });
    assert.equal(partial.statusCode, 400, partial.body);
    assert.equal((partial.json() as { error_code: string }).error_code, 'CSBS.6018');
    assert.deepEqual(await Promise.all(vols.map((v) => sha256File(v.file))), before);
    const count = await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/count?resource_id=${serverId}`, token });
    assert.deepEqual(count.json(), { count: 1 });
  });

  it('answers check_protectable, check_restorable and quotas', async () => {
    const vols = [await volumeWithData('q1', 21)];
    const srv = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'q', block_device_mapping_v2: [{ source_type: 'volume', uuid: vols[0]!.id, boot_index: 0 }] } } });
    const serverId = (srv.json() as { server: { id: string } }).server.id;
    const bare = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'empty' } } });
    const bareId = (bare.json() as { server: { id: string } }).server.id;
    const r1 = await svc.req({
      method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/action`, token,
      payload: { check_protectable: [{ resource_id: serverId, resource_type: 'OS::Nova::Server' }, { resource_id: bareId, resource_type: 'OS::Nova::Server' }, { resource_id: serverId, resource_type: 'OS::Cinder::Volume' }] },
    });
    assert.equal(r1.statusCode, 200, r1.body);
    const prot = (r1.json() as { protectable: { result: boolean; error_code?: string }[] }).protectable;
    assert.deepEqual(prot.map((p) => [p.result, p.error_code]), [[true, undefined], [false, 'CSBS.6007'], [false, 'CSBS.6003']]);

    const prot2 = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/${serverId}/action`, token, payload: { protect: { backup_name: 'q_b' } } });
    const cpId = (prot2.json() as { checkpoint: { id: string } }).checkpoint.id;
    const itemId = ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cpId}`, token })).json() as { checkpoint_items: { id: string }[] }).checkpoint_items[0]!.id;
    const item = (await waitItem(itemId, (st) => st === 'available'))!;
    const vb = (item.extend_info as { volume_backups: { id: string }[] }).volume_backups;
    const r2 = await svc.req({
      method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/action`, token,
      payload: { check_restorable: [
        { checkpoint_item_id: itemId, target: { resource_id: serverId, resource_type: 'OS::Nova::Server', volumes: [{ backup_id: vb[0]!.id, volume_id: vols[0]!.id }] } },
        { checkpoint_item_id: itemId, target: { resource_id: serverId, resource_type: 'OS::Nova::Server', volumes: [] } },
        { checkpoint_item_id: itemId, target: { resource_id: bareId, resource_type: 'OS::Nova::Server', volumes: [{ backup_id: vb[0]!.id, volume_id: vols[0]!.id }] } },
      ] },
    });
    assert.equal(r2.statusCode, 200, r2.body);
    const rest = (r2.json() as { restorable: { result: boolean; error_code: string }[] }).restorable;
    assert.deepEqual(rest.map((x) => [x.result, x.error_code]), [[true, ''], [false, 'CSBS.6018'], [false, 'CSBS.6020']]);

    const q = (await svc.req({ method: 'GET', url: `/v1/${pid}/quotas`, token })).json() as { quotas: { resources: { type: string; used: number; unit?: string }[] } };
    const backups = q.quotas.resources.find((r) => r.type === 'backups')!;
    assert.equal(backups.used, ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/count`, token })).json() as { count: number }).count);
    assert.equal(q.quotas.resources.find((r) => r.type === 'backup_capacity')!.unit, 'GB');
  });
});

describe('CSBS quotas', () => {
  const temp = new TempDirs('haven-csbs-quota-');
  let svc: TestService;
  before(async () => {
    svc = await startService(temp, { quotaBackups: 2 });
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  it('a server backup beyond the backups quota is refused with CSBS.9006 and creates nothing', async () => {
    const { token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    const vol = await svc.createVolume({ token, projectId: pid }, 'quota-vol', 1);
    const srv = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'qs', block_device_mapping_v2: [{ source_type: 'volume', uuid: vol.id, boot_index: 0 }] } } });
    const serverId = (srv.json() as { server: { id: string } }).server.id;
    const count = async () => ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items/count`, token })).json() as { count: number }).count;
    const protect = () => svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/${serverId}/action`, token, payload: { protect: { backup_name: 'qb' } } });
    for (let i = 0; i < 2; i++) {
      const r = await protect();
      assert.equal(r.statusCode, 200, r.body);
      const cp = (r.json() as { checkpoint: { id: string } }).checkpoint.id;
      // One at a time: a server being backed up is refused (CSBS.6005), which is not what this tests.
      for (let k = 0; k < 2400; k++) {
        const items = ((await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cp}`, token })).json() as { checkpoint_items: { status: string }[] }).checkpoint_items;
        if (items.every((x) => x.status === 'available')) break;
        await new Promise((res) => setTimeout(res, 25));
      }
    }
    assert.equal(await count(), 2);
    const refused = await protect();
    assert.equal(refused.statusCode, 400, refused.body);
    const err = refused.json() as { error_code: string; error_msg: string };
    assert.equal(err.error_code, 'CSBS.9006');
    assert.match(err.error_msg, /^Quota exceeded for resources: backups/);
    assert.equal(await count(), 2, 'nothing was created');
    const q = (await svc.req({ method: 'GET', url: `/v1/${pid}/quotas`, token })).json() as { quotas: { resources: { type: string; quota: number; used: number }[] } };
    assert.deepEqual(q.quotas.resources.find((r) => r.type === 'backups'), { type: 'backups', quota: 2, used: 2 });
  });
});
