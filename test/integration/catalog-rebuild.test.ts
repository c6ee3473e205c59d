/**
 * Recovering from the loss of the catalog (`haven catalog rebuild`, services/catalog-rebuild.ts):
 * the catalog is put back from an older copy, the backups made since are only in the repository;
 * the rebuild gives them their records back in their own projects, and they restore bit-identical
 * through the API. A second run adds nothing; --dry-run adds nothing.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, runCliJson, sha256File, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-rebuild-');
after(() => temp.cleanup());

interface Rebuilt { added: { id: string; projectId: string; name: string }[]; repositoryBackups: number; missingFromRepository: string[]; dryRun: boolean }

async function backUp(svc: TestService, who: { token: string; projectId: string }, volumeId: string): Promise<string> {
  const b = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: volumeId, name: 'b' } } });
  assert.equal(b.statusCode, 200, b.body);
  const job = await svc.waitJob(who.token, who.projectId, (b.json() as { job_id: string }).job_id);
  assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
  return (job.entities as { backup_id: string }).backup_id;
}

describe('haven catalog rebuild', () => {
  it('brings back the records of backups made after the catalog copy, in their own projects, restorable bit-identical', async () => {
    const svc = await startService(temp);
    try {
      const admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const tenant = await svc.tenant('rebuild-tenant');
      const vol = await svc.createVolume(tenant, 'data', 1);
      await overwrite(await svc.volumePath(vol.id), 5 * MiB, randomBytesSeeded(3 * MiB, 61));
      const kept = await backUp(svc, tenant, vol.id);

      // Yesterday's copy of the catalog, taken with the service stopped.
      await svc.app.close();
      const catalogFile = path.join(svc.dataDir, 'catalog.sqlite');
      const copy = path.join(temp.make('copy'), 'catalog.sqlite');
      await fs.copyFile(catalogFile, copy);
      await svc.restart();

      // Work after the copy: a new backup of the tenant's volume (new data), and one of the admin's.
      await overwrite(await svc.volumePath(vol.id), 0, randomBytesSeeded(2 * MiB, 62));
      const want = await sha256File(await svc.volumePath(vol.id));
      const lost = await backUp(svc, tenant, vol.id);
      const adminVol = await svc.createVolume(admin, 'admin-data', 1);
      const lostAdmin = await backUp(svc, admin, adminVol.id);
      // The volume changes again: only a restore of the lost backup brings its bytes back.
      await overwrite(await svc.volumePath(vol.id), 0, randomBytesSeeded(4 * MiB, 64));
      assert.notEqual(await sha256File(await svc.volumePath(vol.id)), want);

      // The catalog is lost and put back from the copy: the newer backups are unknown to it.
      await svc.app.close();
      for (const f of await fs.readdir(svc.dataDir)) if (f.startsWith('catalog.sqlite')) await fs.rm(path.join(svc.dataDir, f));
      await fs.copyFile(copy, catalogFile);

      const env = { HAVEN_DATA_DIR: svc.dataDir };
      const dry = await runCliJson<Rebuilt>(['catalog', 'rebuild', '--dry-run', '--json'], { env });
      assert.equal(dry.dryRun, true);
      assert.deepEqual(dry.added.map((a) => a.id).sort(), [lost, lostAdmin].sort());
      const r = await runCliJson<Rebuilt>(['catalog', 'rebuild', '--json'], { env });
      assert.equal(r.repositoryBackups, 3);
      assert.deepEqual(r.missingFromRepository, []);
      const byId = new Map(r.added.map((a) => [a.id, a]));
      assert.deepEqual([...byId.keys()].sort(), [lost, lostAdmin].sort());
      assert.equal(byId.get(lost)!.projectId, tenant.projectId, 'the tenant\'s backup goes back to the tenant');
      assert.equal(byId.get(lostAdmin)!.projectId, admin.projectId);
      assert.equal((await runCliJson<Rebuilt>(['catalog', 'rebuild', '--json'], { env })).added.length, 0, 'a second run adds nothing');

      await svc.restart();
      const t = tenant; // its token was made before the copy, so the copy knows it
      const shown = await svc.req({ method: 'GET', url: `/v3/${tenant.projectId}/backups/${lost}`, token: t.token });
      assert.equal(shown.statusCode, 200, shown.body);
      assert.equal((shown.json() as { backup: { status: string } }).backup.status, 'available');
      assert.equal((await svc.req({ method: 'GET', url: `/v3/${tenant.projectId}/backups/${kept}`, token: t.token })).statusCode, 200);
      // The admin's backup is not the tenant's.
      assert.equal((await svc.req({ method: 'GET', url: `/v3/${tenant.projectId}/backups/${lostAdmin}`, token: t.token })).statusCode, 404);

      // Restored onto the volume: the bytes of the lost backup.
      const restore = await svc.req({ method: 'POST', url: `/v2/${tenant.projectId}/cloudbackups/${lost}/restore`, token: t.token, payload: { restore: { volume_id: vol.id } } });
      assert.equal(restore.statusCode, 200, restore.body);
      const job = await svc.waitJob(t.token, tenant.projectId, (restore.json() as { job_id: string }).job_id);
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
      assert.equal(await sha256File(await svc.volumePath(vol.id)), want);
    } finally {
      await svc.close();
    }
  });
});
