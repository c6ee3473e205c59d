/**
 * The volume inventory (a Cinder-compatible subset, so Haven runs without an OpenStack cloud):
 * volumes Haven creates as sparse raw files, volumes adopted from existing images or block devices
 * under the operator's HAVEN_VOLUME_ROOTS, and snapshots (point-in-time copies, reflinked when the
 * file system can).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Catalog } from '../catalog/catalog.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { newUuid } from '../domain/ids.ts';
import type { Snapshot, Volume, VolumeFormat } from '../domain/model.ts';
import { createQcow2, growQcow2, imageInfo } from '../qemu/qemu-tools.ts';
import { guestNodeInfo } from '../qemu/qemu-guest.ts';
import { checkFileSystemAllows, checkVolumeSize, type VolumeLimits } from './volume-limits.ts';
import { blockDeviceSize } from '../engine/volume-source.ts';
import { fileIdOf, isUnder } from '../engine/volume-file.ts';
import type { VolumeFiles } from './volume-files.ts';

export const GiB = 1024 ** 3;
/** Largest volume Haven creates (Cinder's EVS limit is 32 TB; files are sparse anyway). */
export const MAX_VOLUME_GB = 32 * 1024;

export interface VolumeServiceOptions {
  availabilityZone: string;
}

export class VolumeService {
  /** Size limit and quotas of new and adopted volumes (the composition root sets them). */
  limits: VolumeLimits = { quotas: null, maxVolumeGb: MAX_VOLUME_GB };
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly opts: VolumeServiceOptions;
  private readonly files: VolumeFiles;

  constructor(catalog: Catalog, clock: Clock, files: VolumeFiles, opts: VolumeServiceOptions) {
    this.catalog = catalog;
    this.clock = clock;
    this.files = files;
    this.opts = opts;
  }

  get volumesDir(): string {
    return this.files.volumesDir;
  }

  get snapshotsDir(): string {
    return this.files.snapshotsDir;
  }

  /**
   * A new volume: a sparse raw file, or (format qcow2, Cinder's volume_type "qcow2") a qcow2 image
   * made by qemu-img. A volume from a snapshot is a copy of the snapshot's file and keeps its format.
   */
  async createVolume(projectId: string, input: { sizeGb: number; name?: string | null | undefined; description?: string | null | undefined; metadata?: Record<string, string> | undefined; bootable?: boolean | undefined; snapshotId?: string | null | undefined; format?: VolumeFormat | undefined }): Promise<Volume> {
    const now = this.clock.now();
    const id = newUuid();
    let sizeGb = input.sizeGb;
    // A volume from a snapshot: a copy of the snapshot's bytes (reflink when possible).
    const snap = input.snapshotId ? await this.getSnapshot(projectId, input.snapshotId) : null;
    if (snap && snap.status !== 'available') throw new AppError(ErrorCode.SnapshotInvalidState, `snapshot ${snap.id} is ${snap.status}, not available`);
    if (snap && sizeGb < snap.sizeGb) throw new AppError(ErrorCode.InvalidArgument, `size ${sizeGb} GB is smaller than the snapshot's ${snap.sizeGb} GB`);
    if (snap && input.format !== undefined && input.format !== snap.format) throw new AppError(ErrorCode.InvalidArgument, `a volume from snapshot ${snap.id} is ${snap.format}, like the snapshot; volume_type ${input.format} cannot be given`);
    const format: VolumeFormat = snap?.format ?? input.format ?? 'raw';
    await this.checkNewVolume(projectId, sizeGb);
    const file = path.join(this.volumesDir, `${id}.${format === 'qcow2' ? 'qcow2' : 'img'}`);
    await fs.mkdir(this.volumesDir, { recursive: true });
    let fileId: string;
    try {
      if (snap) await this.files.copyOut(snap.path, this.files.snapshotGuard(), file);
      if (format === 'qcow2') {
        if (snap) await growQcow2(file, sizeGb * GiB);
        else {
          // qemu-img create replaces a file: the name is Haven's own and new, and is claimed first.
          await (await fs.open(file, 'wx', 0o600)).close();
          await createQcow2(file, sizeGb * GiB);
        }
        fileId = fileIdOf(await fs.stat(file, { bigint: true }));
      } else {
        const fh = await fs.open(file, snap ? 'r+' : 'wx', 0o600);
        try {
          await fh.truncate(sizeGb * GiB);
          fileId = fileIdOf(await fh.stat({ bigint: true }));
        } finally {
          await fh.close();
        }
      }
    } catch (err) {
      // No file without its row (a failed truncate once left a 0-byte image behind).
      await fs.rm(file, { force: true });
      throw err;
    }
    sizeGb = Math.max(sizeGb, 1);
    const v: Volume = {
      id, projectId, name: input.name ?? null, description: input.description ?? null, sizeGb, sizeBytes: sizeGb * GiB, path: file, adopted: false, fileId, format, qmp: null,
      status: 'available', bootable: input.bootable ?? false, availabilityZone: this.opts.availabilityZone, metadata: input.metadata ?? {}, createdAt: now, updatedAt: now,
    };
    try {
      await this.catalog.transaction(async (c) => {
        await this.limits.quotas?.checkVolumeQuota(c, projectId, { volumes: 1, gigabytes: sizeGb });
        await c.volumes.insertVolume(v);
      });
    } catch (err) {
      await fs.rm(file, { force: true }); // best effort: the row is what makes the file a volume
      throw err;
    }
    return v;
  }

  /**
   * Adopts an existing image file or block device (os-volume-manage). Only paths inside one of the
   * operator's volume roots are accepted; symlinks, `..` escapes, files with more than one hard
   * link and anything in Haven's own data are refused (checked on the opened file, VolumeFiles), a
   * path already known as a volume cannot be adopted twice, and the file's device and inode are
   * recorded: every later job must find that same file there. A qcow2 image (format qcow2) is
   * sized by its virtual size and must stand alone: a backing file or an external data file named
   * in an image could be any file of the host, so such images are refused (flatten them first with
   * `qemu-img convert`); jobs open it without one.
   */
  async manageVolume(projectId: string, input: { sourceName: string; name?: string | null | undefined; description?: string | null | undefined; bootable?: boolean | undefined; metadata?: Record<string, string> | undefined; format?: VolumeFormat | undefined; qmp?: { socket: string; node: string } | undefined }): Promise<Volume> {
    const requested = input.sourceName;
    if (!path.isAbsolute(requested)) throw new AppError(ErrorCode.VolumePathRefused, `ref.source-name must be an absolute path, got ${requested}`);
    if (requested.split('/').includes('..')) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} contains ".."`);
    const normal = path.normalize(requested);
    const roots = this.files.volumeRoots;
    const root = roots.find((r) => normal !== r && isUnder(normal, r));
    if (!root) throw new AppError(ErrorCode.VolumePathRefused, roots.length ? `path ${requested} is not under a volume root (HAVEN_VOLUME_ROOTS: ${roots.join(':')})` : 'no volume roots are configured (HAVEN_VOLUME_ROOTS), so no path can be adopted');
    // The disk of a running guest: its format and size are what its QEMU says of the node.
    const guest = input.qmp ? await this.guestNode(input.qmp, normal) : null;
    if (guest && input.format !== undefined && input.format !== guest.format) throw new AppError(ErrorCode.VolumePathRefused, `node ${input.qmp!.node} is a ${guest.format} image, not ${input.format}`);
    const format: VolumeFormat = guest?.format ?? input.format ?? 'raw';
    const opened = await this.files.openForAdoption(normal);
    let sizeBytes: number;
    try {
      const st = opened.stat;
      if (format === 'qcow2') {
        if (!st.isFile()) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is not a file, so not a qcow2 image`);
        const info = await imageInfo(normal, { fd: opened.fh.fd }).catch((err: unknown) => {
          throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} cannot be read as an image: ${(err as Error).message}`, { cause: err });
        });
        if (info.format !== 'qcow2') throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is a ${info.format} image, not qcow2 (adopt it with volume_type raw)`);
        if (info.backingFilename !== null) throw new AppError(ErrorCode.VolumePathRefused, `qcow2 image ${requested} has a backing file (${info.backingFilename}); Haven adopts stand-alone images only (qemu-img convert -O qcow2 makes one)`);
        if (info.dataFile !== null) throw new AppError(ErrorCode.VolumePathRefused, `qcow2 image ${requested} keeps its data in another file (${info.dataFile}); Haven adopts stand-alone images only`);
        sizeBytes = info.virtualSize;
      } else {
        sizeBytes = st.isFile() ? Number(st.size) : await blockDeviceSize(Number(st.rdev));
      }
    } finally {
      await opened.fh.close();
    }
    const now = this.clock.now();
    const v: Volume = {
      id: newUuid(), projectId, name: input.name ?? null, description: input.description ?? null, sizeGb: Math.max(1, Math.ceil(sizeBytes / GiB)), sizeBytes, path: normal,
      adopted: true, fileId: opened.fileId, format, qmp: input.qmp ?? null, status: 'available', bootable: input.bootable ?? false, availabilityZone: this.opts.availabilityZone, metadata: input.metadata ?? {}, createdAt: now, updatedAt: now,
    };
    await this.catalog.transaction(async (c) => {
      if (await c.volumes.findVolumeByPath(normal)) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is already managed as a volume`);
      await this.limits.quotas?.checkVolumeQuota(c, projectId, { volumes: 1, gigabytes: v.sizeGb });
      await c.volumes.insertVolume(v);
    });
    return v;
  }

  /**
   * The block node of a running guest that an adoption names: QEMU must have it, on the very image
   * adopted (its file, by real path), as raw or qcow2.
   */
  private async guestNode(qmp: { socket: string; node: string }, sourceName: string): Promise<{ format: VolumeFormat; sizeBytes: number }> {
    if (!path.isAbsolute(qmp.socket) || qmp.socket.split('/').includes('..')) throw new AppError(ErrorCode.VolumePathRefused, `ref.qmp_socket must be an absolute path without "..", got ${qmp.socket}`);
    const st = await fs.stat(qmp.socket).catch(() => null);
    if (!st?.isSocket()) throw new AppError(ErrorCode.VolumePathRefused, `ref.qmp_socket ${qmp.socket} is not a socket`);
    // QEMU's answer (or its silence) is a reason to refuse the adoption, said in QEMU's words.
    const n = await guestNodeInfo(qmp.socket, qmp.node).catch((err: unknown) => {
      throw new AppError(ErrorCode.VolumePathRefused, (err as Error).message, { cause: err });
    });
    if (n.drv !== 'qcow2' && n.drv !== 'raw') throw new AppError(ErrorCode.VolumePathRefused, `node ${qmp.node} is a ${n.drv} node; adopt the guest's qcow2 or raw format node`);
    const real = await fs.realpath(n.file).catch(() => n.file);
    const adopted = await fs.realpath(sourceName).catch(() => sourceName);
    if (real !== adopted) throw new AppError(ErrorCode.VolumePathRefused, `node ${qmp.node} is the image ${n.file}, not ${sourceName}`);
    return { format: n.drv, sizeBytes: n.sizeBytes };
  }

  /**
   * Before a volume's file is made: the size is within HAVEN_MAX_VOLUME_GB and what the file
   * system holds (400 otherwise), and the project's quotas have room (checked again, under the
   * project's lock, when the row is inserted). A refused request leaves no file.
   */
  private async checkNewVolume(projectId: string, sizeGb: number): Promise<void> {
    checkVolumeSize(sizeGb, this.limits.maxVolumeGb);
    await fs.mkdir(this.volumesDir, { recursive: true });
    await checkFileSystemAllows(this.volumesDir, sizeGb);
    if (this.limits.quotas) await this.catalog.transaction((c) => this.limits.quotas!.checkVolumeQuota(c, projectId, { volumes: 1, gigabytes: Math.max(sizeGb, 1) }));
  }

  async getVolume(projectId: string, id: string): Promise<Volume> {
    const v = await this.catalog.volumes.getVolume(projectId, id);
    if (!v) throw new AppError(ErrorCode.VolumeNotFound, `Volume ${id} could not be found.`);
    return v;
  }

  listVolumes(projectId: string, opts: { name?: string | undefined; status?: string | undefined; limit: number; offset: number }): Promise<Volume[]> {
    return this.catalog.volumes.listVolumes(projectId, opts);
  }

  /**
   * Deletes a volume: refused while a backup or restore works on it or snapshots depend on it.
   * The file of a volume Haven created is removed; an adopted image or device is left untouched
   * (Haven only forgets it).
   */
  async deleteVolume(projectId: string, id: string): Promise<void> {
    const v = await this.getVolume(projectId, id);
    await this.catalog.transaction(async (c) => {
      if (await c.backups.countInStatus(id, ['creating'])) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${id} is being backed up; delete it when the backup has finished.`);
      if (await c.volumes.countSnapshotsOfVolume(id)) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${id} still has snapshots; delete them first.`);
      if (!(await c.volumes.transitionVolume(id, ['available', 'error', 'error_restoring'], 'deleting', this.clock.now()))) {
        throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${id} is ${v.status}; only available or error volumes can be deleted.`);
      }
    });
    if (!v.adopted) {
      try {
        await this.files.removeCreated(v);
      } catch (err) {
        await this.catalog.volumes.transitionVolume(id, ['deleting'], 'error', this.clock.now());
        throw err;
      }
    }
    await this.catalog.transaction(async (c) => {
      await c.policies.unbindVolumeEverywhere(id);
      await c.volumes.deleteVolume(id);
    });
  }

  async createSnapshot(projectId: string, input: { volumeId: string; name?: string | null | undefined; description?: string | null | undefined; force?: boolean | undefined }): Promise<Snapshot> {
    const v = await this.getVolume(projectId, input.volumeId);
    if (v.qmp) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${v.id} is the disk of a running guest (QMP ${v.qmp.socket}, node ${v.qmp.node}): its file is in use; back it up instead (the backup takes its point in time through QMP).`);
    if (v.status !== 'available' && !(v.status === 'in-use' && input.force)) {
      throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${v.id} is ${v.status}; snapshots need an available volume (or force for in-use).`);
    }
    const now = this.clock.now();
    const s: Snapshot = { id: newUuid(), projectId, volumeId: v.id, name: input.name ?? null, description: input.description ?? null, sizeGb: v.sizeGb, path: path.join(this.snapshotsDir, `${newUuid()}.${v.format === 'qcow2' ? 'qcow2' : 'img'}`), format: v.format, status: 'creating', createdAt: now, updatedAt: now };
    await this.catalog.volumes.insertSnapshot(s);
    try {
      await fs.mkdir(this.snapshotsDir, { recursive: true });
      await this.files.copyOut(v.path, this.files.guardOf(v), s.path);
      await this.catalog.volumes.transitionSnapshot(s.id, ['creating'], 'available', this.clock.now());
      s.status = 'available';
    } catch (err) {
      await fs.rm(s.path, { force: true }); // best effort; the snapshot row says error
      if (isAppError(err, ErrorCode.VolumePathRefused)) {
        // The volume's file is not the one Haven knows: refused, and nothing is left behind.
        await this.catalog.volumes.deleteSnapshot(s.id);
        throw err;
      }
      await this.catalog.volumes.transitionSnapshot(s.id, ['creating'], 'error', this.clock.now());
      throw new AppError(ErrorCode.VolumeUnreadable, `cannot snapshot volume ${v.id}: ${(err as Error).message}`, { cause: err });
    }
    return s;
  }

  async getSnapshot(projectId: string, id: string): Promise<Snapshot> {
    const s = await this.catalog.volumes.getSnapshot(projectId, id);
    if (!s) throw new AppError(ErrorCode.SnapshotNotFound, `Snapshot ${id} could not be found.`);
    return s;
  }

  listSnapshots(projectId: string, opts: { volumeId?: string | undefined; limit: number; offset: number }): Promise<Snapshot[]> {
    return this.catalog.volumes.listSnapshots(projectId, opts);
  }

  async deleteSnapshot(projectId: string, id: string): Promise<void> {
    const s = await this.getSnapshot(projectId, id);
    if (await this.catalog.backups.isSnapshotBeingBackedUp(id)) throw new AppError(ErrorCode.SnapshotInvalidState, `Snapshot ${id} is being backed up.`);
    if (!(await this.catalog.volumes.transitionSnapshot(id, ['available', 'error'], 'deleting', this.clock.now()))) {
      throw new AppError(ErrorCode.SnapshotInvalidState, `Snapshot ${id} is ${s.status}.`);
    }
    await fs.rm(s.path, { force: true });
    await this.catalog.volumes.deleteSnapshot(id);
  }
}
