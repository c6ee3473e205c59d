/**
 * Backups as the APIs see them: create (full or incremental, from a volume or one of its
 * snapshots), delete and restore, each queued as a job; plus reads. The only place that changes a
 * backup's status (compare-and-set, domain/backup-status.ts).
 *
 * Write order (docs/design.md): the engine writes chunks, index and manifest; only then does the
 * catalog row become `available`. Delete order is the reverse: the row goes to `deleting`, the
 * manifest is deleted, then the row; the chunks go at the next GC.
 */
import { ProjectLock, type Catalog, type CatalogQueries } from '../catalog/catalog.ts';
import type { BackupFilter, BackupPage } from '../catalog/backup-queries.ts';
import type { JobFilter, JobPage } from '../catalog/job-queries.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { newHexId, newUuid } from '../domain/ids.ts';
import { queuedJob, type Job, type JobOf, type JobPayloads, type JobType } from '../domain/job.ts';
import type { Backup, BackupOrigin, Tag, Volume } from '../domain/model.ts';
import { detached } from '../domain/request-context.ts';
import type { VolumeHosts } from './volume-hosts.ts';
import { completionOf, fileRef, type BackupSummary, type WorkControl } from './volume-host.ts';
import type { BackupEngine } from './backup-engine.ts';
import type { JobHandlers } from './job-runner.ts';
import { activeJobsOfBackup } from './backup-jobs.ts';
import { failureText, type BackupJobDeps } from './jobs/backup-job-deps.ts';
import { createBackupJob } from './jobs/create-backup.ts';
import { deleteBackupJob } from './jobs/delete-backup.ts';
import { restoreBackupJob } from './jobs/restore-backup.ts';

export interface CreateBackupInput {
  volumeId: string;
  snapshotId?: string | null | undefined;
  name?: string | null | undefined;
  description?: string | null | undefined;
  tags?: Tag[] | undefined;
  /** true: record a full backup; false/absent: incremental when the volume has a previous backup. */
  full?: boolean | undefined;
  origin: BackupOrigin;
  policyId?: string | null | undefined;
}

export interface Quotas {
  backups: number;
  backupGigabytes: number;
}

export interface BackupServiceEvents {
  /** A job was queued (the local runner wakes up). */
  jobQueued(): void;
  /** Engine bytes of a finished backup (metrics). */
  backupFinished?(b: { sizeBytes: number; newBytes: number; storedBytes: number }): void;
  /** A backup became available (policy retention runs here). */
  backupSucceeded?(b: Backup): Promise<unknown>;
  /** A job was asked to stop (the local runner aborts it if it runs it). */
  jobCancelled?(jobId: string, reason: string): void;
}

export class BackupService {
  /** Where volume files are worked on: this process, or their host's agent (volume-hosts.ts). */
  private readonly hosts: VolumeHosts;
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly engine: BackupEngine;
  private readonly quotas: Quotas;
  private readonly events: BackupServiceEvents;
  private readonly log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };

  /** Live restores (the export service): set by the composition root. */
  live: LiveSessions | null = null;

  constructor(catalog: Catalog, clock: Clock, engine: BackupEngine, quotas: Quotas, events: BackupServiceEvents, log: BackupService['log'], hosts: VolumeHosts) {
    this.hosts = hosts;
    this.catalog = catalog;
    this.clock = clock;
    this.engine = engine;
    this.quotas = quotas;
    this.events = events;
    this.log = log;
  }

  private newJob<T extends JobType>(projectId: string, type: T, payload: JobPayloads[T], entities: Record<string, string>): JobOf<T> {
    return queuedJob(newHexId(), projectId, type, payload, entities, this.clock.now());
  }

  /** Queues a backup of a volume: the backup row (creating) and its job commit together. */
  async createBackup(projectId: string, input: CreateBackupInput): Promise<{ backup: Backup; job: Job }> {
    const now = this.clock.now();
    return this.catalog.transaction(async (c) => {
      const volume = await c.volumes.getVolume(projectId, input.volumeId);
      if (!volume) throw new AppError(ErrorCode.VolumeNotFound, `Volume ${input.volumeId} could not be found.`);
      if (volume.status !== 'available' && volume.status !== 'in-use') throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${volume.id} is ${volume.status}; backups need an available or in-use volume.`);
      // The job opens the volume's (or snapshot's) file itself, from the catalog (sourceOf).
      if (input.snapshotId) {
        const snap = await c.volumes.getSnapshot(projectId, input.snapshotId);
        if (!snap || snap.volumeId !== volume.id) throw new AppError(ErrorCode.SnapshotNotFound, `Snapshot ${input.snapshotId} of volume ${volume.id} could not be found.`);
        if (snap.status !== 'available') throw new AppError(ErrorCode.SnapshotInvalidState, `Snapshot ${snap.id} is ${snap.status}, not available.`);
      }
      if (await c.backups.countInStatus(volume.id, ['creating'])) throw new AppError(ErrorCode.BackupInProgress, `A backup of volume ${volume.id} is still being created; try again when it has finished.`);
      await this.checkQuota(c, projectId, volume);
      const previous = await c.backups.latestAvailableOfVolume(volume.id);
      const full = input.full === true || !previous;
      const backup: Backup = {
        id: newUuid(), projectId, volumeId: volume.id, snapshotId: input.snapshotId ?? null, name: input.name ?? null, description: input.description ?? null,
        status: 'creating', fullBackup: full, parentId: full ? null : previous!.id, sizeGb: volume.sizeGb, sizeBytes: volume.sizeBytes, storedBytes: 0, newBytes: 0,
        objectCount: 0, origin: input.origin, policyId: input.policyId ?? null, tags: input.tags ?? [], failReason: null, availabilityZone: volume.availabilityZone,
        createdAt: now, updatedAt: now, dataTimestamp: now, checkpointItemId: null,
      };
      try {
        await c.backups.insertBackup(backup);
      } catch (err) {
        // Another process started a backup of this volume between the check above and this insert.
        if (isUniqueViolation(err)) throw new AppError(ErrorCode.BackupInProgress, `A backup of volume ${volume.id} is still being created; try again when it has finished.`, { cause: err });
        throw err;
      }
      const job = this.newJob(projectId, 'bksCreateBackup', { backupId: backup.id, volumeId: volume.id, volumeName: volume.name ?? volume.id, checkReused: input.full === true }, {
        bks_create_volume_name: backup.name ?? '', backup_id: backup.id, volume_id: volume.id, snapshot_id: backup.snapshotId ?? '',
      });
      await c.jobs.insertJob(job);
      return { backup, job };
    }).then((r) => (this.events.jobQueued(), r));
  }

  private async checkQuota(c: CatalogQueries, projectId: string, volume: Volume): Promise<void> {
    if (this.quotas.backups < 0 && this.quotas.backupGigabytes < 0) return;
    await c.lockKey(ProjectLock.backupQuota, projectId); // usage and the insert after it, as one step across processes
    const used = await c.backups.usage(projectId);
    if (this.quotas.backups >= 0 && used.backups + 1 > this.quotas.backups) throw new AppError(ErrorCode.QuotaBackupsExceeded, `Backup quota exceeded: ${used.backups} of ${this.quotas.backups} backups used.`);
    if (this.quotas.backupGigabytes >= 0 && used.gigabytes + volume.sizeGb > this.quotas.backupGigabytes) throw new AppError(ErrorCode.QuotaGigabytesExceeded, `Backup capacity quota exceeded: ${used.gigabytes} of ${this.quotas.backupGigabytes} GB used, the backup needs ${volume.sizeGb} GB.`);
  }

  /** The per-project limits (-1: unlimited); server backups (CSBS) count against the same numbers. */
  get quotaLimits(): Quotas {
    return this.quotas;
  }

  async usage(projectId: string): Promise<{ backups: number; gigabytes: number; quotas: Quotas }> {
    return { ...(await this.catalog.backups.usage(projectId)), quotas: this.quotas };
  }

  async getBackup(projectId: string, id: string, opts: { includeShared?: boolean } = {}): Promise<Backup> {
    const b = opts.includeShared ? await visibleBackup(this.catalog, projectId, id) : await this.catalog.backups.getBackup(projectId, id);
    if (!b) throw new AppError(ErrorCode.BackupNotFound, `Backup ${id} could not be found.`);
    return b;
  }

  listBackups(projectId: string, filter: BackupFilter, page: BackupPage): Promise<Backup[]> {
    return this.catalog.backups.listBackups(projectId, filter, page);
  }

  listBackupSummaries(projectId: string, filter: BackupFilter, page: BackupPage): Promise<{ id: string; name: string | null }[]> {
    return this.catalog.backups.listBackupSummaries(projectId, filter, page);
  }

  countBackups(projectId: string, filter: BackupFilter): Promise<number> {
    return this.catalog.backups.countBackups(projectId, filter);
  }

  /** Queues the deletion of a backup (available or error only). */
  async deleteBackup(projectId: string, id: string): Promise<Job> {
    const cancelled: string[] = [];
    const job = await this.catalog.transaction(async (c) => {
      const b = await c.backups.getBackup(projectId, id);
      if (!b) throw new AppError(ErrorCode.BackupNotFound, `Backup ${id} could not be found.`);
      if (b.checkpointItemId) throw new AppError(ErrorCode.BackupNotOwned, `Backup ${id} is part of a server backup (CSBS checkpoint item ${b.checkpointItemId}); delete it through CSBS.`);
      if (b.status === 'creating') return this.stopAndDelete(c, b, DELETED_WHILE_CREATING, cancelled);
      if (!(await c.backups.applyBackupEvent(id, 'delete', this.clock.now()))) {
        throw new AppError(ErrorCode.BackupInvalidState, `Backup ${id} is ${b.status}; only available or error backups can be deleted.`);
      }
      const j = this.newJob(projectId, 'bksDeleteBackup', { backupId: id }, { backup_id: id, volume_id: b.volumeId });
      await c.jobs.insertJob(j);
      return j;
    });
    for (const jobId of cancelled) this.events.jobCancelled?.(jobId, DELETED_WHILE_CREATING);
    this.events.jobQueued();
    return job;
  }

  /**
   * Cloud admin (Cinder's os-force_delete): deletes a backup of any project in any status. A job
   * still working on it (create, restore) is stopped first; a backup already being deleted keeps
   * its delete job (or gets a new one, if that job is gone).
   */
  async forceDeleteBackup(id: string): Promise<Job> {
    const reason = 'force-deleted by the cloud admin';
    const cancelled: string[] = [];
    const job = await this.catalog.transaction(async (c) => {
      const b = await c.backups.getBackupById(id);
      if (!b) throw new AppError(ErrorCode.BackupNotFound, `Backup ${id} could not be found.`);
      if (b.checkpointItemId) throw new AppError(ErrorCode.BackupNotOwned, `Backup ${id} is part of a server backup (CSBS checkpoint item ${b.checkpointItemId}); delete it through CSBS.`);
      const deleting = b.status === 'deleting' && (await activeJobsOfBackup(c, id)).find((j) => j.type === 'bksDeleteBackup');
      return deleting || this.stopAndDelete(c, b, reason, cancelled);
    });
    for (const jobId of cancelled) this.events.jobCancelled?.(jobId, reason);
    this.events.jobQueued();
    return job;
  }

  /**
   * The row goes to `deleting`, each job working on the backup is asked to stop, and a delete job
   * is queued; it waits for those jobs to end before removing what they wrote (deleteHandler).
   * Inside the caller's transaction; the ids of the jobs asked to stop are added to `cancelled`.
   */
  private async stopAndDelete(c: CatalogQueries, b: Backup, reason: string, cancelled: string[]): Promise<Job> {
    // A job still creating or restoring it is cancelled; a backup already deleting gets a new delete job.
    const event = b.status === 'creating' || b.status === 'restoring' ? 'cancel' : b.status === 'deleting' ? 'retryDelete' : 'delete';
    if (!(await c.backups.applyBackupEvent(b.id, event, this.clock.now(), { onlyFrom: [b.status] }))) {
      throw new AppError(ErrorCode.BackupInvalidState, `Backup ${b.id} changed status while it was being deleted; try again.`);
    }
    for (const j of await activeJobsOfBackup(c, b.id)) {
      if (j.type !== 'bksDeleteBackup' && (await c.jobs.requestCancel(j.id, reason))) cancelled.push(j.id);
    }
    const job = this.newJob(b.projectId, 'bksDeleteBackup', { backupId: b.id }, { backup_id: b.id, volume_id: b.volumeId });
    await c.jobs.insertJob(job);
    return job;
  }

  /**
   * Cloud admin (Cinder's os-reset_status): sets a backup `available` or `error` whatever its
   * status, to repair a record by hand. Refused while a job works on the backup (stop it with
   * os-force_delete instead), and `available` needs the backup's manifest in the repository.
   */
  async resetBackupStatus(id: string, status: 'available' | 'error'): Promise<void> {
    const b = await this.catalog.backups.getBackupById(id);
    if (!b) throw new AppError(ErrorCode.BackupNotFound, `Backup ${id} could not be found.`);
    if (status === 'available' && !(await this.engine.findManifest(id))) {
      throw new AppError(ErrorCode.BackupInvalidState, `Backup ${id} has no manifest in the repository, so it cannot be made available.`);
    }
    await this.catalog.transaction(async (c) => {
      const busy = await activeJobsOfBackup(c, id);
      if (busy.length) throw new AppError(ErrorCode.BackupInvalidState, `Backup ${id} is ${b.status} and job ${busy[0]!.id} works on it; wait for it to end or force-delete the backup.`);
      const reason = status === 'error' ? 'status reset to error by the cloud admin' : null;
      if (!(await c.backups.applyBackupEvent(id, status === 'available' ? 'resetAvailable' : 'resetError', this.clock.now(), { onlyFrom: [b.status], failReason: reason }))) {
        throw new AppError(ErrorCode.BackupInvalidState, `Backup ${id} changed status meanwhile; try again.`);
      }
    });
  }

  /**
   * Queues a restore of a backup (own, or shared with this project) onto a volume of this project
   * that is at least as large.
   */
  async restoreBackup(projectId: string, id: string, volumeId: string, opts: { live?: boolean } = {}): Promise<{ job: Job; backup: Backup; volume: Volume }> {
    const live = opts.live === true;
    const r = await this.catalog.transaction(async (c) => {
      const b = await visibleBackup(c, projectId, id);
      if (!b) throw new AppError(ErrorCode.BackupNotFound, `Backup ${id} could not be found.`);
      const v = await c.volumes.getVolume(projectId, volumeId);
      if (!v) throw new AppError(ErrorCode.VolumeNotFound, `Volume ${volumeId} could not be found.`);
      if (this.live?.serving(v.id)) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${v.id} is served by a live restore's export; end that export (DELETE .../cloudbackups/{backup_id}/export) first.`);
      if (live) {
        if (!this.live) throw new AppError(ErrorCode.ExportUnavailable, 'This service offers no live restores.');
        this.live.precheck(v.host);
        if (v.format !== 'raw' || v.qmp) throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${v.id} is ${v.qmp ? 'the disk of a running guest' : `a ${v.format} image`}: a live restore needs a raw volume (a file or block device).`);
      }
      if (v.sizeBytes < b.sizeBytes) throw new AppError(ErrorCode.VolumeTooSmall, `Volume ${v.id} (${v.sizeGb} GB) is smaller than backup ${b.id} (${b.sizeGb} GB).`);
      if (await c.backups.countInStatus(v.id, ['creating'])) throw new AppError(ErrorCode.BackupInProgress, `Volume ${v.id} is being backed up; restore when the backup has finished.`);
      if (b.status !== 'available') throw new AppError(ErrorCode.BackupInvalidState, `Backup ${id} is ${b.status}; only available backups can be restored.`);
      if (!(await c.volumes.transitionVolume(v.id, ['available', 'error_restoring'], 'restoring-backup', this.clock.now()))) {
        throw new AppError(ErrorCode.VolumeInvalidState, `Volume ${v.id} is ${v.status}; restores need an available volume (detach it first).`);
      }
      await c.backups.applyBackupEvent(id, 'restore', this.clock.now(), { onlyFrom: ['available'] });
      const job = this.newJob(projectId, 'bksRestoreBackup', { backupId: id, volumeId: v.id, ...(live ? { live: true } : {}) }, { backup_id: id, volume_id: v.id, volume_name: v.name ?? '' });
      await c.jobs.insertJob(job);
      return { job, backup: b, volume: v };
    });
    this.events.jobQueued();
    return r;
  }

  /**
   * The row of one disk's backup in a server backup (CSBS), `creating`, linked to its checkpoint
   * item; what the host writes completes it (completeServerDiskBackup). A failed server backup
   * marks its item's creating rows error (jobs/csbs-protect.ts).
   */
  async beginServerDiskBackup(volume: Volume, opts: { name: string; description: string; checkpointItemId: string; full: boolean }): Promise<Backup> {
    const now = this.clock.now();
    const previous = await this.catalog.backups.latestAvailableOfVolume(volume.id);
    const full = opts.full || !previous;
    const backup: Backup = {
      id: newUuid(), projectId: volume.projectId, volumeId: volume.id, snapshotId: null, name: opts.name, description: opts.description, status: 'creating', fullBackup: full,
      parentId: full ? null : previous!.id, sizeGb: volume.sizeGb, sizeBytes: volume.sizeBytes, storedBytes: 0, newBytes: 0, objectCount: 0, origin: 'csbs', policyId: null,
      tags: [], failReason: null, availabilityZone: volume.availabilityZone, createdAt: now, updatedAt: now, dataTimestamp: now, checkpointItemId: opts.checkpointItemId,
    };
    try {
      await this.catalog.backups.insertBackup(backup);
    } catch (err) {
      if (isUniqueViolation(err)) throw new AppError(ErrorCode.BackupInProgress, `a backup of volume ${volume.id} is still being created`, { cause: err });
      throw err;
    }
    return backup;
  }

  /** A server disk's backup row becomes available with what the host wrote. */
  async completeServerDiskBackup(backup: Backup, r: BackupSummary): Promise<void> {
    this.events.backupFinished?.({ sizeBytes: r.sizeBytes, newBytes: r.newBytes, storedBytes: r.storedBytes });
    if (!(await this.catalog.backups.completeBackup(backup.id, completionOf(r, backup.dataTimestamp), this.clock.now()))) {
      throw new AppError(ErrorCode.BackupInvalidState, `backup ${backup.id} left the creating state while it was written`);
    }
  }

  /** Writes a backup onto a volume now, inside a caller's job (CSBS restores); keeps a larger volume's size. */
  async restoreVolumeNow(backupId: string, volume: Volume, opts: { signal: AbortSignal; jobId: string; onProgress: (done: number, total: number) => void }): Promise<void> {
    // On the volume's host: its own file, checked on open (never through a link or a swapped
    // file); a file larger than the backup keeps the volume's size.
    await this.hosts.of(volume.host).restore({ backupId, target: fileRef(volume) }, opts);
  }

  /** Deletes a volume backup of a server backup now (CSBS); its chunks go at the next GC. */
  async deleteVolumeBackupNow(backupId: string): Promise<void> {
    await this.engine.delete(backupId);
    await this.catalog.transaction(async (c) => {
      await c.policies.deleteSharingsOfBackup(backupId);
      await c.backups.deleteBackupRow(backupId);
    });
  }

  /**
   * Verifies every `error` backup that has a manifest; those found whole again (the damaged pack
   * was put back, or a later backup or `haven verify --repair` stored the chunks again) become
   * `available` (event `verified`). Run in the background at start (app/compose.ts). Returns the
   * ids brought back.
   */
  async reverifyErrorBackups(): Promise<string[]> {
    const ids: string[] = [];
    for (const id of await this.catalog.backups.idsInStatus('error', 10_000)) if (await this.engine.findManifest(id)) ids.push(id);
    if (!ids.length) return [];
    const report = await this.engine.verify(ids);
    const back: string[] = [];
    for (const v of report.backups) {
      if (!v.ok) continue;
      if (await this.catalog.backups.applyBackupEvent(v.id, 'verified', this.clock.now(), { failReason: null })) back.push(v.id);
    }
    if (back.length) this.log.warn({ backups: back }, 'backups verified whole again are available');
    return back;
  }

  /** reverifyErrorBackups in the background; a failure is logged (the next start tries again). */
  reverifyErrorBackupsSoon(): void {
    this.engine.track(this.reverifyErrorBackups()).catch((err: unknown) => this.log.error({ err }, 'verifying error backups failed'));
  }

  /** Reclaims space in the background (after deletes). */
  collectGarbageSoon(): void {
    // The repository's work, not the deleting job's (whose ids would otherwise mark its log lines).
    detached(() => this.engine.collectGarbage()).catch((err: unknown) => this.log.error({ err }, 'garbage collection failed'));
  }

  async getJob(projectId: string, id: string): Promise<Job> {
    const j = await this.catalog.jobs.getJob(projectId, id);
    if (!j) throw new AppError(ErrorCode.JobNotFound, `Failed to query the task: job ${id} does not exist.`);
    return j;
  }

  /**
   * Jobs newest first: a project's, or every project's (filter.projectId null: the caller checked
   * the cloud admin's right to that). An unknown marker, or another project's, is a bad argument.
   */
  listJobs(filter: JobFilter, page: JobPage): Promise<Job[]> {
    return this.catalog.jobs.listJobs(filter, page);
  }

  /** The job handlers the runner dispatches to (services/jobs/). */
  handlers(): Pick<JobHandlers, 'bksCreateBackup' | 'bksDeleteBackup' | 'bksRestoreBackup'> {
    const deps: BackupJobDeps = {
      catalog: this.catalog, clock: this.clock, engine: this.engine, hosts: this.hosts, events: this.events, log: this.log,
      collectGarbageSoon: () => this.collectGarbageSoon(),
      restoreVolumeNow: (backupId, volume, opts) => this.restoreVolumeNow(backupId, volume, opts),
      live: () => this.live,
    };
    return { bksCreateBackup: createBackupJob(deps), bksDeleteBackup: deleteBackupJob(deps), bksRestoreBackup: restoreBackupJob(deps) };
  }
}

/**
 * Live restores, as the restore job and the checks before a restore need them (the export
 * service implements it: it serves the volume while the job copies).
 */
export interface LiveSessions {
  /** Refuses a live restore that cannot be served from the volume's host, before anything changes. */
  precheck(host: string | null): void;
  /** The copy of a live restore (its job), on the volume's host; resolves once the volume holds the backup. */
  copy(jobId: string, ctl: WorkControl): Promise<{ writtenBytes: number }>;
  /** The job ended; a failed one's export ends. */
  ended(jobId: string, ok: boolean): Promise<void>;
  /** Whether a live restore's export serves the volume (another restore onto it would clash). */
  serving(volumeId: string): boolean;
}

/** A unique-index violation, as SQLite and PostgreSQL report it. */
export function isUniqueViolation(err: unknown): boolean {
  const e = err as { code?: string; errcode?: string; message?: string };
  return e?.code === '23505' || /UNIQUE constraint failed/.test(e?.message ?? '');
}

/** A backup of the project, or one another project shared with it. */
async function visibleBackup(c: CatalogQueries, projectId: string, id: string): Promise<Backup | undefined> {
  const own = await c.backups.getBackup(projectId, id);
  if (own) return own;
  return (await c.policies.findSharing(id, projectId)) ? c.backups.getBackupById(id) : undefined;
}

const DELETED_WHILE_CREATING = 'the backup was deleted while it was being created';
