/**
 * Native (Cinder-compatible) backups over HTTP, /v2 and /v3 (vbs.md §8): N1 create (202, then
 * poll), N2 summary and N3 detail lists with their exact fields, paging by absolute next links,
 * with_count, filters and sort validation, N5 delete (202, then gone; refused while creating),
 * and N6 restore onto an existing volume or a new one, compared byte for byte.
 */
import assert from 'node:assert/strict';
import { promises as fsp, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, sha256, sha256File, TempDirs } from '../helpers/volumes.ts';
import { assertCinderError, assertSameBytes, createVolume, jobCount, pathOf, sparseCopy, withRunnerPaused } from '../helpers/api.ts';

type Link = { href: string; rel: string };
interface ListBody {
  backups: Record<string, unknown>[];
  backups_links?: Link[];
  count?: number;
}

const MICROS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe('native backups (Cinder API)', () => {
  const temp = new TempDirs('haven-native-');
  let svc: TestService;
  let token: string;
  let pid: string;
  let root: string;
  let vol: { id: string; path: string };
  let copies: string;
  /** Backups of `vol`, oldest first, and the volume's bytes at each. */
  const made: { id: string; copy: string }[] = [];
  let small: { id: string; file: string; sha: string };
  let smallBackup: string;
  let busyId: string;

  before(async () => {
    root = temp.make('roots');
    svc = await startService(temp, { volumeRoots: [root] });
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
    vol = await createVolume(svc, token, pid, { name: 'data' });
    await overwrite(vol.path, 0, randomBytesSeeded(2 * MiB, 1));
    await overwrite(vol.path, 700 * MiB, randomBytesSeeded(1 * MiB, 2));
    copies = temp.make('copies');
    // A small adopted volume: too small a target for the 1 GB backups, and cheap to back up.
    const file = path.join(root, 'small.img');
    const data = randomBytesSeeded(4 * MiB, 3);
    writeFileSync(file, data);
    small = { id: (await svc.adopt({ token, projectId: pid }, file, 'small')).id, file, sha: sha256(data) };
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const create = async (v: 'v2' | 'v3', body: Record<string, unknown>) => svc.req({ method: 'POST', url: `/${v}/${pid}/backups`, token, payload: { backup: body } });
  /** Backs up `vol` natively, waits until available, and keeps a copy of the bytes backed up. */
  const backupVol = async (v: 'v2' | 'v3', name: string, extra: Record<string, unknown> = {}) => {
    const copy = path.join(copies, `${made.length}.img`);
    await sparseCopy(vol.path, copy);
    const r = await create(v, { volume_id: vol.id, name, ...extra });
    assert.equal(r.statusCode, 202, r.body);
    const id = (r.json() as { backup: { id: string } }).backup.id;
    const done = await svc.waitBackup(token, pid, id);
    assert.equal(done!.status, 'available', JSON.stringify(done));
    made.push({ id, copy });
    return { r, id };
  };
  const list = async (url: string) => {
    const r = await svc.req({ method: 'GET', url, token });
    assert.equal(r.statusCode, 200, `${url}: ${r.body}`);
    return r.json() as ListBody;
  };

  it('N1: create answers 202 with only id, links and name; the backup goes creating -> available', async () => {
    const { r, id } = await backupVol('v3', 'first', { description: 'native one' });
    const body = r.json() as { backup: { id: string; links: Link[]; name: string } };
    assert.deepEqual(Object.keys(body), ['backup']);
    assert.deepEqual(Object.keys(body.backup).sort(), ['id', 'links', 'name']);
    assert.match(body.backup.id, UUID);
    assert.equal(body.backup.name, 'first');
    const self = body.backup.links.find((l) => l.rel === 'self')!.href;
    const bookmark = body.backup.links.find((l) => l.rel === 'bookmark')!.href;
    assert.match(self, new RegExp(`^https?://[^/]+/v3/${pid}/backups/${id}$`));
    assert.match(bookmark, new RegExp(`^https?://[^/]+/${pid}/backups/${id}$`));
    const row = await svc.app.catalog.backups.getBackupById(id);
    assert.equal(row!.status, 'available');
    assert.equal(row!.origin, 'native');
    assert.equal(row!.fullBackup, true);

    // A second, through /v2, after a change: incremental on the first.
    await overwrite(vol.path, 100 * MiB, randomBytesSeeded(1 * MiB, 4));
    const second = await backupVol('v2', 'second');
    const self2 = (second.r.json() as { backup: { links: Link[] } }).backup.links.find((l) => l.rel === 'self')!.href;
    assert.match(self2, new RegExp(`/v2/${pid}/backups/${second.id}$`));
    const row2 = await svc.app.catalog.backups.getBackupById(second.id);
    assert.equal(row2!.fullBackup, false);
    assert.equal(row2!.parentId, id);

    // A small one of another volume (for the volume_id filter).
    const s = await create('v3', { volume_id: small.id, name: 'tiny' });
    assert.equal(s.statusCode, 202, s.body);
    smallBackup = (s.json() as { backup: { id: string } }).backup.id;
    assert.equal((await svc.waitBackup(token, pid, smallBackup))!.status, 'available');
  });

  it('N1: invalid requests are 400 (404 for unknown volumes or snapshots) and create nothing', async () => {
    const before = await svc.app.catalog.backups.countBackups(pid, {});
    const jobs = await jobCount(svc);
    for (const v of ['v2', 'v3'] as const) {
      for (const body of [
        { name: 'no-volume' },
        { volume_id: '', name: 'x' },
        { volume_id: vol.id, name: 'autobk_1234' },
        { volume_id: vol.id, name: 'Auto-upper' },
        { volume_id: vol.id, name: 'has space' },
        { volume_id: vol.id, name: 'x'.repeat(65) },
        { volume_id: vol.id, name: '' },
        { volume_id: vol.id, name: 'ok', description: 'a <b> tag' },
        { volume_id: vol.id, name: 'ok', description: 'd'.repeat(256) },
        { volume_id: vol.id, name: 'ok', incremental: 'yes' },
      ]) assertCinderError(await create(v, body), 400);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${pid}/backups`, token, payload: {} }), 400);
      assertCinderError(await create(v, { volume_id: '7d8e8e0a-0000-4000-8000-00000000000a', name: 'ghost' }), 404);
      assertCinderError(await create(v, { volume_id: vol.id, snapshot_id: '7d8e8e0a-0000-4000-8000-00000000000b', name: 'ghost' }), 404);
    }
    assert.equal(await svc.app.catalog.backups.countBackups(pid, {}), before);
    assert.equal(await jobCount(svc), jobs);
  });

  it('N3/N4: the detail object has every field, in the v2 and v3 flavours', async () => {
    const [first, second] = made;
    for (const v of ['v2', 'v3'] as const) {
      const shown = await svc.req({ method: 'GET', url: `/${v}/${pid}/backups/${first!.id}`, token });
      assert.equal(shown.statusCode, 200, shown.body);
      const fromList = (await list(`/${v}/${pid}/backups/detail`)).backups;
      const b2 = fromList.find((x) => x.id === second!.id)!;
      for (const b of [(shown.json() as { backup: Record<string, unknown> }).backup, fromList.find((x) => x.id === first!.id)!]) {
        assert.equal(b.id, first!.id);
        assert.equal(b.name, 'first');
        assert.equal(b.description, 'native one');
        assert.equal(b.status, 'available');
        assert.equal(b.size, 1);
        assert.equal(typeof b.object_count, 'number');
        assert.ok((b.object_count as number) > 0);
        assert.equal(b.is_incremental, false);
        assert.equal(b.has_dependent_backups, false);
        assert.equal(b.volume_id, vol.id);
        assert.equal(b.snapshot_id, null);
        assert.equal(b.fail_reason, null);
        assert.equal(b.availability_zone, 'eu-de-01');
        assert.equal(typeof b.container, 'string');
        for (const k of ['created_at', 'updated_at', 'data_timestamp']) assert.match(String(b[k]), MICROS, `${k}: ${String(b[k])}`);
        const links = b.links as Link[];
        assert.match(links.find((l) => l.rel === 'self')!.href, new RegExp(`^https?://[^/]+/${v}/${pid}/backups/${first!.id}$`));
        if (v === 'v2') {
          assert.equal(b['os-bak-tenant-attr:tenant_id'], pid);
          assert.equal(b['os-backup-project-attr:project_id'], undefined);
          assert.equal(typeof b.service_metadata, 'string');
          const meta = JSON.parse(b.service_metadata as string) as Record<string, unknown>;
          assert.equal(meta.Type, 0);
          assert.equal(meta.ST, 0);
        } else {
          assert.equal(b['os-backup-project-attr:project_id'], pid);
          assert.equal(b['os-bak-tenant-attr:tenant_id'], undefined);
          assert.equal(b.service_metadata, undefined);
        }
      }
      assert.equal(b2.is_incremental, true);
      if (v === 'v2') assert.equal((JSON.parse(b2.service_metadata as string) as { Type: number }).Type, 1);
    }
    assertCinderError(await svc.req({ method: 'GET', url: `/v3/${pid}/backups/7d8e8e0a-0000-4000-8000-00000000000c`, token }), 404);
  });

  it('N2: summary items carry only id, links and name', async () => {
    for (const v of ['v2', 'v3']) {
      const body = await list(`/${v}/${pid}/backups`);
      assert.deepEqual(Object.keys(body), ['backups']);
      assert.equal(body.backups.length, 3);
      for (const item of body.backups) {
        assert.deepEqual(Object.keys(item).sort(), ['id', 'links', 'name']);
        assert.equal((item.links as Link[]).length, 2);
      }
      assert.deepEqual(new Set(body.backups.map((x) => x.id)), new Set([...made.map((m) => m.id), smallBackup]));
    }
  });

  it('pages with limit through absolute next links, without duplicates, until no link', async () => {
    // Two more backups of vol: five in all.
    await overwrite(vol.path, 200 * MiB, randomBytesSeeded(MiB, 5));
    await backupVol('v3', 'third');
    await overwrite(vol.path, 300 * MiB, randomBytesSeeded(MiB, 6));
    await backupVol('v3', 'fourth');
    const all = [...made.map((m) => m.id), smallBackup];
    assert.equal(all.length, 5);

    for (const v of ['v2', 'v3']) {
      for (const kind of ['', '/detail']) {
        for (const dir of ['desc', 'asc']) {
          const seen: string[] = [];
          let url: string | null = `/${v}/${pid}/backups${kind}?limit=2&sort_dir=${dir}&with_count=true`;
          let pages = 0;
          while (url) {
            const body = await list(url);
            pages++;
            assert.ok(body.backups.length <= 2);
            assert.equal(body.count, 5, 'with_count counts all matches, not the page');
            seen.push(...body.backups.map((b) => String(b.id)));
            const next = body.backups_links?.find((l) => l.rel === 'next');
            if (next) {
              assert.match(next.href, new RegExp(`^https?://[^/]+/${v}/${pid}/backups${kind}\\?`), next.href);
              assert.equal(new URL(next.href).searchParams.get('limit'), '2');
              url = pathOf(next.href);
            } else {
              url = null;
            }
            assert.ok(pages <= 5, 'paging does not end');
          }
          assert.equal(pages, 3, `${v}${kind} ${dir}`);
          assert.equal(new Set(seen).size, seen.length, `duplicates: ${seen.join(', ')}`);
          assert.deepEqual(new Set(seen), new Set(all));
          // The order is the one asked for: created_at, newest first for desc.
          const created = await Promise.all(seen.map(async (id) => (await svc.app.catalog.backups.getBackupById(id))!.createdAt));
          const sorted = [...created].sort((x, y) => (dir === 'asc' ? x - y : y - x));
          assert.deepEqual(created, sorted);
        }
      }
    }
    // A page that holds the rest has no next link; offset skips.
    assert.equal((await list(`/v3/${pid}/backups?limit=5`)).backups_links, undefined);
    assert.equal((await list(`/v3/${pid}/backups?limit=10`)).backups.length, 5);
    const full = (await list(`/v3/${pid}/backups?sort_key=created_at&sort_dir=asc`)).backups.map((b) => b.id);
    const off = (await list(`/v3/${pid}/backups?sort_key=created_at&sort_dir=asc&offset=1&limit=2`)).backups.map((b) => b.id);
    assert.deepEqual(off, full.slice(1, 3));
    // The next link keeps the filters.
    const filtered = await list(`/v3/${pid}/backups/detail?limit=1&volume_id=${vol.id}`);
    const href = filtered.backups_links!.find((l) => l.rel === 'next')!.href;
    assert.equal(new URL(href).searchParams.get('volume_id'), vol.id);
    const page2 = await list(pathOf(href));
    assert.ok(page2.backups.every((b) => b.volume_id === vol.id));
  });

  it('with_count, filters by name, status and volume_id, and sort validation', async () => {
    const count = async (q: string) => {
      const body = await list(`/v3/${pid}/backups/detail?with_count=true&${q}`);
      assert.equal(body.count, body.backups.length, q);
      return body.backups;
    };
    assert.equal((await count('')).length, 5);
    assert.deepEqual((await count('name=third')).map((b) => b.name), ['third']);
    assert.deepEqual(await count('name=thir'), [], 'name is an exact match');
    assert.deepEqual((await count('name~=hir')).map((b) => b.name), ['third']);
    assert.equal((await count('status=available')).length, 5);
    assert.deepEqual(await count('status=error'), []);
    assert.deepEqual((await count(`volume_id=${small.id}`)).map((b) => b.id), [smallBackup]);
    assert.equal((await count(`volume_id=${vol.id}`)).length, 4);
    assert.deepEqual((await count(`volume_id=${vol.id}&name=first`)).map((b) => b.name), ['first']);
    // Sorting by name.
    const byName = (await list(`/v3/${pid}/backups?sort_key=name&sort_dir=asc`)).backups.map((b) => b.name);
    assert.deepEqual(byName, ['first', 'fourth', 'second', 'third', 'tiny']);
    const bySort = (await list(`/v3/${pid}/backups?sort=name:desc`)).backups.map((b) => b.name);
    assert.deepEqual(bySort, ['tiny', 'third', 'second', 'fourth', 'first']);
    for (const q of ['sort_key=bogus', 'sort_key=volume_id', 'sort_dir=sideways', 'sort=name:up', 'limit=-1', 'limit=abc', 'offset=-3', 'with_count=maybe']) {
      for (const kind of ['', '/detail']) assertCinderError(await svc.req({ method: 'GET', url: `/v3/${pid}/backups${kind}?${q}`, token }), 400);
    }
  });

  it('out-of-range paging numbers are 400, not a server error', async () => {
    for (const url of [`/v3/${pid}/backups?offset=100000000000000000000`, `/v2/${pid}/backups/detail?offset=100000000000000000000`, `/v3/${pid}/volumes?offset=100000000000000000000`, `/v3/${pid}/snapshots?offset=100000000000000000000`]) {
      assertCinderError(await svc.req({ method: 'GET', url, token }), 400);
    }
    // A large but representable offset is simply past the end.
    assert.deepEqual((await list(`/v3/${pid}/backups?offset=1000000000000`)).backups, []);
  });

  it('N6: restores onto an existing volume (202) and the bytes equal the volume at backup time', async () => {
    const first = made[0]!;
    const target = await createVolume(svc, token, pid, { name: 'target' });
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/backups/${first.id}/restore`, token, payload: { restore: { volume_id: target.id } } });
    assert.equal(r.statusCode, 202, r.body);
    assert.deepEqual(r.json(), { restore: { backup_id: first.id, volume_id: target.id, volume_name: 'target' } });
    assert.equal((await svc.waitBackup(token, pid, first.id))!.status, 'available');
    await svc.app.runner.idle();
    assert.equal((await svc.app.catalog.volumes.getVolumeById(target.id))!.status, 'available');
    await assertSameBytes(target.path, first.copy, 'restore of the full backup');
  });

  it('N6: without volume_id, restores into a new volume of the backup\'s size', async () => {
    const second = made[1]!; // incremental
    const before = await svc.app.catalog.volumes.countVolumes(pid);
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/backups/${second.id}/restore`, token, payload: { restore: { name: 'fresh' } } });
    assert.equal(r.statusCode, 202, r.body);
    const body = (r.json() as { restore: { backup_id: string; volume_id: string; volume_name: string } }).restore;
    assert.equal(body.backup_id, second.id);
    assert.match(body.volume_id, UUID);
    assert.equal(body.volume_name, 'fresh');
    assert.equal(await svc.app.catalog.volumes.countVolumes(pid), before + 1);
    assert.equal((await svc.waitBackup(token, pid, second.id))!.status, 'available');
    await svc.app.runner.idle();
    const v = (await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${body.volume_id}`, token })).json() as { volume: { size: number; status: string; name: string } };
    assert.equal(v.volume.size, 1);
    assert.equal(v.volume.status, 'available');
    assert.equal(v.volume.name, 'fresh');
    await assertSameBytes((await svc.app.catalog.volumes.getVolumeById(body.volume_id))!.path, second.copy, 'restore of the incremental backup');
    // Without a name either.
    const r2 = await svc.req({ method: 'POST', url: `/v3/${pid}/backups/${smallBackup}/restore`, token, payload: { restore: {} } });
    assert.equal(r2.statusCode, 202, r2.body);
    const id2 = (r2.json() as { restore: { volume_id: string } }).restore.volume_id;
    await svc.app.runner.idle();
    const v2 = (await svc.app.catalog.volumes.getVolumeById(id2))!;
    assert.equal(v2.status, 'available');
    // The new volume is 1 GB (the smallest size); its first 4 MiB are the small volume's bytes.
    const fh = await fsp.open(v2.path);
    try {
      const buf = Buffer.alloc(4 * MiB);
      await fh.read(buf, 0, buf.length, 0);
      assert.equal(sha256(buf), small.sha);
    } finally {
      await fh.close();
    }
  });

  it('N6: a restore onto a too-small volume is 400 and changes nothing; unknown ids are 404', async () => {
    const first = made[0]!;
    const jobs = await jobCount(svc);
    const volumes = await svc.app.catalog.volumes.countVolumes(pid);
    for (const v of ['v2', 'v3']) {
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${pid}/backups/${first.id}/restore`, token, payload: { restore: { volume_id: small.id } } }), 400);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${pid}/backups/${first.id}/restore`, token, payload: { restore: { volume_id: '7d8e8e0a-0000-4000-8000-00000000000d' } } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${pid}/backups/7d8e8e0a-0000-4000-8000-00000000000e/restore`, token, payload: { restore: { volume_id: vol.id } } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${pid}/backups/7d8e8e0a-0000-4000-8000-00000000000e/restore`, token, payload: { restore: {} } }), 404);
      assertCinderError(await svc.req({ method: 'POST', url: `/${v}/${pid}/backups/${first.id}/restore`, token, payload: {} }), 400);
    }
    assert.equal(await jobCount(svc), jobs);
    assert.equal(await svc.app.catalog.volumes.countVolumes(pid), volumes);
    assert.equal((await svc.app.catalog.volumes.getVolumeById(small.id))!.status, 'available');
    assert.equal(await sha256File(small.file), small.sha);
    assert.equal((await svc.app.catalog.backups.getBackupById(first.id))!.status, 'available');
  });

  it('N5: deleting a backup still being created stops its job and removes the backup', async () => {
    await overwrite(vol.path, 400 * MiB, randomBytesSeeded(MiB, 7));
    const { bid, jobId } = await withRunnerPaused(svc, async () => {
      const r = await create('v3', { volume_id: vol.id, name: 'busy' });
      assert.equal(r.statusCode, 202, r.body);
      const bid = (r.json() as { backup: { id: string } }).backup.id;
      const shown = (await svc.req({ method: 'GET', url: `/v3/${pid}/backups/${bid}`, token })).json() as { backup: { status: string } };
      assert.equal(shown.backup.status, 'creating');
      const job = (await svc.app.catalog.jobs.activeJobs(['bksCreateBackup'])).find((j) => 'backupId' in j.payload && j.payload.backupId === bid)!;
      const d = await svc.req({ method: 'DELETE', url: `/v3/${pid}/backups/${bid}`, token });
      assert.equal(d.statusCode, 202, d.body);
      assert.equal((await svc.app.catalog.backups.getBackupById(bid))!.status, 'deleting');
      // A second delete while it is being deleted: 400, nothing changes.
      assertCinderError(await svc.req({ method: 'DELETE', url: `/v2/${pid}/backups/${bid}`, token }), 400);
      return { bid, jobId: job.id };
    });
    // Once the runner is back, the stopped job fails with the reason and the backup goes.
    assert.equal(await svc.waitBackup(token, pid, bid), null);
    const job = await svc.waitJob(token, pid, jobId);
    assert.equal(job.status, 'FAIL');
    assert.match(String(job.fail_reason), /cancelled: the backup was deleted while it was being created/);
    // A backup of the same volume runs normally afterwards.
    const r = await create('v3', { volume_id: vol.id, name: 'busy' });
    assert.equal(r.statusCode, 202, r.body);
    busyId = (r.json() as { backup: { id: string } }).backup.id;
    assert.equal((await svc.waitBackup(token, pid, busyId))!.status, 'available');
  });

  it('a next link whose marker backup was deleted meanwhile does not start the listing over', async () => {
    const third = made[2]!.id;
    const byName = (await list(`/v3/${pid}/backups?sort_key=name&sort_dir=asc`)).backups.map((b) => String(b.id));
    const limit = byName.indexOf(third) + 1;
    assert.ok(limit > 0 && limit < byName.length);
    const page1 = await list(`/v3/${pid}/backups?sort_key=name&sort_dir=asc&limit=${limit}`);
    const ids1 = page1.backups.map((b) => String(b.id));
    assert.equal(ids1.at(-1), third);
    const next = page1.backups_links!.find((l) => l.rel === 'next')!.href;
    // The marker backup goes away between the two pages.
    const d = await svc.req({ method: 'DELETE', url: `/v3/${pid}/backups/${third}`, token });
    assert.equal(d.statusCode, 202, d.body);
    assert.equal(await svc.waitBackup(token, pid, third), null);
    // The marker is gone: an error naming it (as Cinder answers an unknown marker), never page 1 again.
    const r = await svc.req({ method: 'GET', url: pathOf(next), token });
    assert.match(assertCinderError(r, 400), new RegExp(`marker ${third} could not be found`));
  });

  it('N5: delete answers 202, the backup goes deleting -> gone (404), and a second delete is 404', async () => {
    const third = made[2]!.id; // deleted by the test before
    const before = (await list(`/v3/${pid}/backups`)).backups.length;
    for (const [v, id] of [['v3', busyId], ['v2', smallBackup]] as const) {
      const r = await svc.req({ method: 'DELETE', url: `/${v}/${pid}/backups/${id}`, token });
      assert.equal(r.statusCode, 202, r.body);
      assert.equal(r.body, '');
      assert.equal(await svc.waitBackup(token, pid, id), null);
      const gone = await svc.req({ method: 'GET', url: `/${v}/${pid}/backups/${id}`, token });
      assert.match(assertCinderError(gone, 404), new RegExp(id));
      assertCinderError(await svc.req({ method: 'DELETE', url: `/${v}/${pid}/backups/${id}`, token }), 404);
      assert.equal(await svc.app.catalog.backups.getBackupById(id), undefined);
    }
    const left = (await list(`/v3/${pid}/backups`)).backups.map((b) => b.id);
    assert.ok(!left.includes(busyId) && !left.includes(smallBackup) && !left.includes(third));
    assert.equal(left.length, before - 2);
    // The later incremental ("fourth") still restores after its predecessor ("third") went.
    const fourth = made[3]!;
    const target = await createVolume(svc, token, pid, { name: 'after-delete' });
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/backups/${fourth.id}/restore`, token, payload: { restore: { volume_id: target.id } } });
    assert.equal(r.statusCode, 202, r.body);
    await svc.waitBackup(token, pid, fourth.id);
    await svc.app.runner.idle();
    await assertSameBytes(target.path, fourth.copy, 'restore of an incremental whose parent was deleted');
  });
});
