/** Catalog statements for volumes and snapshots. */
import type { Snapshot, SnapshotStatus, Volume, VolumeFormat, VolumeStatus } from '../domain/model.ts';
import type { SqlExecutor } from './sql.ts';
import { LIMIT_OFFSET } from './paging.ts';

interface VolumeRow { id: string; project_id: string; name: string | null; description: string | null; size_gb: number; size_bytes: number; path: string; adopted: number; file_id: string | null; format: VolumeFormat; qmp_socket: string | null; qmp_node: string | null; host: string | null; status: VolumeStatus; bootable: number; availability_zone: string; metadata: string; created_at: number; updated_at: number }
interface SnapshotRow { id: string; project_id: string; volume_id: string; name: string | null; description: string | null; size_gb: number; path: string; format: VolumeFormat; status: SnapshotStatus; created_at: number; updated_at: number }

const toVolume = (r: VolumeRow): Volume => ({
  id: r.id, projectId: r.project_id, name: r.name, description: r.description, sizeGb: Number(r.size_gb), sizeBytes: Number(r.size_bytes), path: r.path,
  adopted: !!r.adopted, fileId: r.file_id ?? null, format: r.format ?? 'raw', qmp: r.qmp_socket && r.qmp_node ? { socket: r.qmp_socket, node: r.qmp_node } : null, host: r.host ?? null, status: r.status, bootable: !!r.bootable, availabilityZone: r.availability_zone, metadata: JSON.parse(r.metadata) as Record<string, string>,
  createdAt: Number(r.created_at), updatedAt: Number(r.updated_at),
});
const toSnapshot = (r: SnapshotRow): Snapshot => ({
  id: r.id, projectId: r.project_id, volumeId: r.volume_id, name: r.name, description: r.description, sizeGb: Number(r.size_gb), path: r.path, format: r.format ?? 'raw', status: r.status,
  createdAt: Number(r.created_at), updatedAt: Number(r.updated_at),
});

export class VolumeQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertVolume(v: Volume): Promise<void> {
    await this.db.run(
      'INSERT INTO volumes (id, project_id, name, description, size_gb, size_bytes, path, adopted, file_id, format, qmp_socket, qmp_node, host, status, bootable, availability_zone, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [v.id, v.projectId, v.name, v.description, v.sizeGb, v.sizeBytes, v.path, v.adopted ? 1 : 0, v.fileId, v.format, v.qmp?.socket ?? null, v.qmp?.node ?? null, v.host, v.status, v.bootable ? 1 : 0, v.availabilityZone, JSON.stringify(v.metadata), v.createdAt, v.updatedAt],
    );
  }

  async getVolume(projectId: string, id: string): Promise<Volume | undefined> {
    const r = await this.db.get<VolumeRow>('SELECT * FROM volumes WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toVolume(r);
  }

  /** Any project's volume: for the job runner, which acts on behalf of the job's project. */
  async getVolumeById(id: string): Promise<Volume | undefined> {
    const r = await this.db.get<VolumeRow>('SELECT * FROM volumes WHERE id = ?', [id]);
    return r && toVolume(r);
  }

  async listVolumes(projectId: string, opts: { name?: string | undefined; status?: string | undefined; limit: number; offset: number }): Promise<Volume[]> {
    const where = ['project_id = ?'];
    const params: (string | number)[] = [projectId];
    if (opts.name !== undefined) (where.push('name = ?'), params.push(opts.name));
    if (opts.status !== undefined) (where.push('status = ?'), params.push(opts.status));
    params.push(opts.limit, opts.offset);
    return (await this.db.all<VolumeRow>(`SELECT * FROM volumes WHERE ${where.join(' AND ')} ORDER BY created_at DESC, id ${LIMIT_OFFSET}`, params)).map(toVolume);
  }

  /** The volume at `path` on `host` (null: the control plane's own), if any. */
  async findVolumeByPath(path: string, host: string | null = null): Promise<Volume | undefined> {
    const r = host === null
      ? await this.db.get<VolumeRow>('SELECT * FROM volumes WHERE path = ? AND host IS NULL', [path])
      : await this.db.get<VolumeRow>('SELECT * FROM volumes WHERE path = ? AND host = ?', [path, host]);
    return r && toVolume(r);
  }

  /** What a project's volumes count against its quotas: how many, and their gigabytes (created and adopted alike). */
  async usage(projectId: string): Promise<{ volumes: number; gigabytes: number }> {
    const r = await this.db.get<{ n: number; gb: number | null }>('SELECT COUNT(*) AS n, SUM(size_gb) AS gb FROM volumes WHERE project_id = ?', [projectId]);
    return { volumes: Number(r!.n), gigabytes: Number(r!.gb ?? 0) };
  }

  /** The quota limits the cloud admin set for a project (resources without a row have the default). */
  async quotaLimits(projectId: string): Promise<Record<string, number>> {
    const rows = await this.db.all<{ resource: string; hard_limit: number }>('SELECT resource, hard_limit FROM project_quotas WHERE project_id = ?', [projectId]);
    return Object.fromEntries(rows.map((r) => [r.resource, Number(r.hard_limit)]));
  }

  async setQuotaLimit(projectId: string, resource: string, limit: number): Promise<void> {
    await this.db.run('INSERT INTO project_quotas (project_id, resource, hard_limit) VALUES (?, ?, ?) ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = excluded.hard_limit', [projectId, resource, limit]);
  }

  /** Back to the defaults for every resource. */
  async deleteQuotaLimits(projectId: string): Promise<void> {
    await this.db.run('DELETE FROM project_quotas WHERE project_id = ?', [projectId]);
  }

  async countVolumes(projectId: string): Promise<number> {
    return Number((await this.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM volumes WHERE project_id = ?', [projectId]))!.n);
  }

  /** Compare-and-set: moves the volume from one of `from` to `to`; false when it was in none of them. */
  async transitionVolume(id: string, from: readonly VolumeStatus[], to: VolumeStatus, nowMs: number): Promise<boolean> {
    const marks = from.map(() => '?').join(', ');
    return (await this.db.run(`UPDATE volumes SET status = ?, updated_at = ? WHERE id = ? AND status IN (${marks})`, [to, nowMs, id, ...from])).changes === 1;
  }

  async deleteVolume(id: string): Promise<void> {
    await this.db.run('DELETE FROM volumes WHERE id = ?', [id]);
  }

  async insertSnapshot(s: Snapshot): Promise<void> {
    await this.db.run(
      'INSERT INTO snapshots (id, project_id, volume_id, name, description, size_gb, path, format, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [s.id, s.projectId, s.volumeId, s.name, s.description, s.sizeGb, s.path, s.format, s.status, s.createdAt, s.updatedAt],
    );
  }

  async getSnapshot(projectId: string, id: string): Promise<Snapshot | undefined> {
    const r = await this.db.get<SnapshotRow>('SELECT * FROM snapshots WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toSnapshot(r);
  }

  async listSnapshots(projectId: string, opts: { volumeId?: string | undefined; limit: number; offset: number }): Promise<Snapshot[]> {
    const where = ['project_id = ?'];
    const params: (string | number)[] = [projectId];
    if (opts.volumeId !== undefined) (where.push('volume_id = ?'), params.push(opts.volumeId));
    params.push(opts.limit, opts.offset);
    return (await this.db.all<SnapshotRow>(`SELECT * FROM snapshots WHERE ${where.join(' AND ')} ORDER BY created_at DESC, id ${LIMIT_OFFSET}`, params)).map(toSnapshot);
  }

  async countSnapshotsOfVolume(volumeId: string): Promise<number> {
    return Number((await this.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM snapshots WHERE volume_id = ?', [volumeId]))!.n);
  }

  async transitionSnapshot(id: string, from: readonly SnapshotStatus[], to: SnapshotStatus, nowMs: number): Promise<boolean> {
    const marks = from.map(() => '?').join(', ');
    return (await this.db.run(`UPDATE snapshots SET status = ?, updated_at = ? WHERE id = ? AND status IN (${marks})`, [to, nowMs, id, ...from])).changes === 1;
  }

  /** The file the host made for a snapshot (set once, while it is `creating`). */
  async setSnapshotPath(id: string, path: string): Promise<void> {
    await this.db.run("UPDATE snapshots SET path = ? WHERE id = ? AND status = 'creating'", [path, id]);
  }

  async deleteSnapshot(id: string): Promise<void> {
    await this.db.run('DELETE FROM snapshots WHERE id = ?', [id]);
  }
}
