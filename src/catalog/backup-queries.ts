/** Catalog statements for backups. */
import { backupEvent, type BackupEvent } from '../domain/backup-status.ts';
import type { Backup, BackupOrigin, BackupStatus, Tag } from '../domain/model.ts';
import { afterMarker, LIMIT_OFFSET } from './paging.ts';
import type { SqlExecutor, SqlValue } from './sql.ts';

interface BackupRow {
  id: string; project_id: string; volume_id: string; snapshot_id: string | null; name: string | null; description: string | null; status: BackupStatus;
  full_backup: number; parent_id: string | null; size_gb: number; size_bytes: number; stored_bytes: number; new_bytes: number; object_count: number;
  origin: BackupOrigin; policy_id: string | null; tags: string; fail_reason: string | null; availability_zone: string;
  created_at: number; updated_at: number; data_timestamp: number; checkpoint_item_id: string | null;
}

const toBackup = (r: BackupRow): Backup => ({
  id: r.id, projectId: r.project_id, volumeId: r.volume_id, snapshotId: r.snapshot_id, name: r.name, description: r.description, status: r.status,
  fullBackup: !!r.full_backup, parentId: r.parent_id, sizeGb: Number(r.size_gb), sizeBytes: Number(r.size_bytes), storedBytes: Number(r.stored_bytes),
  newBytes: Number(r.new_bytes), objectCount: Number(r.object_count), origin: r.origin, policyId: r.policy_id, tags: JSON.parse(r.tags) as Tag[],
  failReason: r.fail_reason, availabilityZone: r.availability_zone, createdAt: Number(r.created_at), updatedAt: Number(r.updated_at), dataTimestamp: Number(r.data_timestamp),
  checkpointItemId: r.checkpoint_item_id ?? null,
});

export const BACKUP_SORT_KEYS = { created_at: 'created_at', updated_at: 'updated_at', name: 'name', status: 'status', size: 'size_gb', id: 'id' } as const;
export type BackupSortKey = keyof typeof BACKUP_SORT_KEYS;

export interface BackupFilter {
  name?: string | undefined;
  status?: string | undefined;
  volumeId?: string | undefined;
  /** Substring matches (Cinder's name~, status~, volume_id~). */
  nameLike?: string | undefined;
  statusLike?: string | undefined;
  volumeIdLike?: string | undefined;
  /** Haven's own filter (the console's): backups a VBS policy made. */
  policyId?: string | undefined;
}

export interface BackupPage {
  sortKey: BackupSortKey;
  sortDir: 'asc' | 'desc';
  limit: number;
  offset: number;
  /** Start after this backup id (in the sort order). */
  marker?: string | undefined;
}

function likeEscape(s: string): string {
  return `%${s.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

/** What a finished backup records in its row (completeBackup). */
export interface BackupCompletion {
  sizeBytes: number;
  storedBytes: number;
  newBytes: number;
  objectCount: number;
  parentId: string | null;
  dataTimestamp: number;
  volumeDigest: string | null;
}

export class BackupQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertBackup(b: Backup): Promise<void> {
    await this.db.run(
      `INSERT INTO backups (id, project_id, volume_id, snapshot_id, name, description, status, full_backup, parent_id, size_gb, size_bytes, stored_bytes, new_bytes,
        object_count, origin, policy_id, tags, fail_reason, availability_zone, created_at, updated_at, data_timestamp, checkpoint_item_id)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [b.id, b.projectId, b.volumeId, b.snapshotId, b.name, b.description, b.status, b.fullBackup ? 1 : 0, b.parentId, b.sizeGb, b.sizeBytes, b.storedBytes, b.newBytes,
        b.objectCount, b.origin, b.policyId, JSON.stringify(b.tags), b.failReason, b.availabilityZone, b.createdAt, b.updatedAt, b.dataTimestamp, b.checkpointItemId],
    );
  }

  async getBackup(projectId: string, id: string): Promise<Backup | undefined> {
    const r = await this.db.get<BackupRow>('SELECT * FROM backups WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toBackup(r);
  }

  async getBackupById(id: string): Promise<Backup | undefined> {
    const r = await this.db.get<BackupRow>('SELECT * FROM backups WHERE id = ?', [id]);
    return r && toBackup(r);
  }

  private filterSql(projectId: string, f: BackupFilter): { where: string; params: SqlValue[] } {
    const where = ['project_id = ?'];
    const params: SqlValue[] = [projectId];
    if (f.name !== undefined) (where.push('name = ?'), params.push(f.name));
    if (f.status !== undefined) (where.push('status = ?'), params.push(f.status));
    if (f.volumeId !== undefined) (where.push('volume_id = ?'), params.push(f.volumeId));
    if (f.nameLike !== undefined) (where.push("name LIKE ? ESCAPE '\\'"), params.push(likeEscape(f.nameLike)));
    if (f.statusLike !== undefined) (where.push("status LIKE ? ESCAPE '\\'"), params.push(likeEscape(f.statusLike)));
    if (f.volumeIdLike !== undefined) (where.push("volume_id LIKE ? ESCAPE '\\'"), params.push(likeEscape(f.volumeIdLike)));
    if (f.policyId !== undefined) (where.push('policy_id = ?'), params.push(f.policyId));
    return { where: where.join(' AND '), params };
  }

  /**
   * One page of a project's backups. With a marker, the page starts after the marker's position
   * in the sort order (id breaks ties, so the order is total).
   */
  async listBackups(projectId: string, f: BackupFilter, page: BackupPage): Promise<Backup[]> {
    return (await this.listRows<BackupRow>('*', projectId, f, page)).map(toBackup);
  }

  /** The summary list needs only ids and names: reading two columns is several times cheaper. */
  async listBackupSummaries(projectId: string, f: BackupFilter, page: BackupPage): Promise<{ id: string; name: string | null }[]> {
    return this.listRows<{ id: string; name: string | null }>('id, name', projectId, f, page);
  }

  private async listRows<R>(columns: string, projectId: string, f: BackupFilter, page: BackupPage): Promise<R[]> {
    const { where, params } = this.filterSql(projectId, f);
    const col = BACKUP_SORT_KEYS[page.sortKey];
    const dir = page.sortDir === 'asc' ? 'ASC' : 'DESC';
    const cmp = page.sortDir === 'asc' ? '>' : '<';
    let sql = `SELECT ${columns} FROM backups WHERE ${where}`;
    if (page.marker !== undefined) {
      const after = await afterMarker(this.db, 'backups', col, page.sortDir, projectId, page.marker);
      sql += ` AND ${after.sql}`;
      params.push(...after.params);
    }
    sql += ` ORDER BY ${col} ${dir}, id ${dir} ${LIMIT_OFFSET}`;
    params.push(page.limit, page.offset);
    return this.db.all<R>(sql, params);
  }

  async countBackups(projectId: string, f: BackupFilter): Promise<number> {
    const { where, params } = this.filterSql(projectId, f);
    return Number((await this.db.get<{ n: number }>(`SELECT COUNT(*) AS n FROM backups WHERE ${where}`, params))!.n);
  }

  /** Backups counted against the quota: count and gigabytes of the project's backups. */
  /**
   * For each volume that exists and has a backup that succeeded: when the newest such backup was
   * taken (ms), and the policy the volume is in now, for the alerting metrics. A backup being restored from is still one that succeeded.
   */
  async lastSuccessByVolume(): Promise<{ projectId: string; volumeId: string; policyId: string | null; at: number }[]> {
    const rows = await this.db.all<{ project_id: string; volume_id: string; policy_id: string | null; at: number }>(
      `SELECT v.project_id, v.id AS volume_id, r.policy_id, MAX(b.created_at) AS at FROM volumes v JOIN backups b ON b.volume_id = v.id AND b.status IN ('available', 'restoring')
       LEFT JOIN policy_resources r ON r.volume_id = v.id GROUP BY v.project_id, v.id, r.policy_id`,
    );
    return rows.map((r) => ({ projectId: r.project_id, volumeId: r.volume_id, policyId: r.policy_id, at: Number(r.at) }));
  }

  /**
   * Every project's backups that hold data one can restore (available, or being restored from): how
   * many, and the sums of their volume bytes, the bytes they added to the repository and the bytes
   * those took once compressed (and encrypted). The console's repository page derives its ratios.
   */
  async availableTotals(): Promise<{ count: number; sizeBytes: number; newBytes: number; storedBytes: number }> {
    const r = await this.db.get<{ n: number; size_b: number | null; new_b: number | null; stored_b: number | null }>(
      "SELECT COUNT(*) AS n, SUM(size_bytes) AS size_b, SUM(new_bytes) AS new_b, SUM(stored_bytes) AS stored_b FROM backups WHERE status IN ('available', 'restoring')",
    );
    return { count: Number(r?.n ?? 0), sizeBytes: Number(r?.size_b ?? 0), newBytes: Number(r?.new_b ?? 0), storedBytes: Number(r?.stored_b ?? 0) };
  }

  /** Every backup's id, whatever its status (haven catalog rebuild compares them with the repository's). */
  async allIds(): Promise<string[]> {
    return (await this.db.all<{ id: string }>('SELECT id FROM backups')).map((r) => r.id);
  }

  async usage(projectId: string): Promise<{ backups: number; gigabytes: number }> {
    const r = await this.db.get<{ n: number; gb: number | null }>('SELECT COUNT(*) AS n, SUM(size_gb) AS gb FROM backups WHERE project_id = ?', [projectId]);
    return { backups: Number(r!.n), gigabytes: Number(r!.gb ?? 0) };
  }

  /** A policy's automatic backups of one volume (retention's input). */
  async automaticBackups(volumeId: string, policyId: string): Promise<{ id: string; createdAt: number; status: BackupStatus }[]> {
    const rows = await this.db.all<{ id: string; created_at: number; status: BackupStatus }>("SELECT id, created_at, status FROM backups WHERE volume_id = ? AND policy_id = ? AND origin = 'policy'", [volumeId, policyId]);
    return rows.map((r) => ({ id: r.id, createdAt: Number(r.created_at), status: r.status }));
  }

  /** Whether a backup being created reads this snapshot. */
  async isSnapshotBeingBackedUp(snapshotId: string): Promise<boolean> {
    return !!(await this.db.get("SELECT id FROM backups WHERE snapshot_id = ? AND status = 'creating'", [snapshotId]));
  }

  /** Bytes stored for a project's backups of one origin (CSBS capacity). */
  async storedBytesOf(projectId: string, origin: BackupOrigin): Promise<number> {
    return Number((await this.db.get<{ b: number | null }>('SELECT SUM(stored_bytes) AS b FROM backups WHERE project_id = ? AND origin = ?', [projectId, origin]))?.b ?? 0);
  }

  async latestAvailableOfVolume(volumeId: string): Promise<Backup | undefined> {
    const r = await this.db.get<BackupRow>("SELECT * FROM backups WHERE volume_id = ? AND status IN ('available', 'restoring') ORDER BY created_at DESC, id DESC LIMIT 1", [volumeId]);
    return r && toBackup(r);
  }

  /** Ids of every project's backups in `status`, oldest first, at most `limit` (re-verifying error backups). */
  /** One available backup picked at random (scheduled sample restores), or undefined. */
  async randomAvailableId(): Promise<string | undefined> {
    return (await this.db.get<{ id: string }>("SELECT id FROM backups WHERE status = 'available' ORDER BY random() LIMIT 1"))?.id;
  }

  async idsInStatus(status: BackupStatus, limit: number): Promise<string[]> {
    return (await this.db.all<{ id: string }>(`SELECT id FROM backups WHERE status = ? ORDER BY created_at, id LIMIT ${Math.max(0, Math.trunc(limit))}`, [status])).map((r) => r.id);
  }

  async countInStatus(volumeId: string, statuses: readonly BackupStatus[]): Promise<number> {
    const marks = statuses.map(() => '?').join(', ');
    return Number((await this.db.get<{ n: number }>(`SELECT COUNT(*) AS n FROM backups WHERE volume_id = ? AND status IN (${marks})`, [volumeId, ...statuses]))!.n);
  }


  /**
   * Applies a state-machine event (domain/backup-status.ts) by compare-and-set: from the statuses
   * the event may leave (narrowed by `onlyFrom`) to the one it enters. False when the backup was
   * in none of them. `failReason`: set (a string), cleared (null), or left as it is (absent).
   */
  async applyBackupEvent(id: string, event: BackupEvent, nowMs: number, opts: { onlyFrom?: readonly BackupStatus[]; failReason?: string | null } = {}): Promise<boolean> {
    const { from, to } = backupEvent(event, opts.onlyFrom);
    if (!from.length) return false;
    return this.compareAndSet(id, from, to, nowMs, opts.failReason);
  }

  private async compareAndSet(id: string, from: readonly BackupStatus[], to: BackupStatus, nowMs: number, failReason?: string | null): Promise<boolean> {
    const marks = from.map(() => '?').join(', ');
    const setFail = failReason === undefined ? '' : ', fail_reason = ?';
    const params: SqlValue[] = [to, nowMs];
    if (failReason !== undefined) params.push(failReason);
    return (await this.db.run(`UPDATE backups SET status = ?, updated_at = ?${setFail} WHERE id = ? AND status IN (${marks})`, [...params, id, ...from])).changes === 1;
  }

  /**
   * Records a finished backup's results and makes it available (creating -> available). The volume
   * digest is its manifest's (null for a manifest from before it, found again by recovery).
   */
  async completeBackup(id: string, r: BackupCompletion, nowMs: number): Promise<boolean> {
    return (
      await this.db.run(
        "UPDATE backups SET status = 'available', size_bytes = ?, stored_bytes = ?, new_bytes = ?, object_count = ?, parent_id = ?, data_timestamp = ?, volume_digest = ?, updated_at = ? WHERE id = ? AND status = 'creating'",
        [r.sizeBytes, r.storedBytes, r.newBytes, r.objectCount, r.parentId, r.dataTimestamp, r.volumeDigest, nowMs, id],
      )
    ).changes === 1;
  }

  async backupsOfItem(checkpointItemId: string): Promise<Backup[]> {
    return (await this.db.all<BackupRow>('SELECT * FROM backups WHERE checkpoint_item_id = ? ORDER BY created_at, id', [checkpointItemId])).map(toBackup);
  }

  async deleteBackupRow(id: string): Promise<void> {
    await this.db.run('DELETE FROM backups WHERE id = ?', [id]);
  }
}
