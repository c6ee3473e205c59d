/**
 * The disk of a running QEMU guest through the API (os-volume-manage with ref.qmp_socket and
 * ref.qmp_node): the guest is qemu-storage-daemon holding a qcow2 image under a volume root, with
 * a QMP monitor and an NBD export the "guest" writes through (qemu-io). VBS backups of the volume
 * take their point in time through QMP and, from the second on, read only the blocks of the dirty
 * bitmap haven-<previous backup>; restores are compared with the disk as the guest sees it. Also:
 * what adoption refuses (nothing created), snapshots of such a volume refused, a CSBS server backup
 * of a server with that disk (the freeze hook writes through the guest, the point in time is taken
 * through QMP, the thaw hook writes again: the backup holds the freeze hook's write and not the
 * thaw hook's, read through the dirty bitmap of the volume's previous backup), backups while the
 * guest is gone failing cleanly and working again once it is back, and a restore onto the running
 * guest's own disk leaving that disk untouched.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import type { BackupResult } from '../../src/engine/backup-writer.ts';
import { assertCinderError, createVolume, jobCount, withRunnerPaused } from '../helpers/api.ts';
import { changedReadBounds, compareImages, Guest, noQemu, tool, type GuestState } from '../helpers/qsd.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { GiB, KiB, makeSparseFile, MiB, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const BLOCK = 4 * KiB;
const PROVIDER = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';
/** Not a multiple of a GiB: the volume's size rounds up to 2. */
const DISK_BYTES = 1 * GiB + 64 * KiB;
/** Where the server backup's freeze and thaw hooks write through the guest (in the data at 300 MiB). */
const HOOK_AT = 300 * MiB + 128 * KiB;
const HOOK_LEN = 16 * KiB;
const FREEZE_PATTERN = 0xa1;
const THAW_PATTERN = 0xb2;

/** A word for sh, single-quoted. */
const sh = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

describe('the disk of a running QEMU guest as a volume (os-volume-manage with qmp_socket/qmp_node)', { skip: noQemu }, () => {
  const temp = new TempDirs('haven-qmpvol-');
  let svc: TestService;
  let token: string;
  let pid: string;
  /** The volume root (guest A's folder is in it, and image B). */
  let root: string;
  /** Haven's temporary folder (fleece overlays, per-disk lock files), checked empty of them. */
  let havenTmp: string;
  let work: string;
  let savedTmpdir: string | undefined;
  let guest: Guest;
  let imageB: string;
  /** What the server backup's hooks log, a line each: name, HAVEN_SERVER_ID, _NAME, _VOLUME_PATHS. */
  let hookLog: string;
  /** What the engine returned per backup id (read bytes, changed-block tracking). */
  const results = new Map<string, BackupResult>();
  let chunkSize: number;

  // Filled by the adoption test, used by the later ones.
  let volumeId = '';
  let lastGoodBackup = '';

  before(async () => {
    const base = temp.make();
    root = path.join(base, 'images');
    havenTmp = path.join(base, 'tmp');
    work = path.join(base, 'work');
    for (const d of [root, havenTmp, work]) await fs.mkdir(d);
    hookLog = path.join(work, 'hooks.log');

    const raw = path.join(work, 'base.raw');
    await makeSparseFile(raw, DISK_BYTES, [
      { offset: 0, data: randomBytesSeeded(1 * MiB, 71) },
      { offset: 300 * MiB, data: randomBytesSeeded(512 * KiB, 72) },
      { offset: 1 * GiB, data: randomBytesSeeded(64 * KiB, 73) },
    ]);
    const gdir = path.join(root, 'guest-a');
    await fs.mkdir(gdir);
    guest = await Guest.start(gdir, { sizeBytes: DISK_BYTES, baseRaw: raw });
    await fs.rm(raw);
    imageB = path.join(root, 'other.qcow2');
    await tool('qemu-img', ['create', '-q', '-f', 'qcow2', imageB, String(64 * MiB)]);

    // The hooks of server backups (only the CSBS case runs them): each logs its name and what it
    // was told, then the guest writes its pattern at HOOK_AT through its NBD export, as
    // Guest.io() does (qemu-io reports a failed write on stdout: any output fails the hook).
    const hook = (name: string, pattern: number): string => [
      'set -e',
      `printf '%s %s %s %s\\n' ${name} "$HAVEN_SERVER_ID" "$HAVEN_SERVER_NAME" "$HAVEN_VOLUME_PATHS" >> ${sh(hookLog)}`,
      `out=$(qemu-io -f raw ${sh(guest.url)} -c ${sh(`write -q -P 0x${pattern.toString(16)} ${HOOK_AT} ${HOOK_LEN}`)} 2>&1) || { echo "qemu-io: $out" >&2; exit 1; }`,
      `[ -z "$out" ] || { echo "qemu-io: $out" >&2; exit 1; }`,
    ].join('\n');
    svc = await startService(temp, { volumeRoots: [root], freezeCommand: hook('freeze', FREEZE_PATTERN), thawCommand: hook('thaw', THAW_PATTERN) });
    // The jobs run in this process: their os.tmpdir() is this folder from now on.
    savedTmpdir = process.env.TMPDIR;
    process.env.TMPDIR = havenTmp;
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
    chunkSize = svc.app.engine.repo.config.chunkSizeBytes;
    // A spy on the engine: what each backup read (the API does not say).
    const engine = svc.app.engine;
    const backup = engine.backup.bind(engine);
    engine.backup = async (...args: Parameters<typeof backup>) => {
      const r = await backup(...args);
      results.set(args[1].backupId, r);
      return r;
    };
    // A server backup writes a guest's point in time taken earlier (between its hooks) directly.
    const writeGuestPoint = engine.writeGuestPoint.bind(engine);
    engine.writeGuestPoint = async (...args: Parameters<typeof writeGuestPoint>) => {
      const r = await writeGuestPoint(...args);
      results.set(args[1].backupId, r);
      return r;
    };
  });

  after(async () => {
    await guest?.stop().catch(() => undefined);
    await svc?.close().catch(() => undefined);
    if (savedTmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmpdir;
    temp.cleanup();
  });

  // ---- helpers ----

  const manage = (ref: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<LightMyRequestResponse> =>
    svc.req({ method: 'POST', url: `/v3/${pid}/os-volume-manage`, token, payload: { volume: { ref, name: 'guest-disk', ...extra } } });

  const volumeIds = async (): Promise<string[]> => {
    const r = await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/detail`, token });
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { volumes: Array<{ id: string }> }).volumes.map((v) => v.id).sort();
  };

  const snapshotIds = async (): Promise<string[]> => {
    const r = await svc.req({ method: 'GET', url: `/v3/${pid}/snapshots`, token });
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { snapshots: Array<{ id: string }> }).snapshots.map((s) => s.id).sort();
  };

  const backupIds = async (): Promise<string[]> => {
    const r = await svc.req({ method: 'GET', url: `/v3/${pid}/backups`, token });
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { backups: Array<{ id: string }> }).backups.map((b) => b.id).sort();
  };

  /** A VBS backup of the volume, its job awaited: the job as polled and the backup id. */
  const vbsBackup = async (name: string): Promise<{ job: Record<string, unknown>; id: string }> => {
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: volumeId, name } } });
    assert.equal(r.statusCode, 200, r.body);
    const job = await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
    assert.equal(job.job_type, 'bksCreateBackup');
    return { job, id: (job.entities as Record<string, string>).backup_id! };
  };

  /** The backup as VBS (/v2) and Cinder (/v3) show it; both must agree on is_incremental. */
  const shownBackup = async (id: string): Promise<Record<string, unknown>> => {
    const v2 = await svc.req({ method: 'GET', url: `/v2/${pid}/backups/${id}`, token });
    assert.equal(v2.statusCode, 200, v2.body);
    const v3 = await svc.req({ method: 'GET', url: `/v3/${pid}/backups/${id}`, token });
    assert.equal(v3.statusCode, 200, v3.body);
    const a = (v2.json() as { backup: Record<string, unknown> }).backup;
    const b = (v3.json() as { backup: Record<string, unknown> }).backup;
    assert.equal(a.is_incremental, b.is_incremental);
    assert.equal(a.status, b.status);
    return b;
  };

  const restoreOnto = async (backupId: string, targetVolumeId: string): Promise<Record<string, unknown>> => {
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: targetVolumeId } } });
    assert.equal(r.statusCode, 200, r.body);
    return svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
  };

  /**
   * After a successful backup `id`: exactly one Haven bitmap on disk0, haven-<id> (recording,
   * persistent, consistent); no Haven node, job or export left; the guest's own export still there;
   * no fleece folder or lock file of Haven's left in its temporary folder.
   */
  const assertCleanGuest = async (id: string): Promise<GuestState> => {
    const s = await guest.state();
    const ours = s.bitmaps.filter((b) => b.name?.startsWith('haven-'));
    assert.deepEqual(ours.map((b) => b.name), [`haven-${id}`], 'exactly the bitmap of the last backup');
    assert.equal(ours[0]!.recording, true);
    assert.equal(ours[0]!.persistent, true);
    assert.notEqual(ours[0]!.inconsistent, true);
    assert.deepEqual(s.strayBitmaps, []);
    assert.deepEqual(s.nodes.filter((n) => n.startsWith('haven-')), [], 'no Haven node left');
    assert.deepEqual([...s.nodes].sort(), ['disk0', 'file0']);
    assert.deepEqual(s.jobs, [], 'no block job left');
    assert.deepEqual(s.exports, ['exp0'], 'only the guest\'s own export');
    assert.deepEqual((await fs.readdir(havenTmp)).filter((n) => n.startsWith('haven-')), [], 'no fleece folder or lock file left');
    return s;
  };

  const block = (offset: number): number => Math.floor(offset / BLOCK);

  // ---- tests ----

  it('refuses bad qmp references with 400 and creates nothing', async () => {
    const volumesBefore = await volumeIds();
    const jobsBefore = await jobCount(svc);
    const notSocket = path.join(guest.dir, 'not-a-socket');
    await fs.writeFile(notSocket, '{"QMP": {}}\n');
    const cases: Array<{ what: string; ref: Record<string, unknown>; extra?: Record<string, unknown>; message: RegExp }> = [
      { what: 'qmp_socket without qmp_node', ref: { 'source-name': guest.image, qmp_socket: guest.qmpSocket }, message: /qmp_socket and ref\.qmp_node go together/ },
      { what: 'qmp_node without qmp_socket', ref: { 'source-name': guest.image, qmp_node: 'disk0' }, message: /qmp_socket and ref\.qmp_node go together/ },
      { what: 'a node QEMU does not have', ref: { 'source-name': guest.image, qmp_socket: guest.qmpSocket, qmp_node: 'disk9' }, message: /no block node "disk9"/ },
      { what: 'the protocol node, not the format node', ref: { 'source-name': guest.image, qmp_socket: guest.qmpSocket, qmp_node: 'file0' }, message: /file node/ },
      { what: 'a node on another image than source-name', ref: { 'source-name': imageB, qmp_socket: guest.qmpSocket, qmp_node: 'disk0' }, message: /is the image .*disk\.qcow2, not .*other\.qcow2/ },
      { what: 'a qmp_socket that is a regular file', ref: { 'source-name': guest.image, qmp_socket: notSocket, qmp_node: 'disk0' }, message: /is not a socket/ },
      { what: 'a qmp_socket that does not exist', ref: { 'source-name': guest.image, qmp_socket: path.join(guest.dir, 'gone.sock'), qmp_node: 'disk0' }, message: /is not a socket/ },
      { what: 'a relative qmp_socket', ref: { 'source-name': guest.image, qmp_socket: 'guest-a/qmp.sock', qmp_node: 'disk0' }, message: /absolute path/ },
      // (Refused after QmpClient's 10 s wait for a greeting line: NBD's greeting has no newline.)
      { what: 'a Unix socket that does not speak QMP (the guest\'s NBD server)', ref: { 'source-name': guest.image, qmp_socket: guest.nbdSocket, qmp_node: 'disk0' }, message: /cannot talk QMP/ },
      { what: 'volume_type raw for a qcow2 node', ref: { 'source-name': guest.image, qmp_socket: guest.qmpSocket, qmp_node: 'disk0' }, extra: { volume_type: 'raw' }, message: /is a qcow2 image, not raw/ },
      { what: 'an empty qmp_node', ref: { 'source-name': guest.image, qmp_socket: guest.qmpSocket, qmp_node: '' }, message: /./ },
    ];
    for (const c of cases) {
      const message = assertCinderError(await manage(c.ref, c.extra), 400);
      assert.match(message, c.message, c.what);
    }
    assert.deepEqual(await volumeIds(), volumesBefore, 'no volume was created');
    assert.equal(await jobCount(svc), jobsBefore, 'no job was queued');
    // Every refusal that talked to QEMU hung up: the monitor (one client at a time) answers, untouched.
    const s = await guest.state();
    assert.deepEqual(s.bitmaps, []);
    assert.deepEqual([...s.nodes].sort(), ['disk0', 'file0']);
    assert.deepEqual(s.exports, ['exp0']);
    await fs.rm(notSocket);
  });

  it('adopts the running guest\'s disk; backups through QMP, the second incremental from the dirty bitmap; the restore reads as the guest\'s disk', async () => {
    const volumesBefore = await volumeIds();
    const adopted = await manage({ 'source-name': guest.image, qmp_socket: guest.qmpSocket, qmp_node: 'disk0' }, { name: 'guest-a' });
    assert.equal(adopted.statusCode, 202, adopted.body);
    const vol = (adopted.json() as { volume: { id: string; size: number; status: string; volume_type: string; name: string } }).volume;
    volumeId = vol.id;
    assert.equal(vol.status, 'available');
    assert.equal(vol.size, 2, '1 GiB + 64 KiB of virtual size rounds up to 2 GB');
    assert.equal(vol.volume_type, 'qcow2', 'the format is the node\'s');
    assert.equal(vol.name, 'guest-a');
    assert.deepEqual(await volumeIds(), [...volumesBefore, vol.id].sort());
    const row = (await svc.app.catalog.volumes.getVolumeById(vol.id))!;
    assert.deepEqual(row.qmp, { socket: guest.qmpSocket, node: 'disk0' });
    assert.equal(row.format, 'qcow2');
    assert.equal(row.sizeBytes, DISK_BYTES);
    assert.equal(row.path, guest.image);
    // Adopting the same image again (with its node) is refused.
    assertCinderError(await manage({ 'source-name': guest.image, qmp_socket: guest.qmpSocket, qmp_node: 'disk0' }), 400);
    assert.equal((await volumeIds()).length, volumesBefore.length + 1);

    // The first backup: full, through QMP; the guest then holds exactly its bitmap.
    const b1 = await vbsBackup('first');
    assert.equal(b1.job.status, 'SUCCESS', JSON.stringify(b1.job));
    const shown1 = await shownBackup(b1.id);
    assert.equal(shown1.status, 'available');
    assert.equal(shown1.is_incremental, false);
    assert.equal(results.get(b1.id)?.changedBlockTracking, false);
    await assertCleanGuest(b1.id);
    const atFirst = path.join(work, 'at-first.raw');
    await guest.copyTo(atFirst);

    // The guest writes a few 4 KiB blocks: in data, in a hole, and the disk's last block.
    const offsets = [7 * BLOCK, 300 * MiB + 3 * BLOCK, 200 * MiB, DISK_BYTES - BLOCK];
    await guest.io(offsets.map((o, i) => `write -q -P 0x${(0x5a + i).toString(16)} ${o} ${BLOCK}`));
    assert.notEqual(await guest.compare(atFirst), null, 'the writes changed the disk');

    const b2 = await vbsBackup('second');
    assert.equal(b2.job.status, 'SUCCESS', JSON.stringify(b2.job));
    const shown2 = await shownBackup(b2.id);
    assert.equal(shown2.status, 'available');
    assert.equal(shown2.is_incremental, true);
    assert.equal((await svc.app.catalog.backups.getBackupById(b2.id))!.parentId, b1.id);
    // Only the dirty blocks were read (changed-block tracking), not the disk's 1.5 MiB of data.
    const r2 = results.get(b2.id)!;
    assert.equal(r2.changedBlockTracking, true, 'read through the dirty bitmap');
    const bounds = changedReadBounds(offsets.map(block), chunkSize, DISK_BYTES);
    assert.ok(r2.readBytes >= bounds.dirtyBytes && r2.readBytes <= bounds.maxReadBytes, `read ${r2.readBytes} bytes, expected ${bounds.dirtyBytes}..${bounds.maxReadBytes}`);
    await assertCleanGuest(b2.id);
    lastGoodBackup = b2.id;

    // Restore the second backup onto a new raw volume (2 GB): it reads as the guest's disk now
    // (the tail beyond the disk's end zeros), the first one as the disk was then.
    const target = await createVolume(svc, token, pid, { size: 2, name: 'restored-second' });
    const rj = await restoreOnto(b2.id, target.id);
    assert.equal(rj.status, 'SUCCESS', JSON.stringify(rj));
    assert.equal((await fs.stat(target.path)).size, 2 * GiB);
    assert.equal(await compareImages(target.path, 'raw', guest.url, 'raw'), null, 'the restore of the second backup reads as the guest\'s disk');
    const target1 = await createVolume(svc, token, pid, { size: 2, name: 'restored-first' });
    const rj1 = await restoreOnto(b1.id, target1.id);
    assert.equal(rj1.status, 'SUCCESS', JSON.stringify(rj1));
    assert.equal(await compareImages(target1.path, 'raw', atFirst, 'raw'), null, 'the restore of the first backup reads as the disk was then');
    await fs.rm(atFirst);
    // Nothing of Haven's left on the guest after the restores either (they do not touch it).
    await assertCleanGuest(b2.id);
  });

  it('refuses a snapshot of the running guest\'s disk (400) and creates nothing', async () => {
    assert.ok(volumeId, 'the adoption test ran');
    const before = await snapshotIds();
    for (const force of [false, true]) {
      const r = await svc.req({ method: 'POST', url: `/v3/${pid}/snapshots`, token, payload: { snapshot: { volume_id: volumeId, name: 'snap', force } } });
      const message = assertCinderError(r, 400);
      assert.match(message, /disk of a running guest/, message);
    }
    assert.deepEqual(await snapshotIds(), before);
    assert.deepEqual(await fs.readdir(path.join(svc.dataDir, 'snapshots')).catch(() => []), []);
    const v = await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${volumeId}`, token });
    assert.equal((v.json() as { volume: { status: string } }).volume.status, 'available');
  });

  it('backs up a server with that disk (CSBS): freeze hook, the point in time through QMP, thaw hook; the backup holds what the guest wrote before the moment, not after', async () => {
    assert.ok(volumeId && lastGoodBackup, 'the adoption test ran');
    const srv = await svc.req({ method: 'POST', url: `/v2.1/${pid}/servers`, token, payload: { server: { name: 'vm-a', block_device_mapping_v2: [{ source_type: 'volume', uuid: volumeId, boot_index: 0 }] } } });
    assert.equal(srv.statusCode, 202, srv.body);
    const serverId = (srv.json() as { server: { id: string } }).server.id;
    const backupsBefore = await backupIds();
    // The disk as the guest sees it before the freeze hook: the moment is this plus the freeze
    // hook's write; the guest's disk after the job this plus the thaw hook's.
    const atStart = path.join(work, 'before-freeze.raw');
    await guest.copyTo(atStart);
    const region = async (file: string): Promise<Buffer> => {
      const fh = await fs.open(file, 'r');
      try {
        const buf = Buffer.alloc(HOOK_LEN);
        const { bytesRead } = await fh.read(buf, 0, HOOK_LEN, HOOK_AT);
        assert.equal(bytesRead, HOOK_LEN);
        return buf;
      } finally {
        await fh.close();
      }
    };
    /** Whether `file` holds `pattern` all over the hooks' region (else its first bytes there, to say so). */
    const holds = async (file: string, pattern: number): Promise<true | string> => {
      const got = await region(file);
      return got.equals(Buffer.alloc(HOOK_LEN, pattern)) || `${HOOK_LEN} bytes at ${HOOK_AT} start ${got.subarray(0, 16).toString('hex')}`;
    };
    assert.notEqual(await holds(atStart, FREEZE_PATTERN), true, 'the freeze hook\'s pattern is not there before it');
    await fs.rm(hookLog, { force: true });

    const { cp, jobId } = await withRunnerPaused(svc, async () => {
      const prot = await svc.req({ method: 'POST', url: `/v1/${pid}/providers/${PROVIDER}/resources/${serverId}/action`, token, payload: { protect: { backup_name: 'vm-a_b1' } } });
      assert.equal(prot.statusCode, 200, prot.body);
      const jobs = await svc.app.catalog.jobs.activeJobs(['csbsProtect']);
      assert.equal(jobs.length, 1);
      return { cp: (prot.json() as { checkpoint: { id: string } }).checkpoint, jobId: jobs[0]!.id };
    });
    const job = await svc.waitJob(token, pid, jobId);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));

    // The item is available with the one volume backup of the guest's disk.
    const list = await svc.req({ method: 'GET', url: `/v1/${pid}/checkpoint_items?checkpoint_id=${cp.id}`, token });
    assert.equal(list.statusCode, 200, list.body);
    const items = (list.json() as { checkpoint_items: Array<{ id: string; status: string; resource_id: string; extend_info: { fail_reason: string | null; volume_backups: Array<{ id: string; source_volume_id: string; status: string; incremental: boolean }> } }> }).checkpoint_items;
    assert.equal(items.length, 1);
    const item = items[0]!;
    assert.equal(item.status, 'available', JSON.stringify(item));
    assert.equal(item.resource_id, serverId);
    assert.equal(item.extend_info.volume_backups.length, 1, JSON.stringify(item.extend_info));
    const vb = item.extend_info.volume_backups[0]!;
    assert.equal(vb.source_volume_id, volumeId);
    assert.equal(vb.status, 'available');
    assert.deepEqual(await backupIds(), [...backupsBefore, vb.id].sort(), 'exactly one volume backup was made');

    // An ordinary volume backup of the volume (origin csbs, linked to the item), incremental from
    // the volume's last backup and read through its dirty bitmap: only the freeze hook's blocks
    // changed before the moment (the thaw hook's write came after it).
    const row = (await svc.app.catalog.backups.getBackupById(vb.id))!;
    assert.equal(row.origin, 'csbs');
    assert.equal(row.checkpointItemId, item.id);
    assert.equal(row.volumeId, volumeId);
    assert.equal(row.parentId, lastGoodBackup);
    const shown = await shownBackup(vb.id);
    assert.equal(shown.status, 'available');
    assert.equal(shown.is_incremental, true);
    const r = results.get(vb.id);
    assert.ok(r, 'the engine wrote the guest\'s point in time');
    assert.equal(r.changedBlockTracking, true, 'read through the dirty bitmap of the previous backup');
    const hookBlocks = Array.from({ length: HOOK_LEN / BLOCK }, (_, i) => block(HOOK_AT) + i);
    const bounds = changedReadBounds(hookBlocks, chunkSize, DISK_BYTES);
    assert.ok(r.readBytes >= bounds.dirtyBytes && r.readBytes <= bounds.maxReadBytes, `read ${r.readBytes} bytes, expected ${bounds.dirtyBytes}..${bounds.maxReadBytes}`);

    // The hooks ran once each, freeze then thaw, told about the server and its disk.
    const log = (await fs.readFile(hookLog, 'utf8')).trimEnd().split('\n');
    assert.deepEqual(log, [`freeze ${serverId} vm-a ${guest.image}`, `thaw ${serverId} vm-a ${guest.image}`]);

    // Nothing of Haven's left: the guest holds only the bitmap of this backup; no copy left.
    await assertCleanGuest(vb.id);
    assert.deepEqual(await fs.readdir(path.join(svc.dataDir, 'snapshots')).catch(() => []), [], 'no server copy left');

    // The guest's disk now: as before the freeze, with the thaw hook's pattern (the last write).
    const patch = async (pattern: number): Promise<void> => {
      const fh = await fs.open(atStart, 'r+');
      try {
        await fh.write(Buffer.alloc(HOOK_LEN, pattern), 0, HOOK_LEN, HOOK_AT);
      } finally {
        await fh.close();
      }
    };
    await patch(THAW_PATTERN);
    assert.equal(await guest.compare(atStart), null, 'the guest\'s disk: as before, with the thaw hook\'s write');

    // The restore of the server backup's volume backup: the disk at the moment, with the freeze
    // hook's pattern and not the thaw hook's, the rest as the guest had it.
    const target = await createVolume(svc, token, pid, { size: 2, name: 'restored-csbs' });
    const rj = await restoreOnto(vb.id, target.id);
    assert.equal(rj.status, 'SUCCESS', JSON.stringify(rj));
    assert.equal(await holds(target.path, FREEZE_PATTERN), true, 'the freeze hook\'s write (before the moment) is in the backup');
    assert.match(String(await guest.compare(target.path)), new RegExp(`offset ${HOOK_AT}\\b`), 'the guest\'s disk differs from the backup first where the thaw hook wrote');
    await patch(FREEZE_PATTERN);
    assert.equal(await compareImages(target.path, 'raw', atStart, 'raw'), null, 'the rest of the restore reads as the guest\'s disk');
    await fs.rm(atStart);
    await assertCleanGuest(vb.id);

    // The server goes; its volume is available again (and still the guest's).
    assert.equal((await svc.req({ method: 'DELETE', url: `/v2.1/${pid}/servers/${serverId}`, token })).statusCode, 204);
    const v = await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${volumeId}`, token });
    assert.equal((v.json() as { volume: { status: string } }).volume.status, 'available');

    // The volume's next VBS backup follows the server backup: incremental from it, reading only
    // what the guest wrote since its moment (the thaw hook's blocks, in bitmap haven-<its id>).
    const next = await vbsBackup('after-csbs');
    assert.equal(next.job.status, 'SUCCESS', JSON.stringify(next.job));
    assert.equal((await shownBackup(next.id)).is_incremental, true);
    assert.equal((await svc.app.catalog.backups.getBackupById(next.id))!.parentId, vb.id);
    const rn = results.get(next.id)!;
    assert.equal(rn.changedBlockTracking, true, 'read through the server backup\'s dirty bitmap');
    assert.ok(rn.readBytes >= bounds.dirtyBytes && rn.readBytes <= bounds.maxReadBytes, `read ${rn.readBytes} bytes, expected ${bounds.dirtyBytes}..${bounds.maxReadBytes}`);
    await assertCleanGuest(next.id);
    const targetNext = await createVolume(svc, token, pid, { size: 2, name: 'restored-after-csbs' });
    const rjn = await restoreOnto(next.id, targetNext.id);
    assert.equal(rjn.status, 'SUCCESS', JSON.stringify(rjn));
    assert.equal(await compareImages(targetNext.path, 'raw', guest.url, 'raw'), null, 'the restore reads as the guest\'s disk, the thaw hook\'s write included');
    lastGoodBackup = next.id;
  });

  it('fails a backup while the guest is gone (killed, then stopped) and backs up again once it is back', async () => {
    assert.ok(volumeId, 'the adoption test ran');
    const expectFailure = async (name: string): Promise<void> => {
      const t0 = Date.now();
      const b = await vbsBackup(name);
      assert.equal(b.job.status, 'FAIL', JSON.stringify(b.job));
      assert.ok(Date.now() - t0 < 15_000, 'failed at once, not after waiting');
      assert.match(String(b.job.fail_reason), /\S/);
      const row = await shownBackup(b.id);
      assert.equal(row.status, 'error');
      assert.match(String(row.fail_reason), /\S/);
      assert.deepEqual((await fs.readdir(havenTmp)).filter((n) => n.startsWith('haven-')), [], 'no fleece folder or lock file left');
    };

    // Killed: the QMP socket file stays, nobody listens (and its bitmap is not saved).
    await guest.stop('SIGKILL');
    await expectFailure('while-killed');
    await guest.boot();
    const b4 = await vbsBackup('after-kill');
    assert.equal(b4.job.status, 'SUCCESS', JSON.stringify(b4.job));
    assert.equal((await shownBackup(b4.id)).status, 'available');
    assert.equal((await svc.app.catalog.backups.getBackupById(b4.id))!.parentId, lastGoodBackup, 'the failed backup is no parent');
    assert.equal(results.get(b4.id)?.changedBlockTracking, false, 'the killed guest\'s bitmap is not to be trusted: read whole');
    await assertCleanGuest(b4.id);

    // Stopped cleanly: the socket is gone; QEMU saved its bitmap, so the next backup reads the changes only.
    await guest.stop();
    await expectFailure('while-stopped');
    await guest.boot();
    const offset = 600 * MiB;
    await guest.io([`write -q -P 0x77 ${offset} ${BLOCK}`]);
    const b6 = await vbsBackup('after-stop');
    assert.equal(b6.job.status, 'SUCCESS', JSON.stringify(b6.job));
    const shown6 = await shownBackup(b6.id);
    assert.equal(shown6.status, 'available');
    assert.equal(shown6.is_incremental, true);
    assert.equal((await svc.app.catalog.backups.getBackupById(b6.id))!.parentId, b4.id);
    const r6 = results.get(b6.id)!;
    assert.equal(r6.changedBlockTracking, true, 'the bitmap QEMU saved at its clean stop is used');
    assert.ok(r6.readBytes <= changedReadBounds([block(offset)], chunkSize, DISK_BYTES).maxReadBytes, `read ${r6.readBytes} bytes`);
    await assertCleanGuest(b6.id);
    lastGoodBackup = b6.id;

    const target = await createVolume(svc, token, pid, { size: 2, name: 'restored-after-stop' });
    const rj = await restoreOnto(b6.id, target.id);
    assert.equal(rj.status, 'SUCCESS', JSON.stringify(rj));
    assert.equal(await compareImages(target.path, 'raw', guest.url, 'raw'), null, 'the restore reads as the guest\'s disk');
  });

  it('fails a backup when the QMP socket now leads to a guest whose node is another image, and leaves that guest clean', async () => {
    assert.ok(volumeId, 'the adoption test ran');
    // Guest A stops (cleanly: its bitmap is saved); guest C runs on another image, and the volume's
    // QMP socket path now leads to C's monitor.
    await guest.stop();
    const cdir = path.join(root, 'guest-c');
    await fs.mkdir(cdir);
    const other = await Guest.start(cdir, { sizeBytes: DISK_BYTES });
    try {
      await fs.symlink(other.qmpSocket, guest.qmpSocket);
      const b = await vbsBackup('other-image');
      assert.equal(b.job.status, 'FAIL', JSON.stringify(b.job));
      assert.match(String(b.job.fail_reason), /node disk0 .* is now the image .*guest-c\/disk\.qcow2, not the volume's .*guest-a\/disk\.qcow2/);
      assert.equal((await shownBackup(b.id)).status, 'error');
      const s = await other.state();
      assert.deepEqual(s.bitmaps, [], 'no bitmap of Haven\'s left on the other guest');
      assert.deepEqual([...s.nodes].sort(), ['disk0', 'file0']);
      assert.deepEqual(s.jobs, []);
      assert.deepEqual(s.exports, ['exp0']);
      assert.deepEqual((await fs.readdir(havenTmp)).filter((n) => n.startsWith('haven-')), []);
    } finally {
      await other.stop();
      await fs.rm(guest.qmpSocket, { force: true });
    }
    // Guest A back: its saved bitmap is still the last good backup's.
    await guest.boot();
    await assertCleanGuest(lastGoodBackup);
  });

  it('a restore onto the running guest\'s own disk fails (QEMU holds its lock) and leaves the disk as the guest wrote it', async () => {
    assert.ok(volumeId && lastGoodBackup, 'the earlier tests ran');
    // The guest writes after the last backup: a restore that got through would undo the write.
    await guest.io([`write -q -P 0x99 ${8 * BLOCK} ${BLOCK}`]);
    const atStart = path.join(work, 'before-restore.raw');
    await guest.copyTo(atStart);
    const job = await restoreOnto(lastGoodBackup, volumeId);
    assert.equal(job.status, 'FAIL', JSON.stringify(job));
    assert.match(String(job.fail_reason), /lock/);
    assert.equal(await guest.compare(atStart), null, 'the guest\'s disk is unchanged');
    await fs.rm(atStart);
    await assertCleanGuest(lastGoodBackup);
    assert.equal((await shownBackup(lastGoodBackup)).status, 'available', 'the backup is intact');
  });

  it('the running guest\'s disk can still be backed up after that refused restore', async () => {
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: volumeId, name: 'after-refused-restore' } } });
    assert.equal(r.statusCode, 200, r.body);
    const job = await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    const v = await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${volumeId}`, token });
    assert.equal((v.json() as { volume: { status: string } }).volume.status, 'available', 'nothing was written: the volume stays available');
  });
});
