/**
 * Project quotas in Cinder's quota-set terms (os-quota-sets).
 *
 * - `volumes` and `gigabytes`: a project's volumes, created and adopted alike (snapshots are not
 *   counted). Defaults from the settings (HAVEN_QUOTA_VOLUMES, HAVEN_QUOTA_GIGABYTES); the cloud
 *   admin sets other limits per project, kept in the catalog (project_quotas). -1: unlimited.
 * - `backups`, `backup_gigabytes` (HAVEN_QUOTA_BACKUPS, HAVEN_QUOTA_BACKUP_GIGABYTES) and
 *   `per_volume_gigabytes` (HAVEN_MAX_VOLUME_GB) are the same for every project: reported, not set.
 *
 * Enforcement (checkVolumeQuota) runs in the transaction that inserts the volume row, under a
 * per-project lock across processes (as the backup quotas), so two requests racing for the last
 * unit cannot both get it.
 */
import { ProjectLock, type Catalog, type CatalogQueries } from '../catalog/catalog.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';

export type QuotaResource = 'volumes' | 'gigabytes' | 'backups' | 'backup_gigabytes' | 'per_volume_gigabytes';
export type QuotaSet = Record<QuotaResource, number>;
export interface QuotaUsage {
  inUse: number;
  limit: number;
  reserved: number;
}

/** The resources the cloud admin may set per project. */
export const SETTABLE_QUOTAS = ['volumes', 'gigabytes'] as const;
export type SettableQuota = (typeof SETTABLE_QUOTAS)[number];

/** What VolumeService needs: the check, inside its insert's transaction. */
export interface VolumeQuotaCheck {
  checkVolumeQuota(c: CatalogQueries, projectId: string, adding: { volumes: number; gigabytes: number }): Promise<void>;
}

export class QuotaService implements VolumeQuotaCheck {
  private readonly catalog: Catalog;
  private readonly defaultSet: QuotaSet;

  constructor(catalog: Catalog, defaults: QuotaSet) {
    this.catalog = catalog;
    this.defaultSet = { ...defaults };
  }

  defaults(): QuotaSet {
    return { ...this.defaultSet };
  }

  async limits(projectId: string, c: CatalogQueries = this.catalog): Promise<QuotaSet> {
    const set = await c.volumes.quotaLimits(projectId);
    const out = this.defaults();
    for (const r of SETTABLE_QUOTAS) if (set[r] !== undefined) out[r] = set[r];
    return out;
  }

  async usage(projectId: string): Promise<Record<QuotaResource, QuotaUsage>> {
    const [limits, volumes, backups] = await Promise.all([this.limits(projectId), this.catalog.volumes.usage(projectId), this.catalog.backups.usage(projectId)]);
    const u = (inUse: number, limit: number): QuotaUsage => ({ inUse, limit, reserved: 0 });
    return {
      volumes: u(volumes.volumes, limits.volumes),
      gigabytes: u(volumes.gigabytes, limits.gigabytes),
      backups: u(backups.backups, limits.backups),
      backup_gigabytes: u(backups.gigabytes, limits.backup_gigabytes),
      per_volume_gigabytes: u(0, limits.per_volume_gigabytes),
    };
  }

  /** Sets limits of a project (cloud admin); a limit below what is in use refuses only what comes next. */
  async setLimits(projectId: string, values: Partial<Record<SettableQuota, number>>): Promise<QuotaSet> {
    await this.catalog.transaction(async (c) => {
      await c.lockKey(ProjectLock.volumeQuota, projectId);
      for (const r of SETTABLE_QUOTAS) {
        const v = values[r];
        if (v !== undefined) await c.volumes.setQuotaLimit(projectId, r, v);
      }
    });
    return this.limits(projectId);
  }

  /** The project's limits go back to the defaults. */
  async resetLimits(projectId: string): Promise<void> {
    await this.catalog.volumes.deleteQuotaLimits(projectId);
  }

  async checkVolumeQuota(c: CatalogQueries, projectId: string, adding: { volumes: number; gigabytes: number }): Promise<void> {
    // Usage and the insert after it, as one step across processes.
    await c.lockKey(ProjectLock.volumeQuota, projectId);
    const limit = await this.limits(projectId, c);
    if (limit.volumes < 0 && limit.gigabytes < 0) return;
    const used = await c.volumes.usage(projectId);
    // Cinder's VolumeLimitExceeded and VolumeSizeExceedsAvailableQuota (both 413 overLimit).
    if (limit.volumes >= 0 && used.volumes + adding.volumes > limit.volumes) {
      throw new AppError(ErrorCode.QuotaVolumesExceeded, `VolumeLimitExceeded: Maximum number of volumes allowed (${limit.volumes}) exceeded for quota 'volumes'.`);
    }
    if (limit.gigabytes >= 0 && used.gigabytes + adding.gigabytes > limit.gigabytes) {
      throw new AppError(ErrorCode.QuotaVolumeGigabytesExceeded, `VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. Requested ${adding.gigabytes}G, quota is ${limit.gigabytes}G and ${used.gigabytes}G has been consumed.`);
    }
  }
}
