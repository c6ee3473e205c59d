/**
 * Host safety: a volume's path is swapped between adoption and use (a symbolic link to a file
 * outside the roots, another file renamed into place, a symlinked folder on the way), a hard link
 * to a foreign file is offered for adoption, the roots overlap Haven's own data folder, a backup
 * is not whole when a restore starts, and a server name tries to smuggle arguments into the hooks.
 * Each time the job fails (or the request is refused) with a clear reason and nothing outside the
 * volume is read or written.
 */
import assert from 'node:assert/strict';
import { linkSync, mkdirSync, promises as fs, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startService, type TestService } from '../helpers/service.ts';
import { MiB, randomBytesSeeded, sha256, sha256File, TempDirs } from '../helpers/volumes.ts';
import { assertCinderError } from '../helpers/api.ts';

describe('host safety: volume paths are never followed elsewhere', () => {
  const temp = new TempDirs();
  let svc: TestService;
  let base: string;
  let root: string;
  let outside: string;
  let token: string;
  let pid: string;

  before(async () => {
    base = temp.make('host');
    root = path.join(base, 'root');
    outside = path.join(base, 'outside');
    mkdirSync(root);
    mkdirSync(outside);
    svc = await startService(temp, { volumeRoots: [root] });
    const admin = await svc.login('admin', 'admin-test-password', 'admin');
    token = admin.token;
    pid = admin.projectId;
  });
  after(async () => {
    await svc.close();
    temp.cleanup();
  });

  const adoptFile = async (file: string, name: string) => svc.adopt({ token, projectId: pid }, file, name);
  const backup = async (volumeId: string): Promise<{ id: string; status: string; fail_reason?: string | null }> => {
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/backups`, token, payload: { backup: { volume_id: volumeId } } });
    assert.equal(r.statusCode, 202, r.body);
    const done = await svc.waitBackup(token, pid, (r.json() as { backup: { id: string } }).backup.id);
    return done as { id: string; status: string; fail_reason?: string | null };
  };
  const restore = async (backupId: string, volumeId: string): Promise<Record<string, unknown>> => {
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: volumeId } } });
    assert.equal(r.statusCode, 200, r.body);
    return svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
  };
  const volumeStatus = async (id: string): Promise<string> => (await svc.app.catalog.volumes.getVolumeById(id))!.status;

  it('a restore onto a volume swapped for a symlink fails and never writes the link target', async () => {
    const good = path.join(root, 'good.img');
    const data = randomBytesSeeded(4 * MiB, 1);
    writeFileSync(good, data);
    const vol = await adoptFile(good, 'good');
    const b = await backup(vol.id);
    assert.equal(b.status, 'available', JSON.stringify(b));

    const victim = path.join(outside, 'victim.txt');
    writeFileSync(victim, 'precious\n');
    rmSync(good);
    symlinkSync(victim, good);

    const job = await restore(b.id, vol.id);
    assert.equal(job.status, 'FAIL', JSON.stringify(job));
    assert.match(String(job.fail_reason), /symbolic link/);
    assert.equal(await fs.readFile(victim, 'utf8'), 'precious\n', 'the link target is untouched');
    assert.equal(await volumeStatus(vol.id), 'error_restoring');

    // A backup through the link fails too, and reads nothing of the outside file.
    await svc.app.catalog.volumes.transitionVolume(vol.id, ['error_restoring'], 'available', Date.now());
    const b2 = await backup(vol.id);
    assert.equal(b2.status, 'error', JSON.stringify(b2));
    assert.match(String(b2.fail_reason), /symbolic link/);

    // Put the real file back: the same inode is the volume again, and everything works.
    rmSync(good);
    writeFileSync(victim, data); // (a new inode would be refused; see below)
    renameSync(victim, good);
    const b3 = await backup(vol.id);
    assert.equal(b3.status, 'error', 'a different file with the same bytes is still not the adopted file');
    assert.match(String(b3.fail_reason), /no longer the file Haven adopted/);
  });

  it('a restore onto a volume whose file was replaced by another file fails and leaves that file alone', async () => {
    const disk = path.join(root, 'swap.img');
    writeFileSync(disk, randomBytesSeeded(2 * MiB, 2));
    const vol = await adoptFile(disk, 'swap');
    const b = await backup(vol.id);
    assert.equal(b.status, 'available');
    const other = path.join(root, 'other.tmp');
    const otherBytes = randomBytesSeeded(3 * MiB, 3);
    writeFileSync(other, otherBytes);
    renameSync(other, disk); // another inode now has the volume's name
    const job = await restore(b.id, vol.id);
    assert.equal(job.status, 'FAIL');
    assert.match(String(job.fail_reason), /no longer the file Haven adopted/);
    assert.equal(await sha256File(disk), sha256(otherBytes));
  });

  it('a volume reached through a folder swapped for a symlink to outside the roots is refused', async () => {
    const dir = path.join(root, 'vms');
    mkdirSync(dir);
    const disk = path.join(dir, 'disk.img');
    writeFileSync(disk, randomBytesSeeded(MiB, 4));
    const vol = await adoptFile(disk, 'in-folder');
    const b = await backup(vol.id);
    assert.equal(b.status, 'available');
    // The same file, moved outside; the folder becomes a link to where it went.
    const away = path.join(outside, 'vms');
    renameSync(dir, away);
    symlinkSync(away, dir);
    const before = await sha256File(path.join(away, 'disk.img'));
    const job = await restore(b.id, vol.id);
    assert.equal(job.status, 'FAIL');
    assert.match(String(job.fail_reason), /outside its volume roots/);
    assert.equal(await sha256File(path.join(away, 'disk.img')), before);
  });

  it('refuses to adopt a hard link to a file outside the roots, and anything in the data folder', async () => {
    const foreign = path.join(outside, 'foreign.img');
    writeFileSync(foreign, randomBytesSeeded(MiB, 5));
    linkSync(foreign, path.join(root, 'hardlink.img'));
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/os-volume-manage`, token, payload: { volume: { ref: { 'source-name': path.join(root, 'hardlink.img') } } } });
    assert.match(assertCinderError(r, 400), /hard links/);

    // Roots that overlap the data folder: nothing of Haven's own can be adopted.
    const overlapping = await startService(temp, {});
    try {
      await overlapping.restart({ volumeRoots: [path.dirname(overlapping.dataDir), overlapping.dataDir] });
      const a = await overlapping.login('admin', 'admin-test-password', 'admin');
      const v = await overlapping.createVolume({ token: a.token, projectId: a.projectId }, 'mine');
      const snap = await overlapping.req({ method: 'POST', url: `/v3/${a.projectId}/snapshots`, token: a.token, payload: { snapshot: { volume_id: v.id } } });
      assert.equal(snap.statusCode, 202, snap.body);
      const snapPath = (await overlapping.app.catalog.volumes.getSnapshot(a.projectId, (snap.json() as { snapshot: { id: string } }).snapshot.id))!.path;
      const own = [path.join(overlapping.dataDir, 'catalog.sqlite'), path.join(overlapping.dataDir, 'repository', 'config'), snapPath, await overlapping.volumePath(v.id)];
      const countBefore = await overlapping.app.catalog.volumes.countVolumes(a.projectId);
      for (const p of own) {
        const res = await overlapping.req({ method: 'POST', url: `/v3/${a.projectId}/os-volume-manage`, token: a.token, payload: { volume: { ref: { 'source-name': p } } } });
        assert.match(assertCinderError(res, 400), /Haven's own data/, p);
      }
      assert.equal(await overlapping.app.catalog.volumes.countVolumes(a.projectId), countBefore);
    } finally {
      await overlapping.close();
    }
  });

  it('a restore of a backup that is not whole fails before touching the volume', async () => {
    const disk = path.join(root, 'keep.img');
    const first = randomBytesSeeded(3 * MiB, 6);
    writeFileSync(disk, first);
    const vol = await adoptFile(disk, 'keep');
    const b = await backup(vol.id);
    assert.equal(b.status, 'available');
    // The volume moves on; then a pack of the backup disappears.
    const now = randomBytesSeeded(3 * MiB, 7);
    const fh = await fs.open(disk, 'r+');
    await fh.write(now, 0, now.length, 0);
    await fh.close();
    const packsDir = path.join(svc.dataDir, 'repository', 'packs');
    const packs: string[] = [];
    for (const d of await fs.readdir(packsDir, { recursive: true, withFileTypes: true })) if (d.isFile()) packs.push(path.join(d.parentPath, d.name));
    assert.ok(packs.length > 0);
    const moved = new Map<string, string>();
    for (const p of packs) {
      moved.set(p, `${p}.away`);
      await fs.rename(p, `${p}.away`);
    }
    try {
      const job = await restore(b.id, vol.id);
      assert.equal(job.status, 'FAIL');
      assert.match(String(job.fail_reason), /missing/);
      assert.equal(await sha256File(disk), sha256(now), 'the volume keeps its contents');
      assert.equal((await fs.stat(disk)).size, now.length);
    } finally {
      for (const [p, away] of moved) await fs.rename(away, p);
    }
  });

  it('deleting a created volume whose file was swapped for a link leaves the link target alone', async () => {
    const v = await svc.createVolume({ token, projectId: pid }, 'created');
    const file = await svc.volumePath(v.id);
    const victim = path.join(outside, 'victim2.txt');
    writeFileSync(victim, 'keep me\n');
    rmSync(file);
    symlinkSync(victim, file);
    const r = await svc.req({ method: 'DELETE', url: `/v3/${pid}/volumes/${v.id}`, token });
    assert.match(assertCinderError(r, 400), /replaced/);
    assert.equal(await fs.readFile(victim, 'utf8'), 'keep me\n');
    // A snapshot through the link is refused as well.
    await svc.app.catalog.volumes.transitionVolume(v.id, ['error'], 'available', Date.now());
    const s = await svc.req({ method: 'POST', url: `/v3/${pid}/snapshots`, token, payload: { snapshot: { volume_id: v.id } } });
    assert.match(assertCinderError(s, 400), /symbolic link/);
    assert.equal(await fs.readFile(victim, 'utf8'), 'keep me\n');
    assert.equal((await svc.app.catalog.volumes.listSnapshots(pid, { volumeId: v.id, limit: 10, offset: 0 })).length, 0, 'no snapshot row is left');
  });

  it('refuses server names that would become options or break hook scripts', async () => {
    const v = await svc.createVolume({ token, projectId: pid }, 'sys');
    for (const name of ['-rf', '--mountpoint=/ *', 'web1\n--force', 'a\u0007b']) {
      const r = await svc.req({
        method: 'POST', url: `/v2.1/${pid}/servers`, token,
        payload: { server: { name, block_device_mapping_v2: [{ source_type: 'volume', uuid: v.id, boot_index: 0 }] } },
      });
      assertCinderError(r, 400);
    }
    assert.equal((await svc.app.catalog.servers.listServers(pid, { limit: 100, offset: 0 })).length, 0);
    // Spaces and globs inside a name are allowed (hooks quote them); only the leading '-' and control characters are not.
    const ok = await svc.req({
      method: 'POST', url: `/v2.1/${pid}/servers`, token,
      payload: { server: { name: 'web1 --mountpoint=/ *', block_device_mapping_v2: [{ source_type: 'volume', uuid: v.id, boot_index: 0 }] } },
    });
    assert.equal(ok.statusCode, 202, ok.body);
  });
});
