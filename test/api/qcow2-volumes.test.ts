/**
 * qcow2 volumes over HTTP, with real QEMU tools and real bytes: Cinder's volume_type "qcow2" makes a
 * qcow2 image; os-volume-manage adopts one (sized by its virtual size, refusing images that name
 * another file: a backing file or an external data file, and files that are not qcow2); backups
 * read the guest-visible disk through qemu-nbd without any backing file (a header rewritten on the
 * host to name a host file never leaks that file into a backup); restores write the image in place
 * (holes as zeros, zeros past the backup's end of a larger volume), onto qcow2 or raw volumes;
 * snapshots keep the format, and so does a volume made from one. Every comparison is of the disk as
 * the guest sees it (qemu-img compare, qemu-io read -P), never of the image files' bytes.
 */
import assert from 'node:assert/strict';
import { existsSync, promises as fs, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { GiB, MiB, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';
import { assertCinderError, jobCount } from '../helpers/api.ts';
import { qemuImg, qemuImgCompare, qemuIo, qemuToolsMissing, runTool } from '../helpers/qemu.ts';

const KiB64 = 64 * 1024;
const skip = qemuToolsMissing();

interface VolumeJson {
  id: string;
  name: string | null;
  status: string;
  size: number;
  volume_type: string;
}
interface ImageInfoJson {
  format: string;
  'virtual-size': number;
  'backing-filename'?: string;
}

describe('qcow2 volumes (volume_type "qcow2")', { skip }, () => {
  const temp = new TempDirs('haven-qcow2-');
  let svc: TestService;
  let token: string;
  let pid: string;
  let root: string; // the volume root adoptions come from
  let work: string; // the test's own files: random data, copies of guest views, host "secrets"

  before(async () => {
    root = temp.make('root');
    work = temp.make('work');
    svc = await startService(temp, { volumeRoots: [root] });
    ({ token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin'));
  });
  after(async () => {
    await svc?.close();
    temp.cleanup();
  });

  // ---- helpers ----

  const volumesDir = () => path.join(svc.dataDir, 'volumes');
  const volumeFiles = () => (existsSync(volumesDir()) ? readdirSync(volumesDir()).sort() : []);
  const countVolumes = () => svc.app.catalog.volumes.countVolumes(pid);
  const listedIds = async () => ((await svc.req({ method: 'GET', url: `/v3/${pid}/volumes`, token })).json() as { volumes: { id: string }[] }).volumes.map((v) => v.id);

  /** POST /v3/{pid}/volumes: 202, available; the JSON and the file from the catalog. */
  const createVolume = async (body: Record<string, unknown>): Promise<{ id: string; path: string; json: VolumeJson }> => {
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: body } });
    assert.equal(r.statusCode, 202, r.body);
    const json = (r.json() as { volume: VolumeJson }).volume;
    assert.equal(json.status, 'available');
    const row = await svc.app.catalog.volumes.getVolumeById(json.id);
    assert.ok(row, `volume ${json.id} is not in the catalog`);
    return { id: json.id, path: row.path, json };
  };
  const createQcow2 = (sizeGb: number, name: string) => createVolume({ size: sizeGb, name, volume_type: 'qcow2' });

  /** POST /v3/{pid}/os-volume-manage (the raw response). */
  const manage = (file: string, extra: Record<string, unknown> = {}) =>
    svc.req({ method: 'POST', url: `/v3/${pid}/os-volume-manage`, token, payload: { volume: { ref: { 'source-name': file }, ...extra } } });

  const info = async (file: string): Promise<ImageInfoJson> => JSON.parse(await qemuImg(['info', '-U', '--output=json', file])) as ImageInfoJson;

  /** A file of seeded random bytes, for `qemu-io write -s`. */
  const randomFile = (name: string, size: number, seed: number): string => {
    const f = path.join(work, name);
    writeFileSync(f, randomBytesSeeded(size, seed));
    return f;
  };

  /** A stand-alone copy of the guest view of a qcow2 image (what a backup must hold). */
  const guestCopy = async (file: string, name: string): Promise<string> => {
    const to = path.join(work, `${name}.qcow2`);
    await qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', file, to]);
    return to;
  };

  /** `qemu-img compare` of the guest views: identical (a larger image's extra part reads zeros). */
  const assertSameDisk = async (a: string, b: string, fa: 'qcow2' | 'raw', fb: 'qcow2' | 'raw', what: string): Promise<void> => {
    const r = await qemuImgCompare(['-f', fa, '-F', fb, a, b]);
    assert.equal(r.code, 0, `${what}: qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`);
  };
  const assertDifferentDisk = async (a: string, b: string, what: string): Promise<void> => {
    const r = await qemuImgCompare(['-f', 'qcow2', '-F', 'qcow2', a, b]);
    assert.equal(r.code, 1, `${what}: expected the disks to differ: ${r.stdout}${r.stderr}`);
  };
  /** Asserts every byte of [off, off+len) of the guest view is `pattern`. */
  const assertReads = (file: string, pattern: number, off: number, len: number, format: 'qcow2' | 'raw' = 'qcow2') =>
    qemuIo(file, [`read -q -P 0x${pattern.toString(16)} ${off} ${len}`], { format, readOnly: true });

  /**
   * Past `from`, the image's map holds nothing that reads other than zeros (no data without the
   * zero flag; there is no backing file to fall through to). Complements qemu-img compare, which
   * also checks that the extra part of the larger image reads zeros.
   */
  const assertZerosFrom = async (file: string, from: number): Promise<void> => {
    const map = JSON.parse(await qemuImg(['map', '-f', 'qcow2', '--output=json', file])) as { start: number; length: number; data: boolean; zero: boolean }[];
    const end = map.reduce((e, x) => Math.max(e, x.start + x.length), 0);
    assert.equal(end, (await info(file))['virtual-size'], 'the map covers the whole disk');
    for (const x of map) {
      if (x.start + x.length <= from) continue;
      assert.ok(x.zero || !x.data, `${file}: data past ${from}: ${JSON.stringify(x)}`);
    }
  };

  /** VBS backup (POST /v2/{pid}/cloudbackups) of a volume; the job and the backup id. */
  const vbsBackup = async (volumeId: string, name: string) => {
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: volumeId, name } } });
    assert.equal(r.statusCode, 200, r.body);
    const job = await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
    return { job, backupId: (job.entities as Record<string, string> | undefined)?.backup_id };
  };
  const vbsBackupOk = async (volumeId: string, name: string): Promise<string> => {
    const { job, backupId } = await vbsBackup(volumeId, name);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    assert.ok(backupId);
    return backupId;
  };
  /** Native backup (POST /v3/{pid}/backups), waited until it leaves creating. */
  const nativeBackupOk = async (volumeId: string, name: string): Promise<string> => {
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/backups`, token, payload: { backup: { volume_id: volumeId, name } } });
    assert.equal(r.statusCode, 202, r.body);
    const id = (r.json() as { backup: { id: string } }).backup.id;
    const done = await svc.waitBackup(token, pid, id);
    assert.equal(done!.status, 'available', JSON.stringify(done));
    return id;
  };
  /** VBS restore onto an existing volume (POST /v2/{pid}/cloudbackups/{id}/restore): job SUCCESS, volume available. */
  const vbsRestore = async (backupId: string, volumeId: string): Promise<void> => {
    const r = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${backupId}/restore`, token, payload: { restore: { volume_id: volumeId } } });
    assert.equal(r.statusCode, 200, r.body);
    const job = await svc.waitJob(token, pid, (r.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    assert.equal((await svc.app.catalog.volumes.getVolumeById(volumeId))!.status, 'available');
  };
  /** Native restore onto an existing volume (POST /v3/{pid}/backups/{id}/restore). */
  const nativeRestore = async (backupId: string, volumeId: string): Promise<void> => {
    const r = await svc.req({ method: 'POST', url: `/v3/${pid}/backups/${backupId}/restore`, token, payload: { restore: { volume_id: volumeId } } });
    assert.equal(r.statusCode, 202, r.body);
    assert.equal((await svc.waitBackup(token, pid, backupId))!.status, 'available');
    await svc.app.runner.idle();
    assert.equal((await svc.app.catalog.volumes.getVolumeById(volumeId))!.status, 'available');
  };

  // ---- shared between the tests below (they run in order) ----

  let src: { id: string; path: string };
  let firstBackup: string;
  let atFirstBackup: string; // the guest view of `src` when firstBackup was taken

  it('1: a qcow2 volume backs up and restores onto a larger qcow2 volume and onto a raw volume, as the guest sees it', async () => {
    src = await createQcow2(1, 'q-src');
    assert.equal(src.path, path.join(volumesDir(), `${src.id}.qcow2`));
    const row = (await svc.app.catalog.volumes.getVolumeById(src.id))!;
    assert.equal(row.format, 'qcow2');
    assert.equal(row.sizeBytes, 1 * GiB);
    const i = await info(src.path);
    assert.equal(i.format, 'qcow2');
    assert.equal(i['virtual-size'], 1 * GiB);
    assert.equal(i['backing-filename'], undefined);

    // Distinct data at several offsets: constant patterns (one unaligned to 64 KiB chunks, one
    // across chunk boundaries, the last MiB), random bytes, compressed clusters and a zeroed range.
    const rnd = randomFile('rnd-1.bin', 3 * MiB, 11);
    await qemuIo(src.path, [
      `write -q -P 0xa1 0 ${2 * MiB}`,
      `write -q -P 0xb2 ${100 * MiB + 7 * 512} ${5 * 512}`,
      `write -q -s ${rnd} ${300 * MiB} ${3 * MiB}`,
      `write -q -c -P 0x5e ${400 * MiB} ${4 * KiB64}`,
      `write -q -P 0xc3 ${511 * MiB + 3 * 4096} ${3 * MiB}`,
      `write -q -P 0x77 ${600 * MiB} ${2 * MiB}`,
      `write -q -z ${600 * MiB + KiB64} ${KiB64}`,
      `write -q -P 0xd4 ${1 * GiB - 1 * MiB} ${1 * MiB}`,
    ]);
    await assertReads(src.path, 0x5e, 400 * MiB, 4 * KiB64);
    await assertReads(src.path, 0x00, 600 * MiB + KiB64, KiB64);
    atFirstBackup = await guestCopy(src.path, 'at-first-backup');

    firstBackup = await vbsBackupOk(src.id, 'q-first');
    const b = (await svc.app.catalog.backups.getBackupById(firstBackup))!;
    assert.equal(b.sizeBytes, 1 * GiB, 'the backup is of the virtual disk, not of the image file');
    assert.equal(b.fullBackup, true);
    // The backup only read the image.
    await assertSameDisk(src.path, atFirstBackup, 'qcow2', 'qcow2', 'source after its backup');

    // A larger qcow2 volume holding other data, past 1 GiB too: after the restore it is the
    // source's disk, and zeros past the source's size.
    const big = await createQcow2(2, 'q-big');
    assert.equal((await info(big.path))['virtual-size'], 2 * GiB);
    await qemuIo(big.path, [`write -q -P 0xee 0 ${4 * MiB}`, `write -q -P 0xef ${200 * MiB} ${MiB}`, `write -q -P 0xf0 ${1 * GiB + 5 * MiB} ${3 * MiB}`, `write -q -P 0xf1 ${2 * GiB - MiB} ${MiB}`]);
    await vbsRestore(firstBackup, big.id);
    const bigInfo = await info(big.path);
    assert.equal(bigInfo.format, 'qcow2', 'restored in place, still qcow2');
    assert.equal(bigInfo['virtual-size'], 2 * GiB, 'the volume keeps its size');
    await assertSameDisk(atFirstBackup, big.path, 'qcow2', 'qcow2', 'larger qcow2 volume restored');
    // Explicitly, past the source's end: zeros where the target had data, and nothing but zeros in its map.
    await assertReads(big.path, 0x00, 1 * GiB + 5 * MiB, 3 * MiB);
    await assertReads(big.path, 0x00, 2 * GiB - MiB, MiB);
    await assertReads(big.path, 0x00, 1 * GiB, 64 * MiB);
    await assertZerosFrom(big.path, 1 * GiB);
    await assertReads(big.path, 0x00, 200 * MiB, MiB); // a hole of the source, data of the target's before
    await assertReads(big.path, 0xd4, 1 * GiB - MiB, MiB);

    // A raw volume (volume_type "raw") of the same size: its file is the guest's disk, byte for byte.
    const raw = await createVolume({ size: 1, name: 'r-target', volume_type: 'raw' });
    assert.equal(raw.json.volume_type, 'haven');
    assert.equal(raw.path, path.join(volumesDir(), `${raw.id}.img`));
    // Old data: where the source has data, and where it has a hole.
    const fh = await fs.open(raw.path, 'r+');
    await fh.write(Buffer.alloc(MiB, 0x98), 0, MiB, 0);
    await fh.write(Buffer.alloc(MiB, 0x97), 0, MiB, 700 * MiB);
    await fh.close();
    await vbsRestore(firstBackup, raw.id);
    assert.equal((await fs.stat(raw.path)).size, 1 * GiB);
    await assertSameDisk(atFirstBackup, raw.path, 'qcow2', 'raw', 'raw volume restored');
    await assertReads(raw.path, 0xa1, 0, 2 * MiB, 'raw');
    await assertReads(raw.path, 0x00, 700 * MiB, MiB, 'raw');
  });

  it('2: a restore in place brings the volume back to the backup, including zeros where there was a hole', async () => {
    assert.ok(src && firstBackup, 'needs test 1');
    // After the backup: overwrite data, zero a data range, and fill ranges that were holes.
    const rnd = randomFile('rnd-2.bin', 2 * MiB, 12);
    await qemuIo(src.path, [
      `write -q -P 0x3c ${1 * MiB} ${2 * MiB}`, // over 0xa1 data and the hole after it
      `write -q -s ${rnd} ${301 * MiB} ${2 * MiB}`, // over random data
      `write -q -z ${511 * MiB} ${4 * MiB}`, // data zeroed
      `write -q -P 0x4d ${800 * MiB} ${3 * MiB}`, // a hole at backup time
      `write -q -c -P 0x4e ${900 * MiB} ${2 * KiB64}`, // a hole at backup time, compressed
    ]);
    await assertReads(src.path, 0x4d, 800 * MiB, 3 * MiB);
    await assertDifferentDisk(src.path, atFirstBackup, 'volume changed after the backup');
    const fileIdBefore = (await svc.app.catalog.volumes.getVolumeById(src.id))!.fileId;
    const inode = (await fs.stat(src.path)).ino;

    await nativeRestore(firstBackup, src.id);
    assert.equal((await fs.stat(src.path)).ino, inode, 'restored in place: the same file');
    assert.equal((await svc.app.catalog.volumes.getVolumeById(src.id))!.fileId, fileIdBefore);
    const i = await info(src.path);
    assert.equal(i.format, 'qcow2');
    assert.equal(i['virtual-size'], 1 * GiB);
    await assertSameDisk(src.path, atFirstBackup, 'qcow2', 'qcow2', 'volume restored in place');
    await assertReads(src.path, 0x00, 800 * MiB, 3 * MiB); // was a hole at backup time
    await assertReads(src.path, 0x00, 900 * MiB, 2 * KiB64);
    await assertReads(src.path, 0xa1, 0, 2 * MiB);
    await assertReads(src.path, 0xc3, 511 * MiB + 3 * 4096, 3 * MiB);
    const check = await runTool('qemu-img', ['check', '-f', 'qcow2', src.path]);
    assert.equal(check.code, 0, `qemu-img check after the restore: ${check.stdout}${check.stderr}`);
  });

  it('3: an incremental backup of a qcow2 volume after a few MiB changed stores only those and restores correctly', async () => {
    assert.ok(src && firstBackup, 'needs test 1');
    const rnd = randomFile('rnd-3.bin', 3 * MiB, 13);
    await qemuIo(src.path, [`write -q -s ${rnd} ${150 * MiB} ${3 * MiB}`, `write -q -P 0x6a ${950 * MiB} ${1 * MiB}`]);
    const atSecond = await guestCopy(src.path, 'at-second-backup');
    const second = await vbsBackupOk(src.id, 'q-second');
    const row = (await svc.app.catalog.backups.getBackupById(second))!;
    assert.equal(row.fullBackup, false, 'the second backup is incremental');
    assert.equal(row.parentId, firstBackup);
    assert.ok(row.newBytes > 0 && row.newBytes <= 4 * MiB + 2 * KiB64, `incremental stored ${row.newBytes} new bytes for 4 MiB changed`);
    const shown = await svc.req({ method: 'GET', url: `/v2/${pid}/backups/${second}`, token });
    assert.equal(shown.statusCode, 200, shown.body);
    assert.equal((shown.json() as { backup: { is_incremental: boolean } }).backup.is_incremental, true);

    const target = await createQcow2(1, 'q-incr-target');
    await qemuIo(target.path, [`write -q -P 0x11 ${950 * MiB} ${2 * MiB}`]);
    await vbsRestore(second, target.id);
    await assertSameDisk(atSecond, target.path, 'qcow2', 'qcow2', 'restore of the incremental backup');
    await assertReads(target.path, 0x6a, 950 * MiB, MiB);
    await assertReads(target.path, 0x00, 951 * MiB, MiB);
    // And the first backup still restores its own state.
    await nativeRestore(firstBackup, target.id);
    await assertSameDisk(atFirstBackup, target.path, 'qcow2', 'qcow2', 'restore of the first backup after the incremental');
  });

  it('4: adopts a stand-alone qcow2 image by its virtual size; refuses images with a backing or data file and non-qcow2 files', async () => {
    // 1 GiB + 64 MiB virtual: a 2 GB volume whose exact size is the virtual size.
    const image = path.join(root, 'legacy.qcow2');
    const virtual = 1 * GiB + 64 * MiB;
    await qemuImg(['create', '-q', '-f', 'qcow2', image, String(virtual)]);
    const rnd = randomFile('rnd-4.bin', 2 * MiB, 14);
    await qemuIo(image, [`write -q -P 0x21 0 ${MiB}`, `write -q -s ${rnd} ${512 * MiB} ${2 * MiB}`, `write -q -P 0x22 ${virtual - MiB} ${MiB}`]);
    const imageSha = await sha256File(image);
    const r = await manage(image, { name: 'legacy', volume_type: 'qcow2' });
    assert.equal(r.statusCode, 202, r.body);
    const vol = (r.json() as { volume: VolumeJson }).volume;
    assert.equal(vol.volume_type, 'qcow2');
    assert.equal(vol.size, 2);
    const row = (await svc.app.catalog.volumes.getVolumeById(vol.id))!;
    assert.equal(row.sizeBytes, virtual, 'sized by the virtual size, not the file size');
    assert.notEqual((await fs.stat(image)).size, virtual);
    assert.equal(row.format, 'qcow2');
    assert.equal(row.adopted, true);
    assert.equal(row.path, image);
    assert.equal(await sha256File(image), imageSha, 'adopting does not touch the image');

    // Round trip: back up (native API), restore onto a new qcow2 volume, and in place after changes.
    const atBackup = await guestCopy(image, 'legacy-at-backup');
    const backupId = await nativeBackupOk(vol.id, 'legacy-1');
    assert.equal((await svc.app.catalog.backups.getBackupById(backupId))!.sizeBytes, virtual);
    assert.equal(await sha256File(image), imageSha, 'a backup only reads the image');
    const target = await createQcow2(2, 'legacy-copy');
    await vbsRestore(backupId, target.id);
    await assertSameDisk(atBackup, target.path, 'qcow2', 'qcow2', 'adopted image restored into a new volume');
    await assertReads(target.path, 0x22, virtual - MiB, MiB);
    await assertReads(target.path, 0x00, virtual, 16 * MiB);
    await assertZerosFrom(target.path, virtual);
    await qemuIo(image, [`write -q -P 0x23 0 ${3 * MiB}`, `write -q -P 0x24 ${800 * MiB} ${MiB}`]);
    await nativeRestore(backupId, vol.id);
    await assertSameDisk(image, atBackup, 'qcow2', 'qcow2', 'adopted image restored in place');
    assert.equal((await info(image))['virtual-size'], virtual);

    // Refusals: 400 in Cinder's envelope, nothing adopted, no job, the files untouched.
    const base = path.join(root, 'base.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', base, String(64 * MiB)]);
    await qemuIo(base, [`write -q -P 0x55 0 ${MiB}`]);
    const top = path.join(root, 'top.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    const dataRaw = path.join(root, 'external.raw');
    const withDataFile = path.join(root, 'with-data-file.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${dataRaw}`, withDataFile, String(64 * MiB)]);
    await qemuIo(withDataFile, [`write -q -P 0x56 0 ${MiB}`]);
    const plain = path.join(root, 'plain.img');
    writeFileSync(plain, randomBytesSeeded(4 * MiB, 15));
    const before = await countVolumes();
    const ids = await listedIds();
    const jobs = await jobCount(svc);
    const shas = new Map<string, string>();
    for (const f of [base, top, dataRaw, withDataFile, plain]) shas.set(f, await sha256File(f));
    for (const [file, why] of [[top, /backing/i], [withDataFile, /data/i], [plain, /qcow2/i]] as const) {
      for (const v of ['v3', 'v2']) {
        const res = await svc.req({ method: 'POST', url: `/${v}/${pid}/os-volume-manage`, token, payload: { volume: { ref: { 'source-name': file }, name: 'refused', volume_type: 'qcow2' } } });
        const msg = assertCinderError(res, 400);
        assert.match(msg, why, `${file}: ${msg}`);
      }
    }
    assert.equal(await countVolumes(), before);
    assert.deepEqual(await listedIds(), ids);
    const detail = (await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/detail`, token })).json() as { volumes: VolumeJson[] };
    assert.ok(!detail.volumes.some((v) => v.name === 'refused'));
    assert.equal(await jobCount(svc), jobs);
    for (const [f, sha] of shas) assert.equal(await sha256File(f), sha, `${f} was touched`);
    // The raw file still adopts as raw (default), sized by the file.
    const okRaw = await manage(plain, { name: 'plain-raw' });
    assert.equal(okRaw.statusCode, 202, okRaw.body);
    assert.equal((okRaw.json() as { volume: VolumeJson }).volume.volume_type, 'haven');
    assert.equal((await svc.app.catalog.volumes.getVolumeById((okRaw.json() as { volume: VolumeJson }).volume.id))!.sizeBytes, 4 * MiB);
  });

  it('5: a header rewritten on the host to name a backing file never puts that file\'s bytes in a backup', async () => {
    const secret = path.join(work, 'host-secret.bin');
    const secretBytes = Buffer.alloc(8 * MiB, 'HOST-SECRET-do-not-back-up|');
    writeFileSync(secret, secretBytes);
    const hostname = await fs.readFile('/etc/hostname').catch(() => null);
    const cases: { backing: string; bytes: Buffer }[] = [{ backing: secret, bytes: secretBytes }];
    if (hostname && hostname.some((b) => b !== 0)) cases.push({ backing: '/etc/hostname', bytes: hostname });
    for (const [n, c] of cases.entries()) {
      const image = path.join(root, `innocent-${n}.qcow2`);
      await qemuImg(['create', '-q', '-f', 'qcow2', image, String(64 * MiB)]);
      await qemuIo(image, [`write -q -P 0x42 ${16 * MiB} ${MiB}`]); // the guest's data; the start is a hole
      const r = await manage(image, { name: `innocent-${n}`, volume_type: 'qcow2' });
      assert.equal(r.statusCode, 202, r.body);
      const volId = (r.json() as { volume: VolumeJson }).volume.id;
      const inode = (await fs.stat(image)).ino;
      // The host rewrites the header (in place: the same file Haven adopted).
      await qemuImg(['rebase', '-u', '-b', c.backing, '-F', 'raw', image]);
      assert.equal((await info(image))['backing-filename'], c.backing);
      assert.equal((await fs.stat(image)).ino, inode);

      const { job, backupId } = await vbsBackup(volId, `innocent-${n}`);
      if (job.status !== 'SUCCESS') {
        assert.equal(job.status, 'FAIL', JSON.stringify(job)); // refusing is acceptable; leaking is not
        continue;
      }
      // Restore onto a raw volume: its file is exactly what the backup holds.
      const target = await createVolume({ size: 1, name: `innocent-${n}-restored`, volume_type: 'raw' });
      await vbsRestore(backupId!, target.id);
      const fh = await fs.open(target.path, 'r');
      try {
        const head = Buffer.alloc(Math.min(c.bytes.length, 8 * MiB));
        await fh.read(head, 0, head.length, 0);
        assert.ok(head.equals(Buffer.alloc(head.length)), `the backup holds ${c.backing}'s bytes: ${JSON.stringify(head.subarray(0, 32).toString('latin1'))}`);
        const data = Buffer.alloc(MiB);
        await fh.read(data, 0, MiB, 16 * MiB);
        assert.ok(data.equals(Buffer.alloc(MiB, 0x42)), 'the guest\'s own data is in the backup');
      } finally {
        await fh.close();
      }
      await assertReads(target.path, 0x00, 0, 16 * MiB, 'raw');
      await assertReads(target.path, 0x00, 17 * MiB, 47 * MiB, 'raw');
      assert.equal((await svc.app.catalog.backups.getBackupById(backupId!))!.sizeBytes, 64 * MiB);
    }
  });

  // BUG (src/qemu/qemu-tools.ts QemuNbdServer.start, the json: image spec used by openGuarded in
  // src/engine/open-volume.ts and openImageInPlace in src/engine/restore-reader.ts): "backing": null
  // keeps a backing file out, but an external data file named in the header is still opened by
  // name (QEMU has no "data-file": null), and nothing checks the header again after adoption. With
  // data_file_raw the whole guest disk IS that host file: backups read it, restores write into it.
  it('5b: a header rewritten on the host to name an external data file neither leaks nor overwrites that file', async () => {
    const secret = path.join(work, 'host-data-secret.raw');
    const secretBytes = Buffer.alloc(64 * MiB, 'HOST-DATA-FILE-SECRET|');
    writeFileSync(secret, secretBytes);
    const secretSha = await sha256File(secret);
    const image = path.join(root, 'innocent-df.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', image, String(64 * MiB)]);
    await qemuIo(image, [`write -q -P 0x43 0 ${MiB}`]);
    const r = await manage(image, { name: 'innocent-df', volume_type: 'qcow2' });
    assert.equal(r.statusCode, 202, r.body);
    const volId = (r.json() as { volume: VolumeJson }).volume.id;
    const clean = await vbsBackupOk(volId, 'innocent-df-clean');
    // The host rewrites the image in place (same inode) with a header naming `secret` as its raw
    // data file (made with a dummy data file, renamed by amend: `secret` itself is never touched).
    const crafted = path.join(work, 'crafted.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(work, 'dummy.raw')},data_file_raw=on`, crafted, String(64 * MiB)]);
    await qemuImg(['amend', '-f', 'qcow2', '-o', `data_file=${secret}`, crafted]);
    const inode = (await fs.stat(image)).ino;
    await fs.writeFile(image, await fs.readFile(crafted));
    assert.equal((await fs.stat(image)).ino, inode);
    assert.equal(await sha256File(secret), secretSha);

    const { job, backupId } = await vbsBackup(volId, 'innocent-df-after');
    if (job.status === 'SUCCESS') {
      const target = await createVolume({ size: 1, name: 'innocent-df-restored', volume_type: 'raw' });
      await vbsRestore(backupId!, target.id);
      const fh = await fs.open(target.path, 'r');
      const head = Buffer.alloc(MiB);
      await fh.read(head, 0, MiB, 0);
      await fh.close();
      assert.ok(!head.equals(secretBytes.subarray(0, MiB)), `the backup holds the host file's bytes: ${JSON.stringify(head.subarray(0, 32).toString('latin1'))}`);
    } else {
      assert.equal(job.status, 'FAIL', JSON.stringify(job));
    }
    // An in-place restore must not write into the host file (failing is acceptable).
    const rr = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups/${clean}/restore`, token, payload: { restore: { volume_id: volId } } });
    assert.equal(rr.statusCode, 200, rr.body);
    await svc.waitJob(token, pid, (rr.json() as { job_id: string }).job_id);
    assert.equal(await sha256File(secret), secretSha, 'an in-place restore wrote into the host file named as the data file');
  });

  it('6: a snapshot of a qcow2 volume is a qcow2 copy; a volume from it is qcow2 with the same disk; another volume_type is refused', async () => {
    const vol = await createQcow2(1, 'q-snapped');
    const rnd = randomFile('rnd-6.bin', MiB, 16);
    await qemuIo(vol.path, [`write -q -P 0x61 0 ${MiB}`, `write -q -s ${rnd} ${250 * MiB} ${MiB}`, `write -q -P 0x62 ${1 * GiB - MiB} ${MiB}`]);
    const atSnap = await guestCopy(vol.path, 'at-snapshot');
    const s = await svc.req({ method: 'POST', url: `/v3/${pid}/snapshots`, token, payload: { snapshot: { volume_id: vol.id, name: 'q-snap' } } });
    assert.equal(s.statusCode, 202, s.body);
    const snap = (s.json() as { snapshot: { id: string; status: string; size: number } }).snapshot;
    assert.equal(snap.status, 'available');
    assert.equal(snap.size, 1);
    const snapRow = (await svc.app.catalog.volumes.getSnapshot(pid, snap.id))!;
    assert.equal(snapRow.format, 'qcow2');
    assert.match(snapRow.path, /\.qcow2$/);
    assert.equal((await info(snapRow.path)).format, 'qcow2');
    await assertSameDisk(snapRow.path, atSnap, 'qcow2', 'qcow2', 'snapshot');
    // The volume moves on.
    await qemuIo(vol.path, [`write -q -P 0x63 0 ${2 * MiB}`, `write -q -P 0x64 ${600 * MiB} ${MiB}`]);

    // A volume from the snapshot: qcow2 without asking, and with volume_type qcow2; larger too.
    for (const [body, sizeGb] of [[{}, 1], [{ volume_type: 'qcow2' }, 2]] as const) {
      const v = await createVolume({ size: sizeGb, name: 'from-q-snap', snapshot_id: snap.id, ...body });
      assert.equal(v.json.volume_type, 'qcow2');
      assert.equal(v.path, path.join(volumesDir(), `${v.id}.qcow2`));
      assert.equal((await svc.app.catalog.volumes.getVolumeById(v.id))!.format, 'qcow2');
      const vi = await info(v.path);
      assert.equal(vi.format, 'qcow2');
      assert.equal(vi['virtual-size'], sizeGb * GiB);
      await assertSameDisk(atSnap, v.path, 'qcow2', 'qcow2', `volume (${sizeGb} GB) from the snapshot`);
      await assertReads(v.path, 0x61, 0, MiB);
      const shown = (await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${v.id}`, token })).json() as { volume: VolumeJson };
      assert.equal(shown.volume.volume_type, 'qcow2');
      // It is a working volume: it backs up and its backup holds the snapshot's disk.
      if (sizeGb === 2) {
        const b = await vbsBackupOk(v.id, 'from-snap-backup');
        const t = await createQcow2(2, 'from-snap-restored');
        await vbsRestore(b, t.id);
        await assertSameDisk(atSnap, t.path, 'qcow2', 'qcow2', 'restore of a backup of a volume from the snapshot');
      }
    }

    // volume_type raw for a qcow2 snapshot: 400, nothing created.
    const before = await countVolumes();
    const files = volumeFiles();
    const ids = await listedIds();
    for (const v of ['v3', 'v2']) {
      const r = await svc.req({ method: 'POST', url: `/${v}/${pid}/volumes`, token, payload: { volume: { size: 1, name: 'refused-raw', snapshot_id: snap.id, volume_type: 'raw' } } });
      assertCinderError(r, 400);
    }
    assert.equal(await countVolumes(), before);
    assert.deepEqual(volumeFiles(), files);
    assert.deepEqual(await listedIds(), ids);

    // And the other way round: a raw volume's snapshot cannot make a qcow2 volume.
    const rawVol = await createVolume({ size: 1, name: 'r-snapped' });
    const rs = await svc.req({ method: 'POST', url: `/v3/${pid}/snapshots`, token, payload: { snapshot: { volume_id: rawVol.id, name: 'r-snap' } } });
    assert.equal(rs.statusCode, 202, rs.body);
    const rawSnap = (rs.json() as { snapshot: { id: string } }).snapshot.id;
    assert.equal((await svc.app.catalog.volumes.getSnapshot(pid, rawSnap))!.format, 'raw');
    const before2 = await countVolumes();
    const files2 = volumeFiles();
    assertCinderError(await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, snapshot_id: rawSnap, volume_type: 'qcow2' } } }), 400);
    assert.equal(await countVolumes(), before2);
    assert.deepEqual(volumeFiles(), files2);
    const fromRaw = await createVolume({ size: 1, snapshot_id: rawSnap });
    assert.equal(fromRaw.json.volume_type, 'haven');
    assert.match(fromRaw.path, /\.img$/);
  });

  it('7: volume_type "qcow2" shows in GET volume and the detail list on /v2 and /v3; raw volumes keep "haven"', async () => {
    const q = await createQcow2(1, 'types-q');
    assert.equal(q.json.volume_type, 'qcow2');
    assert.equal((await fs.stat(q.path)).mode & 0o777, 0o600, 'a qcow2 volume is private to Haven, like a raw one');
    assert.equal((await info(q.path)).format, 'qcow2');
    const r = await createVolume({ size: 1, name: 'types-r' });
    const rr = await createVolume({ size: 1, name: 'types-rr', volume_type: 'raw' });
    const other = await createVolume({ size: 1, name: 'types-other', volume_type: 'ssd-gold' });
    const nul = await createVolume({ size: 1, name: 'types-null', volume_type: null });
    const want = new Map([[q.id, 'qcow2'], [r.id, 'haven'], [rr.id, 'haven'], [other.id, 'haven'], [nul.id, 'haven']]);
    for (const v of [r, rr, other, nul]) {
      assert.equal(v.json.volume_type, 'haven');
      assert.equal(v.path, path.join(volumesDir(), `${v.id}.img`));
      const st = await fs.stat(v.path);
      assert.equal(st.size, 1 * GiB, 'a raw volume is a raw file of its size');
      assert.equal(st.mode & 0o777, 0o600);
      assert.equal((await info(v.path)).format, 'raw');
    }
    for (const ver of ['v2', 'v3']) {
      for (const [id, type] of want) {
        const one = await svc.req({ method: 'GET', url: `/${ver}/${pid}/volumes/${id}`, token });
        assert.equal(one.statusCode, 200, one.body);
        assert.equal((one.json() as { volume: VolumeJson }).volume.volume_type, type, `${ver} GET ${id}`);
      }
      const detail = await svc.req({ method: 'GET', url: `/${ver}/${pid}/volumes/detail`, token });
      assert.equal(detail.statusCode, 200, detail.body);
      const listed = (detail.json() as { volumes: VolumeJson[] }).volumes;
      for (const [id, type] of want) assert.equal(listed.find((x) => x.id === id)?.volume_type, type, `${ver} detail ${id}`);
      // Every qcow2 volume of this project (created, adopted, from a snapshot) says so in the list.
      for (const x of listed) {
        const row = (await svc.app.catalog.volumes.getVolumeById(x.id))!;
        assert.equal(x.volume_type, row.format === 'qcow2' ? 'qcow2' : 'haven', `${ver} detail ${x.id} (${row.path})`);
      }
    }
    // Deleting a created qcow2 volume removes its image.
    const del = await svc.req({ method: 'DELETE', url: `/v3/${pid}/volumes/${q.id}`, token });
    assert.equal(del.statusCode, 202, del.body);
    assert.ok(!existsSync(q.path), 'the qcow2 image is gone');
    assertCinderError(await svc.req({ method: 'GET', url: `/v3/${pid}/volumes/${q.id}`, token }), 404);
  });
});
