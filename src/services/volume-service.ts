/**
 * The volume inventory (a Cinder-compatible subset, so Haven runs without an OpenStack cloud):
 * volumes Haven creates as sparse raw files, volumes adopted from existing images or block devices
 * under the operator's HAVEN_VOLUME_ROOTS, and snapshots (point-in-time copies, reflinked when the
 * file system can).
 */
import type { Catalog } from '../catalog/catalog.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { newUuid } from '../domain/ids.ts';
import type { Snapshot, Volume, VolumeFormat } from '../domain/model.ts';
import { checkVolumeSize, type VolumeLimits } from './volume-limits.ts';
import { fileRef } from './volume-host.ts';
import type { VolumeHosts } from './volume-hosts.ts';

export const GiB = 1024 ** 3;
/** Largest volume Haven creates (Cinder's EVS limit is 32 TB; files are sparse anyway). */
export const MAX_VOLUME_GB = 32 * 1024;

export interface VolumeServiceOptions {
  availabilityZone: string;
}

export class VolumeService {
  /** Size limit and quotas of new and adopted volumes (the composition root sets them). */
  limits: VolumeLimits = { quotas: null, maxVolumeGb: MAX_VOLUME_GB };
  /** Whether a live restore's export serves a volume (set by the composition root). */
  servedLive: ((volumeId: string) => boolean) | null = null;
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly opts: VolumeServiceOptions;
  private readonly hosts: VolumeHosts;

  constructor(catalog: Catalog, clock: Clock, hosts: VolumeHosts, opts: VolumeServiceOptions) {
    this.catalog = catalog;
    this.clock = clock;
    this.hosts = hosts;
    this.opts = opts;
  }

  /**
   * A new volume: a sparse raw file, or (format qcow2, Cinder's volume_type "qcow2") a qcow2 image
   * made by qemu-img, on the host the volume is placed on (VolumeHosts.place). A volume from a
   * snapshot is a copy of the snapshot's file, on its volume's host, and keeps its format.
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
    checkVolumeSize(sizeGb, this.limits.maxVolumeGb);
    if (this.limits.quotas) await this.catalog.transaction((c) => this.limits.quotas!.checkVolumeQuota(c, projectId, { volumes: 1, gigabytes: Math.max(sizeGb, 1) }));
    // The snapshot's file is where its volume is; a new volume goes where there is room.
    const host = snap ? ((await this.catalog.volumes.getVolumeById(snap.volumeId))?.host ?? null) : await this.hosts.place();
    const onHost = this.hosts.of(host);
    const made = await onHost.createVolumeFile({ volumeId: id, format, sizeGb, fromSnapshot: snap ? { path: snap.path, format: snap.format } : null });
    sizeGb = Math.max(sizeGb, 1);
    const v: Volume = {
      id, projectId, name: input.name ?? null, description: input.description ?? null, sizeGb, sizeBytes: sizeGb * GiB, path: made.path, adopted: false, fileId: made.fileId, format, qmp: null, host,
      status: 'available', bootable: input.bootable ?? false, availabilityZone: this.opts.availabilityZone, metadata: input.metadata ?? {}, createdAt: now, updatedAt: now,
    };
    try {
      await this.catalog.transaction(async (c) => {
        await this.limits.quotas?.checkVolumeQuota(c, projectId, { volumes: 1, gigabytes: sizeGb });
        await c.volumes.insertVolume(v);
      });
    } catch (err) {
      // Best effort: the row is what makes the file a volume.
      await onHost.removeVolumeFile({ id, path: made.path, fileId: made.fileId }).catch(() => undefined);
      throw err;
    }
    return v;
  }

  /**
   * Adopts an existing image file or block device (os-volume-manage) of a host (Cinder's `host`,
   * "NAME" or "NAME@backend#pool"; default: this control plane's own). The host checks the path
   * (LocalVolumeHost.inspectAdoption: under its volume roots, no links, nothing of Haven's own, a
   * stand-alone qcow2 image, a running guest's node on that very image); a path already known as a
   * volume of that host cannot be adopted twice, and the file's device and inode are recorded:
   * every later job must find that same file there.
   */
  async manageVolume(projectId: string, input: { sourceName: string; host?: string | null | undefined; name?: string | null | undefined; description?: string | null | undefined; bootable?: boolean | undefined; metadata?: Record<string, string> | undefined; format?: VolumeFormat | undefined; qmp?: { socket: string; node: string } | undefined }): Promise<Volume> {
    const requested = input.sourceName;
    const host = await this.hosts.placeAdoption(input.host);
    const found = await this.hosts.of(host).inspectAdoption({ path: requested, format: input.format, qmp: input.qmp });
    const now = this.clock.now();
    const v: Volume = {
      id: newUuid(), projectId, name: input.name ?? null, description: input.description ?? null, sizeGb: Math.max(1, Math.ceil(found.sizeBytes / GiB)), sizeBytes: found.sizeBytes, path: found.path,
      adopted: true, fileId: found.fileId, format: found.format, qmp: input.qmp ?? null, host, status: 'available', bootable: input.bootable ?? false, availabilityZone: this.opts.availabilityZone, metadata: input.metadata ?? {}, createdAt: now, updatedAt: now,
    };
    await this.catalog.transaction(async (c) => {
      if (await c.volumes.findVolumeByPath(found.path, host)) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is already managed as a volume`);
      await this.limits.quotas?.checkVolumeQuota(c, projectId, { volumes: 1, gigabytes: v.sizeGb });
      await c.volumes.insertVolume(v);
    });
    return v;
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
    if (this.servedLive?.(id)) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${id} is served by a live restore's export; end that export (DELETE .../cloudbackups/{backup_id}/export) first.`);
    await this.catalog.transaction(async (c) => {
      if (await c.backups.countInStatus(id, ['creating'])) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${id} is being backed up; delete it when the backup has finished.`);
      if (await c.volumes.countSnapshotsOfVolume(id)) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${id} still has snapshots; delete them first.`);
      if (!(await c.volumes.transitionVolume(id, ['available', 'error', 'error_restoring'], 'deleting', this.clock.now()))) {
        throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${id} is ${v.status}; only available or error volumes can be deleted.`);
      }
    });
    if (!v.adopted) {
      try {
        await this.hosts.of(v.host).removeVolumeFile({ id: v.id, path: v.path, fileId: v.fileId });
      } catch (err) {
        // The host could not be asked (offline, drained): nothing happened, the volume is as it was.
        // Otherwise (or when it did not answer in time) its file may be gone or half gone: error.
        await this.catalog.volumes.transitionVolume(id, ['deleting'], isAppError(err, ErrorCode.HostUnavailable) && err.details?.timedOut !== true ? v.status : 'error', this.clock.now());
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
    const id = newUuid();
    // The path is the host's to choose; the row says `creating` with none until the copy is made.
    const s: Snapshot = { id, projectId, volumeId: v.id, name: input.name ?? null, description: input.description ?? null, sizeGb: v.sizeGb, path: '', format: v.format, status: 'creating', createdAt: now, updatedAt: now };
    await this.catalog.volumes.insertSnapshot(s);
    try {
      const made = await this.hosts.of(v.host).snapshotVolume({ volume: fileRef(v), snapshotId: id });
      s.path = made.path;
      await this.catalog.volumes.setSnapshotPath(id, made.path);
      await this.catalog.volumes.transitionSnapshot(s.id, ['creating'], 'available', this.clock.now());
      s.status = 'available';
    } catch (err) {
      if (isAppError(err, ErrorCode.VolumePathRefused) || isAppError(err, ErrorCode.HostUnavailable)) {
        // The volume's file is not the one Haven knows (or its host is away): refused, and nothing is left behind.
        await this.catalog.volumes.deleteSnapshot(s.id);
        throw err;
      }
      await this.catalog.volumes.transitionSnapshot(s.id, ['creating'], 'error', this.clock.now());
      // What the copy left (the host's call may have failed after it wrote): removed by the snapshot's id.
      await this.hosts.of(v.host).removeSnapshotFile({ snapshotId: id }).catch(() => undefined);
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
    if (s.path) {
      const v = await this.catalog.volumes.getVolumeById(s.volumeId);
      try {
        await this.hosts.of(v?.host ?? null).removeSnapshotFile({ snapshotId: s.id, path: s.path });
      } catch (err) {
        await this.catalog.volumes.transitionSnapshot(id, ['deleting'], 'error', this.clock.now());
        throw err;
      }
    }
    await this.catalog.volumes.deleteSnapshot(id);
  }
}
