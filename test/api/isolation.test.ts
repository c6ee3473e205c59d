/**
 * Tenant isolation: a token works only on its own project's paths (403 elsewhere, 401 without
 * one), and through its own paths a tenant cannot see, show, delete, back up or restore another
 * tenant's volumes, snapshots, backups or jobs: 404, and nothing changes (checked with the owner's
 * token and in the catalog). Lists hold only the caller's resources.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { InjectOptions } from 'fastify';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';
import { assertCinderError, assertSameBytes, assertVbsError, createVolume, jobCount, sparseCopy } from '../helpers/api.ts';

interface Tenant {
  token: string;
  projectId: string;
  userId: string;
}

describe('tenant isolation', () => {
  const temp = new TempDirs('haven-isolation-');
  let svc: TestService;
  let a: Tenant;
  let b: Tenant;
  let admin: Tenant;
  // B's resources
  let volB: { id: string; path: string };
  let volBCopy: string;
  let snapB: string;
  let backupB: string;
  let jobB: string;
  // A's resources
  let volA: { id: string; path: string };
  let backupA: string;
  const NIL = '00000000-0000-4000-8000-000000000000';

  const backupVbs = async (t: Tenant, volumeId: string, name: string) => {
    const r = await svc.req({ method: 'POST', url: `/v2/${t.projectId}/cloudbackups`, token: t.token, payload: { backup: { volume_id: volumeId, name } } });
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { job_id: string }).job_id;
  };

  before(async () => {
    svc = await startService(temp);
    admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
    a = await svc.tenant('tenant-a');
    b = await svc.tenant('tenant-b');
    volB = await createVolume(svc, b.token, b.projectId, { name: 'b-disk' });
    await overwrite(volB.path, 0, randomBytesSeeded(2 * MiB, 21));
    const s = await svc.req({ method: 'POST', url: `/v3/${b.projectId}/snapshots`, token: b.token, payload: { snapshot: { volume_id: volB.id, name: 'b-snap' } } });
    assert.equal(s.statusCode, 202, s.body);
    snapB = (s.json() as { snapshot: { id: string } }).snapshot.id;
    volA = await createVolume(svc, a.token, a.projectId, { name: 'a-disk' });
    await overwrite(volA.path, 0, randomBytesSeeded(1 * MiB, 22));
    // Both full backups run at once (job concurrency 2).
    jobB = await backupVbs(b, volB.id, 'b-backup');
    const jobA = await backupVbs(a, volA.id, 'a-backup');
    const [jb, ja] = [await svc.waitJob(b.token, b.projectId, jobB), await svc.waitJob(a.token, a.projectId, jobA)];
    assert.equal(jb.status, 'SUCCESS', JSON.stringify(jb));
    assert.equal(ja.status, 'SUCCESS', JSON.stringify(ja));
    backupB = (jb.entities as { backup_id: string }).backup_id;
    backupA = (ja.entities as { backup_id: string }).backup_id;
    volBCopy = path.join(temp.make('copy'), 'b.img');
    await sparseCopy(volB.path, volBCopy);
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  /** Every path of the API with a {projectId}, from the OpenAPI document. */
  const projectRoutes = async (): Promise<{ method: string; url: string }[]> => {
    const doc = (await svc.req({ method: 'GET', url: '/openapi.json' })).json() as { paths: Record<string, Record<string, unknown>> };
    const out: { method: string; url: string }[] = [];
    for (const [p, ops] of Object.entries(doc.paths)) {
      if (!p.includes('{projectId}')) continue;
      for (const m of Object.keys(ops)) {
        if (!['get', 'delete', 'post', 'put'].includes(m)) continue;
        out.push({ method: m.toUpperCase(), url: p.replace('{projectId}', b.projectId).replace(/\{[^}]+\}/g, NIL) });
      }
    }
    return out;
  };

  it('a token of A (or the admin) on any of B\'s GET/DELETE paths: 403; without or with a bad token: 401', async () => {
    const routes = (await projectRoutes()).filter((r) => r.method === 'GET' || r.method === 'DELETE');
    assert.ok(routes.length >= 30, `only ${routes.length} routes`);
    for (const r of routes) {
      // Keystone's /v3/projects/{id} is open to an admin by design; the project APIs are not.
      const foreign = r.url.startsWith('/v3/projects/') ? [a.token] : [a.token, admin.token];
      for (const token of foreign) {
        const res = await svc.req({ method: r.method as 'GET', url: r.url, token });
        assert.equal(res.statusCode, 403, `${r.method} ${r.url} with a foreign token: ${res.statusCode} ${res.body}`);
      }
      const none = await svc.req({ method: r.method as 'GET', url: r.url });
      assert.equal(none.statusCode, 401, `${r.method} ${r.url} without a token: ${none.statusCode} ${none.body}`);
      const bad = await svc.req({ method: r.method as 'GET', url: r.url, token: 'not-a-token' });
      assert.equal(bad.statusCode, 401, `${r.method} ${r.url} with a bad token: ${bad.statusCode} ${bad.body}`);
    }
  });

  it('a token of A on B\'s write paths with valid bodies: 403 in the envelope of the API family, nothing changes', async () => {
    const jobsBefore = await jobCount(svc);
    const bBackups = await svc.app.catalog.backups.countBackups(b.projectId, {});
    const bVolumes = await svc.app.catalog.volumes.countVolumes(b.projectId);
    const P = b.projectId;
    const cinder: InjectOptions[] = [
      { method: 'POST', url: `/v3/${P}/volumes`, payload: { volume: { size: 1, name: 'intruder' } } },
      { method: 'DELETE', url: `/v3/${P}/volumes/${volB.id}` },
      { method: 'DELETE', url: `/v2/${P}/volumes/${volB.id}` },
      { method: 'POST', url: `/v3/${P}/snapshots`, payload: { snapshot: { volume_id: volB.id } } },
      { method: 'DELETE', url: `/v3/${P}/snapshots/${snapB}` },
      { method: 'POST', url: `/v3/${P}/backups`, payload: { backup: { volume_id: volB.id, name: 'intruder' } } },
      { method: 'POST', url: `/v2/${P}/backups`, payload: { backup: { volume_id: volB.id, name: 'intruder' } } },
      { method: 'DELETE', url: `/v3/${P}/backups/${backupB}` },
      { method: 'POST', url: `/v3/${P}/backups/${backupB}/restore`, payload: { restore: { volume_id: volB.id } } },
      { method: 'POST', url: `/v3/${P}/backups/${backupB}/restore`, payload: { restore: {} } },
      { method: 'GET', url: `/v3/${P}/backups/${backupB}` },
      { method: 'GET', url: `/v3/${P}/volumes/${volB.id}` },
    ];
    for (const c of cinder) {
      assertCinderError(await svc.req({ ...c, token: a.token }), 403);
      assertCinderError(await svc.req(c), 401);
    }
    const vbs: InjectOptions[] = [
      { method: 'POST', url: `/v2/${P}/cloudbackups`, payload: { backup: { volume_id: volB.id, name: 'intruder' } } },
      { method: 'POST', url: `/v2/${P}/cloudbackups/${backupB}` },
      { method: 'DELETE', url: `/v2/${P}/cloudbackups/${backupB}` },
      { method: 'POST', url: `/v2/${P}/cloudbackups/${backupB}/restore`, payload: { restore: { volume_id: volB.id } } },
      { method: 'GET', url: `/v1/${P}/jobs/${jobB}` },
      { method: 'GET', url: `/v2/${P}/jobs/${jobB}` },
      { method: 'GET', url: `/v2/${P}/cloudbackups/quota` },
    ];
    for (const c of vbs) {
      assertVbsError(await svc.req({ ...c, token: a.token }), 403, 'VolumeBackup.0042');
      assertVbsError(await svc.req(c), 401);
    }
    assert.equal(await jobCount(svc), jobsBefore);
    assert.equal(await svc.app.catalog.backups.countBackups(b.projectId, {}), bBackups);
    assert.equal(await svc.app.catalog.volumes.countVolumes(b.projectId), bVolumes);
    assert.equal((await svc.app.catalog.backups.getBackupById(backupB))!.status, 'available');
    assert.equal((await svc.app.catalog.volumes.getVolumeById(volB.id))!.status, 'available');
  });

  it('without a token, a request with an invalid body is 401 too (not a 400 describing the schema)', async () => {
    const r = await svc.req({ method: 'POST', url: `/v2/${b.projectId}/cloudbackups`, payload: { nonsense: true } });
    assertVbsError(r, 401);
    const c = await svc.req({ method: 'POST', url: `/v3/${b.projectId}/volumes`, payload: { volume: { size: 'huge' } } });
    assertCinderError(c, 401);
    const f = await svc.req({ method: 'POST', url: `/v3/${b.projectId}/volumes`, token: a.token, payload: {} });
    assertCinderError(f, 403);
  });

  it('through its own paths A cannot see, show, delete, back up or restore B\'s resources: 404', async () => {
    const P = a.projectId;
    const t = a.token;
    const jobsBefore = await jobCount(svc);
    const aVolumes = await svc.app.catalog.volumes.countVolumes(P);
    const aBackups = await svc.app.catalog.backups.countBackups(P, {});
    const volumeFiles = readdirSync(path.join(svc.dataDir, 'volumes')).length;

    for (const v of ['v2', 'v3']) {
      assertCinderError(await svc.req({ method: 'GET', url: `/${v}/${P}/volumes/${volB.id}`, token: t }), 404);
      assertCinderError(await svc.req({ method: 'DELETE', url: `/${v}/${P}/volumes/${volB.id}`, token: t }), 404);
      assertCinderError(await svc.req({ method: 'GET', url: `/${v}/${P}/snapshots/${snapB}`, token: t }), 404);
      assertCinderError(await svc.req({ method: 'DELETE', url: `/${v}/${P}/snapshots/${snapB}`, token: t }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${P}/snapshots`, token: t, payload: { snapshot: { volume_id: volB.id } } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${P}/volumes`, token: t, payload: { volume: { size: 1, snapshot_id: snapB } } }), 404);
      assertCinderError(await svc.req({ method: 'GET', url: `/${v}/${P}/backups/${backupB}`, token: t }), 404);
      assertCinderError(await svc.req({ method: 'DELETE', url: `/${v}/${P}/backups/${backupB}`, token: t }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${P}/backups`, token: t, payload: { backup: { volume_id: volB.id, name: 'steal' } } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${P}/backups`, token: t, payload: { backup: { volume_id: volA.id, snapshot_id: snapB, name: 'steal' } } }), 404);
      // Restore B's backup onto A's volume, or into a new volume; restore A's backup onto B's volume.
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${P}/backups/${backupB}/restore`, token: t, payload: { restore: { volume_id: volA.id } } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${P}/backups/${backupB}/restore`, token: t, payload: { restore: {} } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${P}/backups/${backupA}/restore`, token: t, payload: { restore: { volume_id: volB.id } } }), 404);
    }
    assertVbsError(await svc.req({ method: 'POST', url: `/v2/${P}/cloudbackups`, token: t, payload: { backup: { volume_id: volB.id, name: 'steal' } } }), 404, 'VolumeBackup.0021');
    assertVbsError(await svc.req({ method: 'POST', url: `/v2/${P}/cloudbackups`, token: t, payload: { backup: { volume_id: volA.id, snapshot_id: snapB, name: 'steal' } } }), 404);
    assertVbsError(await svc.req({ method: 'POST', url: `/v2/${P}/cloudbackups/${backupB}`, token: t }), 404, 'VolumeBackup.0110');
    assertVbsError(await svc.req({ method: 'DELETE', url: `/v2/${P}/cloudbackups/${backupB}`, token: t }), 404, 'VolumeBackup.0110');
    assertVbsError(await svc.req({ method: 'POST', url: `/v2/${P}/cloudbackups/${backupB}/restore`, token: t, payload: { restore: { volume_id: volA.id } } }), 404, 'VolumeBackup.0111');
    assertVbsError(await svc.req({ method: 'POST', url: `/v2/${P}/cloudbackups/${backupA}/restore`, token: t, payload: { restore: { volume_id: volB.id } } }), 404, 'VolumeBackup.0207');
    assertVbsError(await svc.req({ method: 'GET', url: `/v1/${P}/jobs/${jobB}`, token: t }), 404, 'common.0011');
    assertVbsError(await svc.req({ method: 'GET', url: `/v2/${P}/jobs/${jobB}`, token: t }), 404, 'common.0011');

    // Nothing happened: no job, no new volume or backup of A, and B's resources are as they were.
    await svc.app.runner.idle();
    assert.equal(await jobCount(svc), jobsBefore);
    assert.equal(await svc.app.catalog.volumes.countVolumes(P), aVolumes);
    assert.equal(await svc.app.catalog.backups.countBackups(P, {}), aBackups);
    assert.equal(readdirSync(path.join(svc.dataDir, 'volumes')).length, volumeFiles, 'no volume file appeared or vanished');
    assert.equal((await svc.app.catalog.volumes.getVolumeById(volA.id))!.status, 'available');
    assert.equal((await svc.app.catalog.backups.getBackupById(backupA))!.status, 'available');

    const vb = await svc.req({ method: 'GET', url: `/v3/${b.projectId}/volumes/${volB.id}`, token: b.token });
    assert.equal(vb.statusCode, 200, vb.body);
    assert.equal((vb.json() as { volume: { status: string } }).volume.status, 'available');
    assert.ok(existsSync(volB.path));
    await assertSameBytes(volB.path, volBCopy, "B's volume");
    const sb = await svc.req({ method: 'GET', url: `/v3/${b.projectId}/snapshots/${snapB}`, token: b.token });
    assert.equal((sb.json() as { snapshot: { status: string } }).snapshot.status, 'available');
    const bb = await svc.req({ method: 'GET', url: `/v3/${b.projectId}/backups/${backupB}`, token: b.token });
    assert.equal(bb.statusCode, 200, bb.body);
    assert.equal((bb.json() as { backup: { status: string } }).backup.status, 'available');
    assert.equal(await svc.app.catalog.backups.countBackups(b.projectId, {}), 1);
    assert.equal(await svc.app.catalog.volumes.countVolumes(b.projectId), 1);
    assert.equal(await svc.app.catalog.volumes.countSnapshotsOfVolume(volB.id), 1);
    const jb = await svc.req({ method: 'GET', url: `/v1/${b.projectId}/jobs/${jobB}`, token: b.token });
    assert.equal(jb.statusCode, 200);
  });

  it('lists hold only the caller\'s own resources', async () => {
    const own = { volumes: [volA.id], backups: [backupA] };
    for (const v of ['v2', 'v3']) {
      const vols = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/volumes`, token: a.token })).json() as { volumes: { id: string }[] };
      assert.deepEqual(vols.volumes.map((x) => x.id), own.volumes);
      const det = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/volumes/detail`, token: a.token })).json() as { volumes: { id: string; 'os-vol-tenant-attr:tenant_id': string }[] };
      assert.deepEqual(det.volumes.map((x) => x.id), own.volumes);
      for (const x of det.volumes) assert.equal(x['os-vol-tenant-attr:tenant_id'], a.projectId);
      const snaps = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/snapshots`, token: a.token })).json() as { snapshots: unknown[] };
      assert.deepEqual(snaps.snapshots, []);
      const snapsB = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/snapshots?volume_id=${volB.id}`, token: a.token })).json() as { snapshots: unknown[] };
      assert.deepEqual(snapsB.snapshots, []);
      const bk = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/backups`, token: a.token })).json() as { backups: { id: string }[] };
      assert.deepEqual(bk.backups.map((x) => x.id), own.backups);
      const bd = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/backups/detail?with_count=true`, token: a.token })).json() as { backups: { id: string; volume_id: string }[]; count: number };
      assert.deepEqual(bd.backups.map((x) => x.id), own.backups);
      assert.equal(bd.count, 1);
      // Filtering by B's volume, or paging from B's backup as marker, reveals nothing of B.
      const byVol = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/backups/detail?volume_id=${volB.id}&with_count=true`, token: a.token })).json() as { backups: unknown[]; count: number };
      assert.deepEqual(byVol.backups, []);
      assert.equal(byVol.count, 0);
      // B's backup as a marker is unknown in A's project: the same 400 as any unknown marker.
      const byMarker = await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/backups?marker=${backupB}`, token: a.token });
      assert.equal(byMarker.statusCode, 400, byMarker.body);
      assert.ok(!byMarker.body.includes(volB.id) && !byMarker.body.includes('b-backup'));
      const byName = (await svc.req({ method: 'GET', url: `/${v}/${a.projectId}/backups?name=b-backup`, token: a.token })).json() as { backups: unknown[] };
      assert.deepEqual(byName.backups, []);
    }
    const quota = (await svc.req({ method: 'GET', url: `/v2/${a.projectId}/cloudbackups/quota`, token: a.token })).json() as { quotas: { resources: { type: string; used: number }[] } };
    assert.equal(quota.quotas.resources.find((r) => r.type === 'backups')!.used, 1);
    const shared = (await svc.req({ method: 'GET', url: `/v2/${a.projectId}/os-vendor-backup-sharing/detail?share_to_me=true`, token: a.token })).json() as { shared: unknown[] };
    assert.deepEqual(shared.shared, []);
    // And B sees only B's.
    const bl = (await svc.req({ method: 'GET', url: `/v3/${b.projectId}/backups/detail`, token: b.token })).json() as { backups: { id: string }[] };
    assert.deepEqual(bl.backups.map((x) => x.id), [backupB]);
    const bv = (await svc.req({ method: 'GET', url: `/v3/${b.projectId}/volumes`, token: b.token })).json() as { volumes: { id: string }[] };
    assert.deepEqual(bv.volumes.map((x) => x.id), [volB.id]);
  });
});
