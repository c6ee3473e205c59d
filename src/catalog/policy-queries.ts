/** Catalog statements for backup policies, their volumes, tags and tasks, and backup sharings. */
import type { Tag } from '../domain/model.ts';
import type { Policy, PolicyTask, PolicyWithCount, Sharing, TaskStatus, WeekDay } from '../domain/policy.ts';
import type { SqlExecutor, SqlValue } from './sql.ts';

interface PolicyRow {
  id: string; project_id: string; name: string; start_time: string; frequency: number | null; week_frequency: string | null; retention_num: number | null;
  retention_day: number | null; remain_first_backup_of_cur_month: string; status: 'ON' | 'OFF'; time_zone: string | null; schedule_anchor: number; next_run_at: number | null;
  created_at: number; updated_at: number; resource_count?: number;
}
interface TaskRow {
  id: string; policy_id: string; project_id: string; volume_id: string; backup_id: string | null; backup_name: string; job_id: string | null; status: TaskStatus;
  fail_reason: string | null; slot_at: number | null; created_at: number; finished_at: number | null; job_status: string | null; job_end: number | null; job_reason: string | null;
}
interface SharingRow { id: string; backup_id: string; from_project_id: string; to_project_id: string; created_at: number; updated_at: number }

const n = (v: number | null): number | null => (v === null ? null : Number(v));
const toPolicy = (r: PolicyRow): PolicyWithCount => ({
  id: r.id, projectId: r.project_id, name: r.name, startTime: r.start_time, frequency: n(r.frequency), weekFrequency: r.week_frequency ? (JSON.parse(r.week_frequency) as WeekDay[]) : null,
  retentionNum: n(r.retention_num), retentionDay: n(r.retention_day), remainFirstBackupOfCurMonth: r.remain_first_backup_of_cur_month === 'Y', status: r.status,
  timeZone: r.time_zone, scheduleAnchor: Number(r.schedule_anchor), nextRunAt: n(r.next_run_at), createdAt: Number(r.created_at), updatedAt: Number(r.updated_at), resourceCount: Number(r.resource_count ?? 0),
});

/** A task's status follows its job: queued WAITING, running RUNNING, then EXECUTE_SUCCESS or EXECUTE_FAIL. */
const JOB_TO_TASK: Record<string, TaskStatus> = { INIT: 'WAITING', RUNNING: 'RUNNING', SUCCESS: 'EXECUTE_SUCCESS', FAIL: 'EXECUTE_FAIL' };
const toTask = (r: TaskRow): PolicyTask => ({
  id: r.id, policyId: r.policy_id, projectId: r.project_id, volumeId: r.volume_id, backupId: r.backup_id, backupName: r.backup_name, jobId: r.job_id,
  status: r.job_status ? JOB_TO_TASK[r.job_status] ?? r.status : r.status, failReason: r.job_reason ?? r.fail_reason, slotAt: n(r.slot_at), createdAt: Number(r.created_at),
  finishedAt: n(r.job_end) ?? n(r.finished_at),
});
const toSharing = (r: SharingRow): Sharing => ({ id: r.id, backupId: r.backup_id, fromProjectId: r.from_project_id, toProjectId: r.to_project_id, createdAt: Number(r.created_at), updatedAt: Number(r.updated_at) });

const POLICY_SELECT = 'SELECT p.*, (SELECT COUNT(*) FROM policy_resources r WHERE r.policy_id = p.id) AS resource_count FROM policies p';
const TASK_SELECT = 'SELECT t.*, j.status AS job_status, j.end_time AS job_end, j.fail_reason AS job_reason FROM policy_tasks t LEFT JOIN jobs j ON j.id = t.job_id';

export class PolicyQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertPolicy(p: Policy): Promise<void> {
    await this.db.run(
      `INSERT INTO policies (id, project_id, name, start_time, frequency, week_frequency, retention_num, retention_day, remain_first_backup_of_cur_month, status, time_zone, schedule_anchor, next_run_at, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [p.id, p.projectId, p.name, p.startTime, p.frequency, p.weekFrequency ? JSON.stringify(p.weekFrequency) : null, p.retentionNum, p.retentionDay, p.remainFirstBackupOfCurMonth ? 'Y' : 'N', p.status, p.timeZone, p.scheduleAnchor, p.nextRunAt, p.createdAt, p.updatedAt],
    );
  }

  async updatePolicy(p: Policy): Promise<void> {
    await this.db.run(
      // next_run_at is moved only by the scheduler (compare-and-set) and cleared by resetSchedule.
      `UPDATE policies SET name = ?, start_time = ?, frequency = ?, week_frequency = ?, retention_num = ?, retention_day = ?, remain_first_backup_of_cur_month = ?, status = ?, time_zone = ?, schedule_anchor = ?, updated_at = ? WHERE id = ?`,
      [p.name, p.startTime, p.frequency, p.weekFrequency ? JSON.stringify(p.weekFrequency) : null, p.retentionNum, p.retentionDay, p.remainFirstBackupOfCurMonth ? 'Y' : 'N', p.status, p.timeZone, p.scheduleAnchor, p.updatedAt, p.id],
    );
  }

  /**
   * Each policy that is on and has volumes: when it was made and when its newest backup that
   * succeeded was taken (ms; null: none yet), for the alerting metrics.
   */
  async lastSuccessByPolicy(): Promise<{ projectId: string; policyId: string; createdAt: number; at: number | null }[]> {
    const rows = await this.db.all<{ project_id: string; id: string; created_at: number; at: number | null }>(
      `SELECT p.project_id, p.id, p.created_at, MAX(b.created_at) AS at FROM policies p LEFT JOIN backups b ON b.policy_id = p.id AND b.status IN ('available', 'restoring')
       WHERE p.status = 'ON' AND EXISTS (SELECT 1 FROM policy_resources r WHERE r.policy_id = p.id) GROUP BY p.project_id, p.id, p.created_at`,
    );
    return rows.map((r) => ({ projectId: r.project_id, policyId: r.id, createdAt: Number(r.created_at), at: r.at === null ? null : Number(r.at) }));
  }

  async getPolicy(projectId: string, id: string): Promise<PolicyWithCount | undefined> {
    const r = await this.db.get<PolicyRow>(`${POLICY_SELECT} WHERE p.id = ? AND p.project_id = ?`, [id, projectId]);
    return r && toPolicy(r);
  }

  async getPolicyById(id: string): Promise<PolicyWithCount | undefined> {
    const r = await this.db.get<PolicyRow>(`${POLICY_SELECT} WHERE p.id = ?`, [id]);
    return r && toPolicy(r);
  }

  async listPolicies(projectId: string): Promise<PolicyWithCount[]> {
    return (await this.db.all<PolicyRow>(`${POLICY_SELECT} WHERE p.project_id = ? ORDER BY p.created_at, p.id`, [projectId])).map(toPolicy);
  }

  /** All policies whose schedule is ON (the scheduler's input). */
  async listEnabledPolicies(): Promise<PolicyWithCount[]> {
    return (await this.db.all<PolicyRow>(`${POLICY_SELECT} WHERE p.status = 'ON'`)).map(toPolicy);
  }

  async resetSchedule(id: string): Promise<void> {
    await this.db.run('UPDATE policies SET next_run_at = NULL WHERE id = ?', [id]);
  }

  /** Enabled policies whose next slot has not been computed yet. */
  async unscheduledPolicies(limit: number): Promise<PolicyWithCount[]> {
    return (await this.db.all<PolicyRow>(`${POLICY_SELECT} WHERE p.status = 'ON' AND p.next_run_at IS NULL LIMIT ?`, [limit])).map(toPolicy);
  }

  /** Enabled policies with a slot due at `nowMs` (index policies_due). */
  async duePolicies(nowMs: number, limit: number): Promise<PolicyWithCount[]> {
    return (await this.db.all<PolicyRow>(`${POLICY_SELECT} WHERE p.status = 'ON' AND p.next_run_at <= ? ORDER BY p.next_run_at LIMIT ?`, [nowMs, limit])).map(toPolicy);
  }

  /** Compare-and-set of next_run_at: false when another process (or a schedule change) got there first. */
  async claimSchedule(id: string, expected: number | null, next: number): Promise<boolean> {
    const r = expected === null
      ? await this.db.run("UPDATE policies SET next_run_at = ? WHERE id = ? AND status = 'ON' AND next_run_at IS NULL", [next, id])
      : await this.db.run("UPDATE policies SET next_run_at = ? WHERE id = ? AND status = 'ON' AND next_run_at = ?", [next, id, expected]);
    return r.changes === 1;
  }

  async countPolicies(projectId: string): Promise<number> {
    return Number((await this.db.get<{ c: number }>('SELECT COUNT(*) AS c FROM policies WHERE project_id = ?', [projectId]))!.c);
  }

  async deletePolicy(id: string): Promise<void> {
    await this.db.run('DELETE FROM policy_resources WHERE policy_id = ?', [id]);
    await this.db.run('DELETE FROM policy_tags WHERE policy_id = ?', [id]);
    await this.db.run('DELETE FROM policies WHERE id = ?', [id]);
  }

  /** Binds a volume to a policy, moving it from any other policy. */
  async bindVolume(policyId: string, projectId: string, volumeId: string, nowMs: number): Promise<void> {
    await this.db.run('DELETE FROM policy_resources WHERE volume_id = ?', [volumeId]);
    await this.db.run('INSERT INTO policy_resources (volume_id, policy_id, project_id, created_at) VALUES (?, ?, ?, ?)', [volumeId, policyId, projectId, nowMs]);
  }

  async unbindVolume(policyId: string, volumeId: string): Promise<boolean> {
    return (await this.db.run('DELETE FROM policy_resources WHERE policy_id = ? AND volume_id = ?', [policyId, volumeId])).changes === 1;
  }

  async unbindVolumeEverywhere(volumeId: string): Promise<void> {
    await this.db.run('DELETE FROM policy_resources WHERE volume_id = ?', [volumeId]);
  }

  async policyVolumes(policyId: string): Promise<string[]> {
    return (await this.db.all<{ volume_id: string }>('SELECT volume_id FROM policy_resources WHERE policy_id = ? ORDER BY created_at, volume_id', [policyId])).map((r) => r.volume_id);
  }

  async policyTags(policyId: string): Promise<Tag[]> {
    return (await this.db.all<{ tag_key: string; tag_value: string }>('SELECT tag_key, tag_value FROM policy_tags WHERE policy_id = ? ORDER BY tag_key', [policyId])).map((r) => ({ key: r.tag_key, value: r.tag_value }));
  }

  async projectTags(projectId: string): Promise<{ policyId: string; key: string; value: string }[]> {
    const rows = await this.db.all<{ policy_id: string; tag_key: string; tag_value: string }>(
      'SELECT t.policy_id, t.tag_key, t.tag_value FROM policy_tags t JOIN policies p ON p.id = t.policy_id WHERE p.project_id = ? ORDER BY t.tag_key, t.tag_value',
      [projectId],
    );
    return rows.map((r) => ({ policyId: r.policy_id, key: r.tag_key, value: r.tag_value }));
  }

  async upsertTag(policyId: string, key: string, value: string): Promise<void> {
    await this.db.run('INSERT INTO policy_tags (policy_id, tag_key, tag_value) VALUES (?, ?, ?) ON CONFLICT (policy_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value', [policyId, key, value]);
  }

  async deleteTag(policyId: string, key: string): Promise<boolean> {
    return (await this.db.run('DELETE FROM policy_tags WHERE policy_id = ? AND tag_key = ?', [policyId, key])).changes === 1;
  }

  async insertTask(t: PolicyTask): Promise<void> {
    await this.db.run(
      'INSERT INTO policy_tasks (id, policy_id, project_id, volume_id, backup_id, backup_name, job_id, status, fail_reason, slot_at, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [t.id, t.policyId, t.projectId, t.volumeId, t.backupId, t.backupName, t.jobId, t.status, t.failReason, t.slotAt, t.createdAt, t.finishedAt],
    );
  }

  async listTasks(policyId: string, f: { status?: string | undefined; jobId?: string | undefined; sortDir: 'asc' | 'desc'; limit: number; offset: number; marker?: string | undefined }): Promise<{ tasks: PolicyTask[]; count: number }> {
    // Statuses derive from jobs, so filter after mapping; a policy keeps a bounded task history.
    let all = (await this.db.all<TaskRow>(`${TASK_SELECT} WHERE t.policy_id = ? ORDER BY t.created_at ${f.sortDir === 'asc' ? 'ASC' : 'DESC'}, t.id`, [policyId])).map(toTask);
    if (f.jobId !== undefined) all = all.filter((t) => t.id === f.jobId);
    if (f.status !== undefined) all = all.filter((t) => t.status === f.status);
    let start = f.offset;
    if (f.marker !== undefined) {
      const at = all.findIndex((t) => t.id === f.marker);
      if (at >= 0) start = at + 1 + f.offset;
    }
    return { tasks: all.slice(start, start + f.limit), count: all.length };
  }

  /** Tasks of the policy whose backup is queued or running. */
  async activeTasks(policyId: string): Promise<PolicyTask[]> {
    return (await this.db.all<TaskRow>(`${TASK_SELECT} WHERE t.policy_id = ? AND j.status IN ('INIT', 'RUNNING')`, [policyId])).map(toTask);
  }

  async deleteTasksBefore(cutoffMs: number): Promise<number> {
    return (await this.db.run('DELETE FROM policy_tasks WHERE created_at < ?', [cutoffMs])).changes;
  }

  // ---- sharings ----

  async insertSharing(s: Sharing): Promise<void> {
    await this.db.run('INSERT INTO sharings (id, backup_id, from_project_id, to_project_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)', [s.id, s.backupId, s.fromProjectId, s.toProjectId, s.createdAt, s.updatedAt]);
  }

  async findSharing(backupId: string, toProjectId: string): Promise<Sharing | undefined> {
    const r = await this.db.get<SharingRow>('SELECT * FROM sharings WHERE backup_id = ? AND to_project_id = ?', [backupId, toProjectId]);
    return r && toSharing(r);
  }

  /** A sharing visible to `projectId` (as owner or recipient). */
  async getSharing(projectId: string, id: string): Promise<Sharing | undefined> {
    const r = await this.db.get<SharingRow>('SELECT * FROM sharings WHERE id = ? AND (from_project_id = ? OR to_project_id = ?)', [id, projectId, projectId]);
    return r && toSharing(r);
  }

  async listSharings(where: { fromProjectId?: string | undefined; toProjectId?: string | undefined; backupId?: string | undefined }): Promise<Sharing[]> {
    const conds: string[] = [];
    const params: SqlValue[] = [];
    if (where.fromProjectId !== undefined) (conds.push('from_project_id = ?'), params.push(where.fromProjectId));
    if (where.toProjectId !== undefined) (conds.push('to_project_id = ?'), params.push(where.toProjectId));
    if (where.backupId !== undefined) (conds.push('backup_id = ?'), params.push(where.backupId));
    return (await this.db.all<SharingRow>(`SELECT * FROM sharings${conds.length ? ` WHERE ${conds.join(' AND ')}` : ''} ORDER BY created_at, id`, params)).map(toSharing);
  }

  async deleteSharing(id: string): Promise<boolean> {
    return (await this.db.run('DELETE FROM sharings WHERE id = ?', [id])).changes === 1;
  }

  async deleteSharingsOfBackup(backupId: string): Promise<number> {
    return (await this.db.run('DELETE FROM sharings WHERE backup_id = ?', [backupId])).changes;
  }
}
