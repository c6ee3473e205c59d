/**
 * The volume inventory over HTTP (Cinder subset, /v2 and /v3): create, list, detail, show and
 * delete; request validation; os-volume-manage (admin adoption of files under the volume roots,
 * refusing every way out of them); snapshots, and a backup from a snapshot that holds the
 * snapshot's bytes rather than the volume's later ones.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, promises as fs, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { allocatedBytes, GiB, MiB, overwrite, randomBytesSeeded, sha256, sha256File, TempDirs } from '../helpers/volumes.ts';
import { assertCinderError, assertSameBytes, createVolume, jobCount, sameBytes, sparseCopy } from '../helpers/api.ts';

interface VolumeJson {
  id: string;
  name: string | null;
  description: string | null;
  status: string;
  size: number;
  bootable: string;
  metadata: Record<string, string>;
  created_at: string;
  links: { href: string; rel: string }[];
  'os-vol-tenant-attr:tenant_id': string;
  'os-vol-host-attr:host': string;
}
interface SnapshotJson {
  id: string;
  volume_id: string;
  status: string;
  size: number;
  name: string | null;
  created_at: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MICROS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$/;

describe('volumes, os-volume-manage and snapshots', () => {
  const temp = new TempDirs('haven-volumes-');
  let svc: TestService;
  let token: string;
  let pid: string;
  let member: { token: string; projectId: string };
  let base: string;
  let root: string;
  let outside: string;

  before(async () => {
    base = temp.make('roots');
    root = path.join(base, 'root');
    outside = path.join(base, 'outside');
    mkdirSync(root);
    mkdirSync(outside);
    svc = await startService(temp, { volumeRoots: [root] });
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
    member = await svc.tenant('vols-member');
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const volumesDir = () => path.join(svc.dataDir, 'volumes');
  const volumeFiles = () => (existsSync(volumesDir()) ? readdirSync(volumesDir()).sort() : []);
  const count = () => svc.app.catalog.volumes.countVolumes(pid);
  const show = async (id: string, v = 'v3') => svc.req({ method: 'GET', url: `/${v}/${pid}/volumes/${id}`, token });

  describe('create, list, show, delete', () => {
    let v2id: string;
    let v3id: string;

    it('creates volumes on /v2 and /v3: 202, available, the size asked for, a sparse file in the data folder', async () => {
      for (const [v, size] of [['v2', 1], ['v3', 2]] as const) {
        const r = await svc.req({ method: 'POST', url: `/${v}/${pid}/volumes`, token, payload: { volume: { size, name: `disk-${v}`, description: 'for tests', metadata: { team: 'qa' } } } });
        assert.equal(r.statusCode, 202, r.body);
        const vol = (r.json() as { volume: VolumeJson }).volume;
        assert.match(vol.id, UUID);
        assert.equal(vol.status, 'available');
        assert.equal(vol.size, size);
        assert.equal(vol.name, `disk-${v}`);
        assert.equal(vol.description, 'for tests');
        assert.deepEqual(vol.metadata, { team: 'qa' });
        assert.equal(vol.bootable, 'false');
        assert.match(vol.created_at, MICROS);
        assert.equal(vol['os-vol-tenant-attr:tenant_id'], pid);
        const self = vol.links.find((l) => l.rel === 'self')!.href;
        assert.match(self, new RegExp(`^https?://[^/]+/${v}/${pid}/volumes/${vol.id}$`));
        const row = await svc.app.catalog.volumes.getVolumeById(vol.id);
        assert.equal(row!.path, path.join(volumesDir(), `${vol.id}.img`));
        assert.equal(row!.adopted, false);
        const st = await fs.stat(row!.path);
        assert.equal(st.size, size * GiB);
        assert.ok((await allocatedBytes(row!.path)) < 1 * MiB, 'the new volume file is sparse');
        if (v === 'v2') v2id = vol.id;
        else v3id = vol.id;
      }
    });

    it('lists (id, name, links), details and shows on /v2 and /v3', async () => {
      for (const v of ['v2', 'v3']) {
        const list = await svc.req({ method: 'GET', url: `/${v}/${pid}/volumes`, token });
        assert.equal(list.statusCode, 200, list.body);
        const items = (list.json() as { volumes: Record<string, unknown>[] }).volumes;
        const ids = items.map((x) => x.id);
        assert.ok(ids.includes(v2id) && ids.includes(v3id), JSON.stringify(ids));
        for (const x of items) assert.deepEqual(Object.keys(x).sort(), ['id', 'links', 'name']);
        const detail = await svc.req({ method: 'GET', url: `/${v}/${pid}/volumes/detail`, token });
        const full = (detail.json() as { volumes: VolumeJson[] }).volumes;
        const d3 = full.find((x) => x.id === v3id)!;
        assert.equal(d3.size, 2);
        assert.equal(d3.status, 'available');
        assert.equal(d3.name, 'disk-v3');
        assert.ok(d3.links[0]!.href.includes(`/${v}/`), 'links follow the API version asked');
        const one = await show(v2id, v);
        assert.equal(one.statusCode, 200, one.body);
        const body = (one.json() as { volume: VolumeJson }).volume;
        assert.equal(body.id, v2id);
        assert.equal(body.size, 1);
        assert.equal(body.name, 'disk-v2');
        const byName = await svc.req({ method: 'GET', url: `/${v}/${pid}/volumes/detail?name=disk-v3`, token });
        assert.deepEqual((byName.json() as { volumes: VolumeJson[] }).volumes.map((x) => x.id), [v3id]);
      }
      assertCinderError(await show('7d8e8e0a-0000-4000-8000-000000000001'), 404);
    });

    it('deletes: 202, the file under the data folder is gone, then 404', async () => {
      for (const [id, v] of [[v2id, 'v2'], [v3id, 'v3']] as const) {
        const file = (await svc.app.catalog.volumes.getVolumeById(id))!.path;
        assert.ok(existsSync(file));
        const r = await svc.req({ method: 'DELETE', url: `/${v}/${pid}/volumes/${id}`, token });
        assert.equal(r.statusCode, 202, r.body);
        assert.equal(r.body, '');
        assert.ok(!existsSync(file), `${file} still exists`);
        assert.equal(await svc.app.catalog.volumes.getVolumeById(id), undefined);
        assertCinderError(await show(id, v), 404);
        assertCinderError(await svc.req({ method: 'DELETE', url: `/${v}/${pid}/volumes/${id}`, token }), 404);
        const list = (await svc.req({ method: 'GET', url: `/${v}/${pid}/volumes`, token })).json() as { volumes: { id: string }[] };
        assert.ok(!list.volumes.some((x) => x.id === id));
      }
    });

    it('rejects invalid create requests with 400 (Cinder envelope) and creates nothing', async () => {
      const before = await count();
      const files = volumeFiles();
      const bodies: unknown[] = [
        { volume: { size: 0 } },
        { volume: { size: 'x' } },
        { volume: { size: '1' } },
        { volume: { size: -1 } },
        { volume: { size: 1.5 } },
        { volume: { size: 1_000_000_000 } },
        { volume: { name: 'no size' } },
        { volume: { size: 1, name: 'x'.repeat(256) } },
        { volume: { size: 1, metadata: { k: 5 } } },
        { volume: null },
        { volume: 'big' },
        { size: 1 },
        {},
        [],
      ];
      for (const payload of bodies) {
        for (const v of ['v2', 'v3']) {
          const r = await svc.req({ method: 'POST', url: `/${v}/${pid}/volumes`, token, payload: payload as object });
          assertCinderError(r, 400);
        }
      }
      const noBody = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token });
      assertCinderError(noBody, 400);
      const badJson = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, headers: { 'content-type': 'application/json' }, payload: '{"volume": {"size": 1' });
      assertCinderError(badJson, 400);
      assert.equal(await count(), before);
      assert.deepEqual(volumeFiles(), files);
    });
  });

  describe('os-volume-manage', () => {
    let adoptedId: string;
    let diskFile: string;
    let diskSha: string;

    const manage = (sourceName: string, t = token, v = 'v3', extra: Record<string, unknown> = {}) =>
      svc.req({ method: 'POST', url: `/${v}/${t === token ? pid : member.projectId}/os-volume-manage`, token: t, payload: { volume: { ref: { 'source-name': sourceName }, ...extra } } });

    it('an admin adopts an image file under a volume root', async () => {
      diskFile = path.join(root, 'disk.img');
      const data = randomBytesSeeded(3 * MiB + 512, 31);
      writeFileSync(diskFile, data);
      diskSha = sha256(data);
      const r = await manage(diskFile, token, 'v3', { name: 'adopted', description: 'legacy image' });
      assert.equal(r.statusCode, 202, r.body);
      const vol = (r.json() as { volume: VolumeJson }).volume;
      assert.match(vol.id, UUID);
      assert.equal(vol.status, 'available');
      assert.equal(vol.size, 1, 'sizes are whole GB, rounded up');
      assert.equal(vol.name, 'adopted');
      assert.match(vol['os-vol-host-attr:host'], /adopted/);
      const row = await svc.app.catalog.volumes.getVolumeById(vol.id);
      assert.equal(row!.path, diskFile);
      assert.equal(row!.adopted, true);
      assert.equal(row!.sizeBytes, data.length);
      assert.equal((await show(vol.id)).statusCode, 200);
      assert.equal(await sha256File(diskFile), diskSha, 'adopting does not touch the file');
      adoptedId = vol.id;

      // It is a real volume: a backup of it completes and holds its bytes.
      const b = await svc.req({ method: 'POST', url: `/v3/${pid}/backups`, token, payload: { backup: { volume_id: vol.id, name: 'of-adopted' } } });
      assert.equal(b.statusCode, 202, b.body);
      const done = await svc.waitBackup(token, pid, (b.json() as { backup: { id: string } }).backup.id);
      assert.equal(done!.status, 'available', JSON.stringify(done));
    });

    it('refuses paths outside the roots, with "..", through symlinks, relative, not files, or already managed: 400, nothing adopted', async () => {
      const before = await count();
      const jobs = await jobCount(svc);
      writeFileSync(path.join(outside, 'secret.img'), randomBytesSeeded(MiB, 32));
      writeFileSync(path.join(root, 'plain.img'), randomBytesSeeded(MiB, 33));
      mkdirSync(path.join(root, 'sub'));
      writeFileSync(path.join(root, 'sub', 'inner.img'), randomBytesSeeded(MiB, 34));
      mkdirSync(path.join(base, 'root-evil'));
      writeFileSync(path.join(base, 'root-evil', 'x.img'), randomBytesSeeded(MiB, 35));
      symlinkSync(path.join(outside, 'secret.img'), path.join(root, 'link-out.img'));
      symlinkSync(path.join(root, 'plain.img'), path.join(root, 'link-in.img'));
      symlinkSync(outside, path.join(root, 'linkdir-out'));
      symlinkSync(path.join(root, 'sub'), path.join(root, 'linkdir-in'));
      mkdirSync(path.join(root, 'a-folder'));

      const refused = [
        path.join(outside, 'secret.img'), // outside every root
        path.join(base, 'root-evil', 'x.img'), // a sibling whose name starts with the root's
        `${root}/../outside/secret.img`, // ".." out of the root
        `${root}/sub/../plain.img`, // ".." that stays inside is refused all the same
        path.join(root, 'link-out.img'), // symlink to a file outside
        path.join(root, 'link-in.img'), // symlink to a file inside
        path.join(root, 'linkdir-out', 'secret.img'), // through a symlinked folder pointing outside
        path.join(root, 'linkdir-in', 'inner.img'), // through a symlinked folder pointing inside
        'plain.img', // relative
        './root/plain.img',
        path.relative(process.cwd(), path.join(root, 'plain.img')),
        root, // the root itself
        path.join(root, 'a-folder'), // not a file or block device
        path.join(root, 'missing.img'),
        diskFile, // already managed
        `${root}//disk.img`, // the same file, spelled differently
        `${root}/./disk.img`,
      ];
      for (const p of refused) {
        const r = await manage(p);
        assertCinderError(r, 400);
      }
      // A member (not admin) may not adopt anything, even a valid path.
      assertCinderError(await manage(path.join(root, 'plain.img'), member.token), 403);
      assertCinderError(await manage(path.join(root, 'plain.img'), member.token, 'v2'), 403);
      assert.equal(await svc.app.catalog.volumes.countVolumes(member.projectId), 0);
      // Bad request bodies.
      for (const payload of [{ volume: { ref: {} } }, { volume: { ref: { 'source-name': '' } } }, { volume: {} }]) {
        assertCinderError(await svc.req({ method: 'POST', url: `/v3/${pid}/os-volume-manage`, token, payload }), 400);
      }
      assert.equal(await count(), before);
      assert.equal(await jobCount(svc), jobs);
      // The refused files were not touched.
      assert.equal((await fs.stat(path.join(outside, 'secret.img'))).size, MiB);
      // The valid one still adopts (and through /v2).
      const ok = await manage(path.join(root, 'plain.img'), token, 'v2');
      assert.equal(ok.statusCode, 202, ok.body);
      assert.equal(await count(), before + 1);
    });

    it('deleting an adopted volume forgets it but keeps its file; it can be adopted again', async () => {
      const r = await svc.req({ method: 'DELETE', url: `/v3/${pid}/volumes/${adoptedId}`, token });
      assert.equal(r.statusCode, 202, r.body);
      assertCinderError(await show(adoptedId), 404);
      assert.ok(existsSync(diskFile), 'the adopted file must survive');
      assert.equal(await sha256File(diskFile), diskSha);
      const again = await manage(diskFile);
      assert.equal(again.statusCode, 202, again.body);
    });

    it('refuses everything when no volume roots are configured', async () => {
      // A second service with no roots, on its own data folder.
      const other = await startService(temp);
      try {
        const t = await other.login('admin', ADMIN_PASSWORD, 'admin');
        const r = await other.req({ method: 'POST', url: `/v3/${t.projectId}/os-volume-manage`, token: t.token, payload: { volume: { ref: { 'source-name': path.join(root, 'plain.img') } } } });
        assertCinderError(r, 400);
        assert.equal(await other.app.catalog.volumes.countVolumes(t.projectId), 0);
      } finally {
        await other.close();
      }
    });
  });

  describe('snapshots', () => {
    let vol: { id: string; path: string };
    let snapId: string;
    let snapFile: string;
    let atSnapshot: string;

    it('create, list, detail and show on /v2 and /v3', async () => {
      vol = await createVolume(svc, token, pid, { name: 'snapped' });
      await overwrite(vol.path, 0, randomBytesSeeded(2 * MiB, 41));
      await overwrite(vol.path, 300 * MiB, randomBytesSeeded(1 * MiB, 42));
      atSnapshot = path.join(temp.make('copies'), 'at-snapshot.img');
      await sparseCopy(vol.path, atSnapshot);

      const r = await svc.req({ method: 'POST', url: `/v3/${pid}/snapshots`, token, payload: { snapshot: { volume_id: vol.id, name: 'snap-1', description: 'before the change' } } });
      assert.equal(r.statusCode, 202, r.body);
      const s = (r.json() as { snapshot: SnapshotJson }).snapshot;
      assert.match(s.id, UUID);
      assert.equal(s.volume_id, vol.id);
      assert.equal(s.status, 'available');
      assert.equal(s.size, 1);
      assert.equal(s.name, 'snap-1');
      assert.match(s.created_at, MICROS);
      snapId = s.id;
      const row = await svc.app.catalog.volumes.getSnapshot(pid, snapId);
      snapFile = row!.path;
      await assertSameBytes(snapFile, atSnapshot, 'snapshot and volume at snapshot time');

      for (const v of ['v2', 'v3']) {
        for (const url of [`/${v}/${pid}/snapshots`, `/${v}/${pid}/snapshots/detail`, `/${v}/${pid}/snapshots?volume_id=${vol.id}`]) {
          const l = await svc.req({ method: 'GET', url, token });
          assert.equal(l.statusCode, 200, l.body);
          assert.deepEqual((l.json() as { snapshots: SnapshotJson[] }).snapshots.map((x) => x.id), [snapId], url);
        }
        const one = await svc.req({ method: 'GET', url: `/${v}/${pid}/snapshots/${snapId}`, token });
        assert.equal(one.statusCode, 200);
        assert.equal((one.json() as { snapshot: SnapshotJson }).snapshot.volume_id, vol.id);
      }
      assertCinderError(await svc.req({ method: 'POST', url: `/v3/${pid}/snapshots`, token, payload: { snapshot: { volume_id: '7d8e8e0a-0000-4000-8000-000000000002' } } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/v3/${pid}/snapshots`, token, payload: { snapshot: {} } }), 400);
      assertCinderError(await svc.req({ method: 'GET', url: `/v3/${pid}/snapshots/7d8e8e0a-0000-4000-8000-000000000003`, token }), 404);
    });

    it('a volume with snapshots cannot be deleted', async () => {
      assertCinderError(await svc.req({ method: 'DELETE', url: `/v3/${pid}/volumes/${vol.id}`, token }), 400);
      assert.equal((await svc.app.catalog.volumes.getVolumeById(vol.id))!.status, 'available');
      assert.ok(existsSync(vol.path));
    });

    it('a new volume from a snapshot holds the snapshot\'s bytes', async () => {
      await overwrite(vol.path, 0, randomBytesSeeded(2 * MiB, 43)); // the volume moves on
      const r = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, snapshot_id: snapId, name: 'from-snap' } } });
      assert.equal(r.statusCode, 202, r.body);
      const id = (r.json() as { volume: VolumeJson }).volume.id;
      const file = (await svc.app.catalog.volumes.getVolumeById(id))!.path;
      await assertSameBytes(file, atSnapshot, 'volume from snapshot');
      assert.equal((await svc.req({ method: 'DELETE', url: `/v3/${pid}/volumes/${id}`, token })).statusCode, 202);
    });

    it('a backup with snapshot_id backs up the snapshot, not the volume\'s later changes', async () => {
      await overwrite(vol.path, 500 * MiB, randomBytesSeeded(2 * MiB, 44));
      assert.ok(!(await sameBytes(vol.path, atSnapshot)), 'the volume has changed since the snapshot');
      const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: vol.id, snapshot_id: snapId, name: 'from-snapshot' } } });
      assert.equal(r.statusCode, 200, r.body);
      const job = await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
      const entities = job.entities as Record<string, string>;
      assert.equal(entities.snapshot_id, snapId);
      const backupId = entities.backup_id!;
      const shown = (await svc.req({ method: 'GET', url: `/v3/${pid}/backups/${backupId}`, token })).json() as { backup: { snapshot_id: string; volume_id: string; status: string } };
      assert.equal(shown.backup.snapshot_id, snapId);
      assert.equal(shown.backup.volume_id, vol.id);
      assert.equal(shown.backup.status, 'available');

      // Restore into a new volume: the snapshot's bytes, not the volume's current ones.
      const rest = await svc.req({ method: 'POST', url: `/v3/${pid}/backups/${backupId}/restore`, token, payload: { restore: { name: 'restored-snap' } } });
      assert.equal(rest.statusCode, 202, rest.body);
      const target = (rest.json() as { restore: { volume_id: string } }).restore.volume_id;
      assert.equal((await svc.waitBackup(token, pid, backupId))!.status, 'available');
      await svc.app.runner.idle();
      const tv = (await svc.app.catalog.volumes.getVolumeById(target))!;
      assert.equal(tv.status, 'available');
      await assertSameBytes(tv.path, atSnapshot, 'restored volume and the snapshot');
      assert.ok(!(await sameBytes(tv.path, vol.path)));
    });

    it('deletes a snapshot: 202, its file is gone, then 404', async () => {
      const r = await svc.req({ method: 'DELETE', url: `/v2/${pid}/snapshots/${snapId}`, token });
      assert.equal(r.statusCode, 202, r.body);
      assert.ok(!existsSync(snapFile), 'the snapshot file is gone');
      assertCinderError(await svc.req({ method: 'GET', url: `/v3/${pid}/snapshots/${snapId}`, token }), 404);
      assertCinderError(await svc.req({ method: 'DELETE', url: `/v3/${pid}/snapshots/${snapId}`, token }), 404);
      const l = (await svc.req({ method: 'GET', url: `/v3/${pid}/snapshots`, token })).json() as { snapshots: unknown[] };
      assert.deepEqual(l.snapshots, []);
      // Now the volume can go.
      assert.equal((await svc.req({ method: 'DELETE', url: `/v3/${pid}/volumes/${vol.id}`, token })).statusCode, 202);
      assert.ok(!existsSync(vol.path));
    });
  });
});
