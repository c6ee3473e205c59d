/**
 * Backup sharing (os-vendor-backup-sharing): the owner shares a backup with other projects, which
 * may then see it and restore it into their own volumes; nobody else can. Only the owner cancels.
 */
import type { Catalog } from '../catalog/catalog.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { newUuid } from '../domain/ids.ts';
import type { Backup } from '../domain/model.ts';
import type { Sharing } from '../domain/policy.ts';

export interface SharingFilter {
  shareToMe: boolean;
  backupId?: string | undefined;
  fromProjectId?: string | undefined;
  toProjectId?: string | undefined;
  volumeId?: string | undefined;
  name?: string | undefined;
  status?: string | undefined;
  availabilityZone?: string | undefined;
}

export class SharingService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;

  constructor(catalog: Catalog, clock: Clock) {
    this.catalog = catalog;
    this.clock = clock;
  }

  async share(projectId: string, backupId: string, toProjectIds: string[]): Promise<Sharing[]> {
    return this.catalog.transaction(async (c) => {
      const b = await c.backups.getBackup(projectId, backupId);
      if (!b) throw new AppError(ErrorCode.BackupNotFound, `Backup ${backupId} could not be found.`);
      if (b.status !== 'available') throw new AppError(ErrorCode.BackupInvalidState, `Backup ${backupId} is ${b.status}; only available backups can be shared.`);
      const out: Sharing[] = [];
      for (const to of [...new Set(toProjectIds)]) {
        if (to === projectId) throw new AppError(ErrorCode.InvalidArgument, 'A backup cannot be shared with its own project.');
        if (!(await c.identity.getProject(to))) throw new AppError(ErrorCode.ProjectNotFound, `Project ${to} does not exist.`);
        const existing = await c.policies.findSharing(backupId, to);
        if (existing) {
          out.push(existing);
          continue;
        }
        const now = this.clock.now();
        const s: Sharing = { id: newUuid(), backupId, fromProjectId: projectId, toProjectId: to, createdAt: now, updatedAt: now };
        await c.policies.insertSharing(s);
        out.push(s);
      }
      return out;
    });
  }

  /** Cancels one sharing, or with `isBackupId` every sharing of that backup. Owner only. */
  async cancel(projectId: string, id: string, isBackupId: boolean): Promise<void> {
    await this.catalog.transaction(async (c) => {
      if (isBackupId) {
        const b = await c.backups.getBackup(projectId, id);
        if (!b || !(await c.policies.listSharings({ backupId: id, fromProjectId: projectId })).length) throw new AppError(ErrorCode.SharingNotFound, `Backup ${id} has no sharings.`);
        await c.policies.deleteSharingsOfBackup(id);
        return;
      }
      const s = await c.policies.getSharing(projectId, id);
      if (!s || s.fromProjectId !== projectId) throw new AppError(ErrorCode.SharingNotFound, `Sharing ${id} could not be found.`);
      await c.policies.deleteSharing(id);
    });
  }

  async get(projectId: string, id: string): Promise<{ sharing: Sharing; backup: Backup | null }> {
    const s = await this.catalog.policies.getSharing(projectId, id);
    if (!s) throw new AppError(ErrorCode.SharingNotFound, `Sharing ${id} could not be found.`);
    return { sharing: s, backup: (await this.catalog.backups.getBackupById(s.backupId)) ?? null };
  }

  async list(projectId: string, f: SharingFilter): Promise<{ sharing: Sharing; backup: Backup | null }[]> {
    const rows = await this.catalog.policies.listSharings(
      f.shareToMe ? { toProjectId: projectId, fromProjectId: f.fromProjectId, backupId: f.backupId } : { fromProjectId: projectId, toProjectId: f.toProjectId, backupId: f.backupId },
    );
    const out = [];
    for (const s of rows) {
      const b = (await this.catalog.backups.getBackupById(s.backupId)) ?? null;
      if (f.volumeId !== undefined && b?.volumeId !== f.volumeId) continue;
      if (f.name !== undefined && !(b?.name ?? '').includes(f.name)) continue;
      if (f.status !== undefined && b?.status !== f.status) continue;
      if (f.availabilityZone !== undefined && b?.availabilityZone !== f.availabilityZone) continue;
      out.push({ sharing: s, backup: b });
    }
    return out;
  }
}
