/**
 * The embedded default is its own agent: `haven serve` lists its host among the agents, holds its
 * volumes itself (whatever the machine's name becomes), and is drained like any host.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-embedded-agent-');
after(() => temp.cleanup());

describe('the embedded agent', () => {
  it('lists itself, keeps its volumes across a new host name, takes any os-volume-manage host without agents, and drains', async () => {
    const roots = temp.make('roots');
    const svc = await startService(temp, { hostName: 'box-1', volumeRoots: [roots] });
    try {
      const who = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const agents = async (): Promise<Array<Record<string, unknown>>> => {
        const r = await svc.req({ method: 'GET', url: '/haven/v1/agents', token: who.token });
        assert.equal(r.statusCode, 200, r.body);
        return (r.json() as { agents: Array<Record<string, unknown>> }).agents;
      };
      assert.deepEqual((await agents()).map((a) => [a.host, a.embedded, a.online, a.draining, a.volumes]), [['box-1', true, true, false, 0]]);
      const v = await svc.req({ method: 'POST', url: `/v3/${who.projectId}/volumes`, token: who.token, payload: { volume: { size: 1, name: 'v' } } });
      assert.equal(v.statusCode, 202, v.body);
      const vol = (v.json() as { volume: { id: string; 'os-vol-host-attr:host': string } }).volume;
      assert.match(vol['os-vol-host-attr:host'], /^box-1@files#/);
      assert.equal((await svc.app.catalog.volumes.getVolumeById(vol.id))!.host, null, 'the process\'s own volume has no host name in the catalog');
      assert.equal((await agents())[0]!.volumes, 1);

      // Adoption: without agents, whatever host a Cinder client names is this process (as before
      // agents); the same file twice is refused whatever the name.
      const img = path.join(roots, 'a.img');
      await fs.writeFile(img, Buffer.alloc(0));
      await fs.truncate(img, 8 * MiB);
      const manage = (host: string) => svc.req({ method: 'POST', url: `/v3/${who.projectId}/os-volume-manage`, token: who.token, payload: { volume: { host, ref: { 'source-name': img }, name: 'a' } } });
      const any = await manage('elsewhere@lvm#pool');
      assert.equal(any.statusCode, 202, any.body);
      assert.match((any.json() as { volume: { 'os-vol-host-attr:host': string } }).volume['os-vol-host-attr:host'], /^box-1@adopted#/);
      const twice = await manage('box-1@adopted#pool');
      assert.equal(twice.statusCode, 400, twice.body);
      assert.match(twice.body, /already managed/);

      // The machine gets another name: its volumes stay its own and back up.
      await svc.restart({ hostName: 'box-2' });
      const who2 = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      await overwrite(await svc.volumePath(vol.id), 0, randomBytesSeeded(2 * MiB, 3));
      const b = await svc.req({ method: 'POST', url: `/v2/${who2.projectId}/cloudbackups`, token: who2.token, payload: { backup: { volume_id: vol.id, name: 'b' } } });
      assert.equal(b.statusCode, 200, b.body);
      assert.equal((await svc.waitJob(who2.token, who2.projectId, (b.json() as { job_id: string }).job_id)).status, 'SUCCESS');
      const shown = await svc.req({ method: 'GET', url: `/v3/${who2.projectId}/volumes/${vol.id}`, token: who2.token });
      assert.match((shown.json() as { volume: { 'os-vol-host-attr:host': string } }).volume['os-vol-host-attr:host'], /^box-2@files#/);

      // Drained: no new volumes here (503, nothing made), undrained: again.
      assert.equal((await svc.req({ method: 'POST', url: '/haven/v1/agents/box-2/drain', token: who2.token })).statusCode, 200);
      const before = (await fs.readdir(path.join(svc.dataDir, 'volumes'))).length;
      const refused = await svc.req({ method: 'POST', url: `/v3/${who2.projectId}/volumes`, token: who2.token, payload: { volume: { size: 1, name: 'w' } } });
      assert.equal(refused.statusCode, 503, refused.body);
      assert.match(refused.body, /no host can take a new volume/);
      assert.equal((await fs.readdir(path.join(svc.dataDir, 'volumes'))).length, before);
      assert.equal((await svc.req({ method: 'POST', url: '/haven/v1/agents/box-2/undrain', token: who2.token })).statusCode, 200);
      assert.equal((await svc.req({ method: 'POST', url: `/v3/${who2.projectId}/volumes`, token: who2.token, payload: { volume: { size: 1, name: 'w' } } })).statusCode, 202);
    } finally {
      await svc.close();
    }
  });
});
