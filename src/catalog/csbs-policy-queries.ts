/** Catalog statements for CSBS policies and their servers. */
import type { CsbsPolicy, CsbsPolicyResource, CsbsRetention } from '../domain/csbs-policy.ts';
import { afterMarker, LIMIT_OFFSET } from './paging.ts';
import type { SqlExecutor, SqlValue } from './sql.ts';

interface Row {
  id: string; project_id: string; name: string; description: string; status: 'suspended'; parameters: string; tags: string; operation_id: string; operation_name: string;
  operation_description: string; enabled: number; retention: string; pattern: string; trigger_id: string; trigger_start: number; schedule_anchor: number; next_run_at: number | null;
  created_at: number; updated_at: number;
}
const toPolicy = (r: Row): CsbsPolicy => ({
  id: r.id, projectId: r.project_id, name: r.name, description: r.description, status: r.status, parameters: JSON.parse(r.parameters) as Record<string, unknown>,
  tags: JSON.parse(r.tags) as CsbsPolicy['tags'], operationId: r.operation_id, operationName: r.operation_name, operationDescription: r.operation_description, enabled: !!r.enabled,
  retention: JSON.parse(r.retention) as CsbsRetention, pattern: r.pattern, triggerId: r.trigger_id, triggerStart: Number(r.trigger_start), scheduleAnchor: Number(r.schedule_anchor),
  nextRunAt: r.next_run_at === null ? null : Number(r.next_run_at), createdAt: Number(r.created_at), updatedAt: Number(r.updated_at),
});

const COLS = 'id, project_id, name, description, status, parameters, tags, operation_id, operation_name, operation_description, enabled, retention, pattern, trigger_id, trigger_start, schedule_anchor, next_run_at, created_at, updated_at';
const values = (p: CsbsPolicy): SqlValue[] => [p.id, p.projectId, p.name, p.description, p.status, JSON.stringify(p.parameters), JSON.stringify(p.tags), p.operationId, p.operationName, p.operationDescription, p.enabled ? 1 : 0, JSON.stringify(p.retention), p.pattern, p.triggerId, p.triggerStart, p.scheduleAnchor, p.nextRunAt, p.createdAt, p.updatedAt];

export class CsbsPolicyQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertPolicy(p: CsbsPolicy): Promise<void> {
    await this.db.run(`INSERT INTO csbs_policies (${COLS}) VALUES (${COLS.split(',').map(() => '?').join(', ')})`, values(p));
  }

  /**
   * Writes a policy's fields, except next_run_at, which only the scheduler moves (compare-and-set)
   * and resetSchedule clears: writing back a value read earlier could undo a claimed slot.
   */
  async updatePolicy(p: CsbsPolicy): Promise<void> {
    const cols = COLS.split(', ');
    const keep = cols.map((c, i) => [c, i] as const).filter(([c]) => c !== 'id' && c !== 'next_run_at');
    const v = values(p);
    await this.db.run(`UPDATE csbs_policies SET ${keep.map(([c]) => `${c} = ?`).join(', ')} WHERE id = ?`, [...keep.map(([, i]) => v[i]!), p.id]);
  }

  async resetSchedule(id: string): Promise<void> {
    await this.db.run('UPDATE csbs_policies SET next_run_at = NULL WHERE id = ?', [id]);
  }

  async getPolicy(projectId: string, id: string): Promise<CsbsPolicy | undefined> {
    const r = await this.db.get<Row>('SELECT * FROM csbs_policies WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toPolicy(r);
  }

  async getPolicyById(id: string): Promise<CsbsPolicy | undefined> {
    const r = await this.db.get<Row>('SELECT * FROM csbs_policies WHERE id = ?', [id]);
    return r && toPolicy(r);
  }

  async findByName(projectId: string, name: string): Promise<CsbsPolicy | undefined> {
    const r = await this.db.get<Row>('SELECT * FROM csbs_policies WHERE project_id = ? AND name = ?', [projectId, name]);
    return r && toPolicy(r);
  }

  async listPolicies(projectId: string, f: { name?: string | undefined; sortDir: 'asc' | 'desc'; sortKey: 'created_at' | 'name' | 'id' | 'updated_at'; limit: number; offset: number; marker?: string | undefined }): Promise<CsbsPolicy[]> {
    const params: SqlValue[] = [projectId];
    let where = 'project_id = ?';
    if (f.name !== undefined) (where += ' AND name = ?', params.push(f.name));
    if (f.marker !== undefined) {
      const after = await afterMarker(this.db, 'csbs_policies', f.sortKey, f.sortDir, projectId, f.marker);
      where += ` AND ${after.sql}`;
      params.push(...after.params);
    }
    const dir = f.sortDir === 'asc' ? 'ASC' : 'DESC';
    return (await this.db.all<Row>(`SELECT * FROM csbs_policies WHERE ${where} ORDER BY ${f.sortKey} ${dir}, id ${dir} ${LIMIT_OFFSET}`, [...params, f.limit, f.offset])).map(toPolicy);
  }

  async setTags(id: string, tags: { key: string; value: string }[]): Promise<void> {
    await this.db.run('UPDATE csbs_policies SET tags = ? WHERE id = ?', [JSON.stringify(tags), id]);
  }

  async countPolicies(projectId: string): Promise<number> {
    return Number((await this.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM csbs_policies WHERE project_id = ?', [projectId]))!.n);
  }

  async deletePolicy(id: string): Promise<void> {
    await this.db.run('DELETE FROM csbs_policy_resources WHERE policy_id = ?', [id]);
    await this.db.run('DELETE FROM csbs_policies WHERE id = ?', [id]);
  }

  async resources(policyId: string): Promise<CsbsPolicyResource[]> {
    return (await this.db.all<{ server_id: string; name: string }>('SELECT server_id, name FROM csbs_policy_resources WHERE policy_id = ? ORDER BY position', [policyId])).map((r) => ({ serverId: r.server_id, name: r.name }));
  }

  async policyOfServer(serverId: string): Promise<string | undefined> {
    return (await this.db.get<{ policy_id: string }>('SELECT policy_id FROM csbs_policy_resources WHERE server_id = ?', [serverId]))?.policy_id;
  }

  async setResources(policyId: string, projectId: string, list: CsbsPolicyResource[]): Promise<void> {
    await this.db.run('DELETE FROM csbs_policy_resources WHERE policy_id = ?', [policyId]);
    for (const [i, r] of list.entries()) await this.db.run('INSERT INTO csbs_policy_resources (server_id, policy_id, project_id, name, position) VALUES (?, ?, ?, ?, ?)', [r.serverId, policyId, projectId, r.name, i]);
  }

  async unscheduled(limit: number): Promise<CsbsPolicy[]> {
    return (await this.db.all<Row>('SELECT * FROM csbs_policies WHERE enabled = 1 AND next_run_at IS NULL LIMIT ?', [limit])).map(toPolicy);
  }

  async due(nowMs: number, limit: number): Promise<CsbsPolicy[]> {
    return (await this.db.all<Row>('SELECT * FROM csbs_policies WHERE enabled = 1 AND next_run_at <= ? ORDER BY next_run_at LIMIT ?', [nowMs, limit])).map(toPolicy);
  }

  async claimSchedule(id: string, expected: number | null, next: number): Promise<boolean> {
    const r = expected === null
      ? await this.db.run('UPDATE csbs_policies SET next_run_at = ? WHERE id = ? AND enabled = 1 AND next_run_at IS NULL', [next, id])
      : await this.db.run('UPDATE csbs_policies SET next_run_at = ? WHERE id = ? AND enabled = 1 AND next_run_at = ?', [next, id, expected]);
    return r.changes === 1;
  }
}
