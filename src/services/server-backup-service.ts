/**
 * Server backups (CSBS): all volumes of a server at one moment.
 *
 * A protect job: the operator's freeze hook runs (application-consistent backups), every attached
 * volume is snapshotted (reflink when the file system can, else a sparse copy), the thaw hook runs,
 * and only then are the snapshots backed up through the engine — so writes after the snapshot
 * moment never leak into the backup. Each volume becomes an ordinary backup row (origin csbs,
 * linked to the checkpoint item), visible in VBS lists and deletable only through CSBS.
 */
import { randomBytes } from 'node:crypto';
import { ProjectLock, type Catalog, type CatalogQueries } from '../catalog/catalog.ts';
import type { ItemFilter } from '../catalog/checkpoint-queries.ts';
import type { Checkpoint, CheckpointItem } from '../domain/checkpoint.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { newHexId, newUuid } from '../domain/ids.ts';
import { queuedJob, type JobOf, type JobPayloads, type JobType } from '../domain/job.ts';
import type { Backup } from '../domain/model.ts';
import type { BackupService } from './backup-service.ts';
import type { JobHandlers } from './job-runner.ts';
import type { CsbsJobDeps } from './jobs/csbs-job-deps.ts';
import { csbsDeleteJob } from './jobs/csbs-delete.ts';
import { csbsProtectJob } from './jobs/csbs-protect.ts';
import { csbsRestoreJob } from './jobs/csbs-restore.ts';
import { unsafeServerName } from '../domain/server.ts';
import type { VolumeHosts } from './volume-hosts.ts';

export interface ServerBackupOptions {
  /** Where volume files are worked on; each host runs its own freeze and thaw hooks (HAVEN_FREEZE_COMMAND, HAVEN_THAW_COMMAND). */
  hosts: VolumeHosts;
}

export interface ItemInput {
  name?: string | undefined;
  description?: string | undefined;
  incremental?: boolean | undefined;
  tags?: { key: string; value: string }[] | undefined;
}

export interface RestoreMapping {
  backupId: string;
  volumeId: string;
}

export class ServerBackupService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly backups: BackupService;
  private readonly opts: ServerBackupOptions;
  private readonly jobQueued: () => void;

  /** Called when an item became available (policy retention runs here). */
  onItemAvailable: ((item: CheckpointItem) => Promise<unknown>) | null = null;

  constructor(catalog: Catalog, clock: Clock, backups: BackupService, opts: ServerBackupOptions, jobQueued: () => void) {
    this.catalog = catalog;
    this.clock = clock;
    this.backups = backups;
    this.opts = opts;
    this.jobQueued = jobQueued;
  }

  /** A checkpoint is settled when none of its items is still being protected. */
  private async settleCheckpoint(checkpointId: string): Promise<void> {
    const items = await this.catalog.checkpoints.itemsOfCheckpoint(checkpointId);
    if (items.some((i) => i.status === 'waiting_protect' || i.status === 'protecting')) return;
    await this.catalog.checkpoints.setCheckpointStatus(checkpointId, items.some((i) => i.status === 'error') ? 'error' : 'available', this.clock.now());
  }

  private newJob<T extends JobType>(projectId: string, type: T, payload: JobPayloads[T]): JobOf<T> {
    return queuedJob(newHexId(), projectId, type, payload, {}, this.clock.now());
  }

  /** B2: backs up one server; returns the checkpoint (status protecting) with its one item. */
  async protect(projectId: string, serverId: string, input: ItemInput): Promise<{ checkpoint: Checkpoint; item: CheckpointItem }> {
    const r = await this.protectServers(projectId, [serverId], { policyId: null, planName: null, autoTrigger: false, skipBusy: false }, input);
    return { checkpoint: r.checkpoint, item: r.items[0]! };
  }

  /**
   * One checkpoint with an item per server, each backed up by its own job (B1, B2, scheduled runs).
   * With `skipBusy`, a server whose previous backup or restore is still running is left out (a
   * scheduled run never backs a server up twice); otherwise that is an error.
   */
  async protectServers(projectId: string, serverIds: string[], plan: { policyId: string | null; planName: string | null; autoTrigger: boolean; skipBusy: boolean }, input: ItemInput): Promise<{ checkpoint: Checkpoint; items: CheckpointItem[] }> {
    const now = this.clock.now();
    const r = await this.catalog.transaction(async (c) => {
      const checkpoint: Checkpoint = {
        id: newUuid(), projectId, planId: plan.policyId ?? `fake_${newUuid()}`, planName: plan.planName ?? `server protect plan for ${serverIds[0] ?? ''}`, status: 'protecting',
        createdBy: plan.autoTrigger ? 'operation-engine' : 'manual', createdAt: now, updatedAt: now,
      };
      const items: CheckpointItem[] = [];
      for (const serverId of serverIds) {
        const server = await c.servers.getServer(projectId, serverId);
        if (!server) throw new AppError(ErrorCode.ServerNotFound, `Server ${serverId} does not exist.`);
        if (!(await c.servers.attachments(serverId)).length) throw new AppError(ErrorCode.ServerHasNoVolume, `No volume attached to the server (${serverId}) for protect.`);
        const attachedNow = await c.servers.attachments(serverId);
        const restoring = [];
        for (const a of attachedNow) if ((await c.volumes.getVolumeById(a.volumeId))?.status === 'restoring-backup') restoring.push(a.volumeId);
        if ((await c.checkpoints.busyItemsOfServer(serverId)).length || restoring.length) {
          if (plan.skipBusy) continue;
          throw new AppError(ErrorCode.ServerBusy, `Server (${serverId}) is already being backed up or restored.`);
        }
        items.push({
          id: newUuid(), checkpointId: checkpoint.id, projectId, serverId, serverName: server.name, policyId: plan.policyId,
          name: input.name ?? `${plan.autoTrigger ? 'autobk' : 'manualbk'}_${randomBytes(2).toString('hex')}`, description: input.description ?? '', status: 'waiting_protect',
          incremental: input.incremental !== false, autoTrigger: plan.autoTrigger, tags: input.tags ?? [], failOp: '', failReason: '', availabilityZone: server.availabilityZone,
          createdAt: now, updatedAt: now, finishedAt: null,
        });
      }
      if (!items.length) return { checkpoint, items };
      await this.checkQuota(c, projectId, items.length);
      await c.checkpoints.insertCheckpoint(checkpoint);
      for (const item of items) {
        await c.checkpoints.insertItem(item);
        await c.jobs.insertJob(this.newJob(projectId, 'csbsProtect', { itemId: item.id }));
      }
      return { checkpoint, items };
    });
    if (r.items.length) this.jobQueued();
    return r;
  }

  async getItem(projectId: string, id: string): Promise<CheckpointItem> {
    const i = await this.catalog.checkpoints.getItem(projectId, id);
    if (!i) throw new AppError(ErrorCode.CheckpointItemNotFound, `Checkpoint_item (${id}) is not found.`);
    return i;
  }

  /** An item by its id, or the single item of a checkpoint given by its id (gophercloud polls that way). */
  async getItemOrCheckpointItem(projectId: string, id: string): Promise<CheckpointItem> {
    const i = await this.catalog.checkpoints.getItem(projectId, id);
    if (i) return i;
    const items = (await this.catalog.checkpoints.getCheckpoint(projectId, id)) ? await this.catalog.checkpoints.itemsOfCheckpoint(id) : [];
    if (items.length === 1) return items[0]!;
    throw new AppError(ErrorCode.CheckpointItemNotFound, `Checkpoint_item (${id}) is not found.`);
  }

  listItems(projectId: string, f: ItemFilter, page: Parameters<Catalog['checkpoints']['listItems']>[2]): Promise<CheckpointItem[]> {
    return this.catalog.checkpoints.listItems(projectId, f, page);
  }

  countItems(projectId: string, f: ItemFilter): Promise<number> {
    return this.catalog.checkpoints.countItems(projectId, f);
  }

  volumeBackupsOf(itemId: string): Promise<Backup[]> {
    return this.catalog.backups.backupsOfItem(itemId);
  }

  async checkpointOf(item: CheckpointItem): Promise<Checkpoint | undefined> {
    return this.catalog.checkpoints.getCheckpoint(item.projectId, item.checkpointId);
  }

  /** B6: deletes every item of a checkpoint, or the listed ones. Asynchronous: items go deleting, then away. */
  async deleteCheckpoint(projectId: string, checkpointId: string, itemIds?: string[]): Promise<void> {
    await this.catalog.transaction(async (c) => {
      const cp = await c.checkpoints.getCheckpoint(projectId, checkpointId);
      if (!cp) throw new AppError(ErrorCode.CheckpointItemNotFound, `Checkpoint (${checkpointId}) is not found.`);
      const items = await c.checkpoints.itemsOfCheckpoint(checkpointId);
      const chosen = itemIds?.length ? itemIds.map((id) => {
        const it = items.find((x) => x.id === id);
        if (!it) throw new AppError(ErrorCode.CheckpointItemNotFound, `Checkpoint_item (${id}) is not found.`);
        return it;
      }) : items;
      for (const it of chosen) {
        if (it.status === 'deleting' || it.status === 'waiting_delete') continue; // already on its way
        const inUse = (await c.backups.backupsOfItem(it.id)).find((b) => b.status !== 'available' && b.status !== 'error');
        if (inUse) throw new AppError(ErrorCode.CheckpointItemBusy, `Checkpoint_item (${it.id}): its volume backup ${inUse.id} is ${inUse.status}: item in executing.`);
        if (!(await c.checkpoints.transitionItem(it.id, ['available', 'error'], 'waiting_delete', this.clock.now()))) throw new AppError(ErrorCode.CheckpointItemBusy, `Checkpoint_item (${it.id}) is ${it.status}: item in executing.`);
        await c.jobs.insertJob(this.newJob(projectId, 'csbsDelete', { itemId: it.id }));
      }
    });
    this.jobQueued();
  }

  /** The checks of a restore (S1, and R2 as a dry run); throws the first rule broken. */
  private async validateRestore(c: CatalogQueries, projectId: string, input: { checkpointId?: string; itemId: string; serverId: string; mapping: RestoreMapping[] }): Promise<CheckpointItem> {
    const item = await c.checkpoints.getItem(projectId, input.itemId);
    if (!item || (input.checkpointId !== undefined && item.checkpointId !== input.checkpointId)) throw new AppError(ErrorCode.CheckpointItemNotFound, `Checkpoint_item (${input.itemId}) is not found.`);
    if (item.status !== 'available') throw new AppError(ErrorCode.CheckpointItemUnavailable, `checkpoint item not available: ${item.id} is ${item.status}.`);
    const server = await c.servers.getServer(projectId, input.serverId);
    if (!server) throw new AppError(ErrorCode.ServerNotFound, `Server ${input.serverId} does not exist.`);
    if ((await c.checkpoints.busyItemsOfServer(server.id)).some((x) => x.status === 'restoring' || x.status === 'waiting_restore')) throw new AppError(ErrorCode.ServerBusy, 'The server is restoring.', { details: { csbs: 'CSBS.6015' } });
    const attached = await c.servers.attachments(server.id);
    if (!attached.length) throw new AppError(ErrorCode.ServerHasNoVolume, `No volume attached to the server (${server.id}) for restore.`, { details: { csbs: 'CSBS.6020' } });
    const volumeBackups = await c.backups.backupsOfItem(item.id);
    const unknown = input.mapping.filter((m) => !volumeBackups.some((b) => b.id === m.backupId));
    if (unknown.length) throw new AppError(ErrorCode.RestoreMappingInvalid, `Can not find backup(s) (${unknown.map((m) => m.backupId).join(', ')}) in checkpoint item (${item.id}).`, { details: { csbs: 'CSBS.6017' } });
    const missing = volumeBackups.filter((b) => !input.mapping.some((m) => m.backupId === b.id));
    if (missing.length || new Set(input.mapping.map((m) => m.backupId)).size !== input.mapping.length) {
      throw new AppError(ErrorCode.RestoreMappingInvalid, `Not assign backup(s) (${missing.map((b) => b.id).join(', ')}) to volume(s), partial restore is not supported.`, { details: { csbs: 'CSBS.6018' } });
    }
    if (new Set(input.mapping.map((m) => m.volumeId)).size !== input.mapping.length) throw new AppError(ErrorCode.RestoreMappingInvalid, 'A target volume is mapped twice.', { details: { csbs: 'CSBS.6018' } });
    for (const m of input.mapping) {
      if (!attached.some((a) => a.volumeId === m.volumeId)) throw new AppError(ErrorCode.RestoreMappingInvalid, `Volume(s) (${m.volumeId}) not found in target server.`, { details: { csbs: 'CSBS.6014' } });
      const v = (await c.volumes.getVolume(projectId, m.volumeId))!;
      const b = volumeBackups.find((x) => x.id === m.backupId)!;
      if (v.sizeBytes < b.sizeBytes) throw new AppError(ErrorCode.RestoreMappingInvalid, `Target volume (${v.id}) size (${v.sizeGb}) small than volume backup (${b.id}) size (${b.sizeGb}).`, { details: { csbs: 'CSBS.6024' } });
    }
    return item;
  }

  /** R2: whether a restore would be accepted, without doing it. */
  async checkRestorable(projectId: string, input: { itemId: string; serverId: string; mapping: RestoreMapping[] }): Promise<AppError | null> {
    try {
      await this.validateRestore(this.catalog, projectId, input);
      return null;
    } catch (err) {
      if (err instanceof AppError) return err;
      throw err;
    }
  }

  /** R1: whether a server can be backed up (a server bound to a policy answers no, as CSBS does). */
  async checkProtectable(projectId: string, serverId: string): Promise<AppError | null> {
    if (!(await this.catalog.servers.getServer(projectId, serverId))) return new AppError(ErrorCode.ServerNotFound, 'server do not exist');
    if (!(await this.catalog.servers.attachments(serverId)).length) return new AppError(ErrorCode.ServerHasNoVolume, `No volume attached to the server (${serverId}) for protect.`);
    if (await this.catalog.csbsPolicies.policyOfServer(serverId)) return new AppError(ErrorCode.ServerInOtherPolicy, `Server (${serverId}) is already in service.`);
    return null;
  }

  /**
   * The quotas Q1 reports (server backups, and their stored capacity): refused with CSBS.9006 when
   * `adding` more backups would pass the count, or the capacity is used up. Under a per-project
   * lock, so processes sharing a catalog cannot pass it together.
   */
  private async checkQuota(c: CatalogQueries, projectId: string, adding: number): Promise<void> {
    const q = this.backups.quotaLimits;
    if (q.backups < 0 && q.backupGigabytes < 0) return;
    await c.lockKey(ProjectLock.csbsQuota, projectId);
    const backups = await c.checkpoints.countItems(projectId, {});
    if (q.backups >= 0 && backups + adding > q.backups) throw new AppError(ErrorCode.QuotaBackupsExceeded, `Quota exceeded for resources: backups (${backups} of ${q.backups} used).`);
    const capacityGb = Math.ceil((await c.backups.storedBytesOf(projectId, 'csbs')) / 1024 ** 3);
    if (q.backupGigabytes >= 0 && capacityGb >= q.backupGigabytes) throw new AppError(ErrorCode.QuotaGigabytesExceeded, `Quota exceeded for resources: backup_capacity (${capacityGb} of ${q.backupGigabytes} GB used).`);
  }

  /** Q1 usage: backups (items) and their stored capacity in GB. */
  async usage(projectId: string): Promise<{ backups: number; capacityGb: number }> {
    const backups = await this.catalog.checkpoints.countItems(projectId, {});
    return { backups, capacityGb: Math.ceil((await this.catalog.backups.storedBytesOf(projectId, 'csbs')) / 1024 ** 3) };
  }

  /** S1: restores every volume of a server backup onto the target server's volumes. */
  async restore(projectId: string, input: { checkpointId: string; itemId: string; serverId: string; mapping: RestoreMapping[]; powerOn: boolean }): Promise<{ restoreId: string; item: CheckpointItem }> {
    const now = this.clock.now();
    const r = await this.catalog.transaction(async (c) => {
      const item = await this.validateRestore(c, projectId, input);
      if (!(await c.checkpoints.transitionItem(item.id, ['available'], 'waiting_restore', now))) throw new AppError(ErrorCode.CheckpointItemBusy, `Checkpoint_item (${item.id}) is no longer available: item in executing.`);
      // The target volumes are being overwritten: no backup, restore, detach or delete meanwhile.
      for (const m of input.mapping) {
        if (await c.backups.countInStatus(m.volumeId, ['creating'])) throw new AppError(ErrorCode.ServerBusy, `Volume ${m.volumeId} is being backed up.`, { details: { csbs: 'CSBS.6015' } });
        if (!(await c.volumes.transitionVolume(m.volumeId, ['in-use', 'available'], 'restoring-backup', now))) throw new AppError(ErrorCode.ServerBusy, 'The server is restoring.', { details: { csbs: 'CSBS.6015' } });
      }
      const restoreId = newUuid();
      await c.checkpoints.insertRestore({ id: restoreId, projectId, checkpointId: item.checkpointId, itemId: item.id, serverId: input.serverId, parameters: input, status: 'in_progress', createdAt: now });
      await c.jobs.insertJob(this.newJob(projectId, 'csbsRestore', { itemId: item.id, restoreId, serverId: input.serverId, mapping: input.mapping }));
      return { restoreId, item };
    });
    this.jobQueued();
    return r;
  }

  /** What the freeze and thaw hooks are told about the server. */
  /**
   * What the hooks get: HAVEN_SERVER_ID (Haven's id, never chosen by a tenant: the safe handle),
   * HAVEN_SERVER_NAME (tenant-chosen, so hooks must quote it; names starting with '-' or holding
   * control characters are refused when servers are created) and the volumes' paths.
   */
  private hookEnv(item: CheckpointItem, volumePaths: string[]): Record<string, string> {
    const why = unsafeServerName(item.serverName);
    if (why) throw new AppError(ErrorCode.HookFailed, `server ${item.serverId}'s name ${why}; the hooks are not run with it`);
    return { HAVEN_SERVER_ID: item.serverId, HAVEN_SERVER_NAME: item.serverName, HAVEN_VOLUME_PATHS: volumePaths.join(' ') };
  }

  /** The job handlers the runner dispatches to (services/jobs/). */
  handlers(): Pick<JobHandlers, 'csbsProtect' | 'csbsDelete' | 'csbsRestore'> {
    const deps: CsbsJobDeps = {
      catalog: this.catalog, clock: this.clock, backups: this.backups, hosts: this.opts.hosts,
      hookEnv: (item, paths) => this.hookEnv(item, paths),
      settleCheckpoint: (id) => this.settleCheckpoint(id),
      itemAvailable: async (item) => this.onItemAvailable?.(item),
    };
    return { csbsProtect: csbsProtectJob(deps), csbsDelete: csbsDeleteJob(deps), csbsRestore: csbsRestoreJob(deps) };
  }
}
