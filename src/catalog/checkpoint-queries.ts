/** Catalog statements for CSBS checkpoints, checkpoint items and restores. */
import type { Checkpoint, CheckpointItem, CheckpointItemStatus, CheckpointStatus } from '../domain/checkpoint.ts';
import { afterMarker, LIMIT_OFFSET } from './paging.ts';
import type { SqlExecutor, SqlValue } from './sql.ts';

interface CheckpointRow { id: string; project_id: string; plan_id: string; plan_name: string; status: CheckpointStatus; created_by: Checkpoint['createdBy']; created_at: number; updated_at: number }
interface ItemRow {
  id: string; checkpoint_id: string; project_id: string; server_id: string; server_name: string; policy_id: string | null; name: string; description: string; status: CheckpointItemStatus;
  incremental: number; auto_trigger: number; tags: string; fail_op: string; fail_reason: string; availability_zone: string; created_at: number; updated_at: number; finished_at: number | null;
}

const toCheckpoint = (r: CheckpointRow): Checkpoint => ({ id: r.id, projectId: r.project_id, planId: r.plan_id, planName: r.plan_name, status: r.status, createdBy: r.created_by, createdAt: Number(r.created_at), updatedAt: Number(r.updated_at) });
const toItem = (r: ItemRow): CheckpointItem => ({
  id: r.id, checkpointId: r.checkpoint_id, projectId: r.project_id, serverId: r.server_id, serverName: r.server_name, policyId: r.policy_id, name: r.name, description: r.description,
  status: r.status, incremental: !!r.incremental, autoTrigger: !!r.auto_trigger, tags: JSON.parse(r.tags) as CheckpointItem['tags'], failOp: r.fail_op, failReason: r.fail_reason,
  availabilityZone: r.availability_zone, createdAt: Number(r.created_at), updatedAt: Number(r.updated_at), finishedAt: r.finished_at === null ? null : Number(r.finished_at),
});

export const ITEM_SORT_KEYS = { created_at: 'created_at', updated_at: 'updated_at', name: 'name', status: 'status', protected_at: 'created_at', id: 'id' } as const;

export interface ItemFilter {
  checkpointId?: string | undefined;
  serverId?: string | undefined;
  status?: string | undefined;
  nameLike?: string | undefined;
  serverNameLike?: string | undefined;
  policyId?: string | undefined;
  az?: string | undefined;
  createdFrom?: number | undefined;
  createdTo?: number | undefined;
}

const like = (s: string) => `%${s.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

export class CheckpointQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertCheckpoint(c: Checkpoint): Promise<void> {
    await this.db.run('INSERT INTO checkpoints (id, project_id, plan_id, plan_name, status, created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)', [c.id, c.projectId, c.planId, c.planName, c.status, c.createdBy, c.createdAt, c.updatedAt]);
  }

  async getCheckpoint(projectId: string, id: string): Promise<Checkpoint | undefined> {
    const r = await this.db.get<CheckpointRow>('SELECT * FROM checkpoints WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toCheckpoint(r);
  }

  async setCheckpointStatus(id: string, status: CheckpointStatus, nowMs: number): Promise<void> {
    await this.db.run('UPDATE checkpoints SET status = ?, updated_at = ? WHERE id = ?', [status, nowMs, id]);
  }

  async deleteCheckpoint(id: string): Promise<void> {
    await this.db.run('DELETE FROM checkpoints WHERE id = ?', [id]);
  }

  async insertItem(i: CheckpointItem): Promise<void> {
    await this.db.run(
      `INSERT INTO checkpoint_items (id, checkpoint_id, project_id, server_id, server_name, policy_id, name, description, status, incremental, auto_trigger, tags, fail_op, fail_reason, availability_zone, created_at, updated_at, finished_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [i.id, i.checkpointId, i.projectId, i.serverId, i.serverName, i.policyId, i.name, i.description, i.status, i.incremental ? 1 : 0, i.autoTrigger ? 1 : 0, JSON.stringify(i.tags), i.failOp, i.failReason, i.availabilityZone, i.createdAt, i.updatedAt, i.finishedAt],
    );
  }

  async getItem(projectId: string, id: string): Promise<CheckpointItem | undefined> {
    const r = await this.db.get<ItemRow>('SELECT * FROM checkpoint_items WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toItem(r);
  }

  async getItemById(id: string): Promise<CheckpointItem | undefined> {
    const r = await this.db.get<ItemRow>('SELECT * FROM checkpoint_items WHERE id = ?', [id]);
    return r && toItem(r);
  }

  async itemsOfCheckpoint(checkpointId: string): Promise<CheckpointItem[]> {
    return (await this.db.all<ItemRow>('SELECT * FROM checkpoint_items WHERE checkpoint_id = ? ORDER BY created_at, id', [checkpointId])).map(toItem);
  }

  private where(projectId: string, f: ItemFilter): { sql: string; params: SqlValue[] } {
    const w = ['project_id = ?'];
    const p: SqlValue[] = [projectId];
    if (f.checkpointId !== undefined) (w.push('checkpoint_id = ?'), p.push(f.checkpointId));
    if (f.serverId !== undefined) (w.push('server_id = ?'), p.push(f.serverId));
    if (f.status !== undefined) (w.push('status = ?'), p.push(f.status));
    if (f.policyId !== undefined) (w.push('policy_id = ?'), p.push(f.policyId));
    if (f.az !== undefined) (w.push('availability_zone = ?'), p.push(f.az));
    if (f.nameLike !== undefined) (w.push("name LIKE ? ESCAPE '\\'"), p.push(like(f.nameLike)));
    if (f.serverNameLike !== undefined) (w.push("server_name LIKE ? ESCAPE '\\'"), p.push(like(f.serverNameLike)));
    if (f.createdFrom !== undefined) (w.push('created_at >= ?'), p.push(f.createdFrom));
    if (f.createdTo !== undefined) (w.push('created_at <= ?'), p.push(f.createdTo));
    return { sql: w.join(' AND '), params: p };
  }

  async listItems(projectId: string, f: ItemFilter, page: { sortKey: keyof typeof ITEM_SORT_KEYS; sortDir: 'asc' | 'desc'; limit: number; offset: number; marker?: string | undefined }): Promise<CheckpointItem[]> {
    let { sql, params } = this.where(projectId, f);
    const col = ITEM_SORT_KEYS[page.sortKey];
    const dir = page.sortDir === 'asc' ? 'ASC' : 'DESC';
    if (page.marker !== undefined) {
      const after = await afterMarker(this.db, 'checkpoint_items', col, page.sortDir, projectId, page.marker);
      sql += ` AND ${after.sql}`;
      params = [...params, ...after.params];
    }
    return (await this.db.all<ItemRow>(`SELECT * FROM checkpoint_items WHERE ${sql} ORDER BY ${col} ${dir}, id ${dir} ${LIMIT_OFFSET}`, [...params, page.limit, page.offset])).map(toItem);
  }

  async countItems(projectId: string, f: ItemFilter): Promise<number> {
    const { sql, params } = this.where(projectId, f);
    return Number((await this.db.get<{ n: number }>(`SELECT COUNT(*) AS n FROM checkpoint_items WHERE ${sql}`, params))!.n);
  }

  /** Compare-and-set of an item's status, with optional failure details. */
  async transitionItem(id: string, from: readonly CheckpointItemStatus[], to: CheckpointItemStatus, nowMs: number, fail?: { op: string; reason: string } | null, finished = false): Promise<boolean> {
    const marks = from.map(() => '?').join(', ');
    const sets = ['status = ?', 'updated_at = ?'];
    const params: SqlValue[] = [to, nowMs];
    if (fail !== undefined) (sets.push('fail_op = ?', 'fail_reason = ?'), params.push(fail?.op ?? '', fail?.reason ?? ''));
    if (finished) (sets.push('finished_at = ?'), params.push(nowMs));
    return (await this.db.run(`UPDATE checkpoint_items SET ${sets.join(', ')} WHERE id = ? AND status IN (${marks})`, [...params, id, ...from])).changes === 1;
  }

  async setItemTags(id: string, tags: { key: string; value: string }[]): Promise<void> {
    await this.db.run('UPDATE checkpoint_items SET tags = ? WHERE id = ?', [JSON.stringify(tags), id]);
  }

  async deleteItem(id: string): Promise<void> {
    await this.db.run('DELETE FROM checkpoint_items WHERE id = ?', [id]);
  }

  /** Items of a server that are being backed up or restored. */
  async busyItemsOfServer(serverId: string): Promise<CheckpointItem[]> {
    return (await this.db.all<ItemRow>("SELECT * FROM checkpoint_items WHERE server_id = ? AND status IN ('waiting_protect', 'protecting', 'waiting_restore', 'restoring')", [serverId])).map(toItem);
  }

  async insertRestore(r: { id: string; projectId: string; checkpointId: string; itemId: string; serverId: string; parameters: unknown; status: string; createdAt: number }): Promise<void> {
    await this.db.run('INSERT INTO restores (id, project_id, checkpoint_id, checkpoint_item_id, server_id, parameters, status, fail_reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)', [r.id, r.projectId, r.checkpointId, r.itemId, r.serverId, JSON.stringify(r.parameters), r.status, r.createdAt, r.createdAt]);
  }

  async setRestoreStatus(id: string, status: string, failReason: string | null, nowMs: number): Promise<void> {
    await this.db.run('UPDATE restores SET status = ?, fail_reason = ?, updated_at = ? WHERE id = ?', [status, failReason, nowMs, id]);
  }
}
