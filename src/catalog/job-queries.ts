/** Catalog statements for jobs: the queue every Haven process claims work from. */
import { parseJobPayload, type Job, type JobStatus, type JobType } from '../domain/job.ts';
import { afterMarker } from './paging.ts';
import type { SqlExecutor, SqlValue } from './sql.ts';

/** Which jobs a list shows: one project's (null: every project's, the cloud admin's), of a status and kind. */
export interface JobFilter {
  projectId: string | null;
  status?: JobStatus | undefined;
  type?: JobType | undefined;
}

/** A page of a newest-first list: at most `limit` jobs after the job `marker` (keyset paging, paging.ts). */
export interface JobPage {
  limit: number;
  marker?: string | undefined;
}

interface JobRow {
  id: string; project_id: string; job_type: JobType; status: JobStatus; payload: string; entities: string; error_code: string | null; fail_reason: string | null;
  owner: string | null; heartbeat_at: number | null; progress_done: number; progress_total: number; created_at: number; begin_time: number | null; end_time: number | null; request_id?: string | null;
}

const num = (v: number | null): number | null => (v === null ? null : Number(v));
/** A row as a job; its payload is checked against its kind (domain/job.ts), so `type` and `payload` agree. */
const toJob = (r: JobRow): Job =>
  ({
    id: r.id, projectId: r.project_id, type: r.job_type, status: r.status, payload: parseJobPayload(r.job_type, JSON.parse(r.payload)),
    entities: JSON.parse(r.entities) as Record<string, string>, errorCode: r.error_code, failReason: r.fail_reason, owner: r.owner,
    heartbeatAt: num(r.heartbeat_at), progressDone: Number(r.progress_done), progressTotal: Number(r.progress_total), createdAt: Number(r.created_at),
    beginTime: num(r.begin_time), endTime: num(r.end_time), requestId: r.request_id ?? null,
  }) as Job;

export class JobQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  async insertJob(j: Job): Promise<void> {
    await this.db.run(
      'INSERT INTO jobs (id, project_id, job_type, status, payload, entities, error_code, fail_reason, owner, heartbeat_at, progress_done, progress_total, created_at, begin_time, end_time, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [j.id, j.projectId, j.type, j.status, JSON.stringify(j.payload), JSON.stringify(j.entities), j.errorCode, j.failReason, j.owner, j.heartbeatAt, j.progressDone, j.progressTotal, j.createdAt, j.beginTime, j.endTime, j.requestId ?? null],
    );
  }

  async getJob(projectId: string, id: string): Promise<Job | undefined> {
    const r = await this.db.get<JobRow>('SELECT * FROM jobs WHERE id = ? AND project_id = ?', [id, projectId]);
    return r && toJob(r);
  }

  async getJobById(id: string): Promise<Job | undefined> {
    const r = await this.db.get<JobRow>('SELECT * FROM jobs WHERE id = ?', [id]);
    return r && toJob(r);
  }

  /**
   * The oldest queued jobs, skipping those of `skipProjects` (projects that already hold their share
   * of the claiming runner's slots), so a long queue of one project never hides another's job.
   */
  async queuedJobs(limit: number, skipProjects: readonly string[] = []): Promise<{ id: string; projectId: string }[]> {
    const skip = skipProjects.length ? ` AND project_id NOT IN (${skipProjects.map(() => '?').join(', ')})` : '';
    const rows = await this.db.all<{ id: string; project_id: string }>(`SELECT id, project_id FROM jobs WHERE status = 'INIT'${skip} ORDER BY created_at, id LIMIT ?`, [...skipProjects, limit]);
    return rows.map((r) => ({ id: r.id, projectId: r.project_id }));
  }

  /**
   * Jobs newest first (created_at, then id, descending: a total order, so pages never overlap).
   * Reads the index jobs_project, or jobs_created for every project's (migration 0018).
   */
  async listJobs(f: JobFilter, page: JobPage): Promise<Job[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (f.projectId !== null) (where.push('project_id = ?'), params.push(f.projectId));
    if (f.status !== undefined) (where.push('status = ?'), params.push(f.status));
    if (f.type !== undefined) (where.push('job_type = ?'), params.push(f.type));
    if (page.marker !== undefined) {
      const after = await afterMarker(this.db, 'jobs', 'created_at', 'desc', f.projectId, page.marker);
      where.push(after.sql);
      params.push(...after.params);
    }
    const sql = `SELECT * FROM jobs${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id DESC LIMIT CAST(? AS INTEGER)`;
    return (await this.db.all<JobRow>(sql, [...params, page.limit])).map(toJob);
  }

  /** Compare-and-set claim: INIT -> RUNNING for `owner`; false when another process won. */
  async claimJob(id: string, owner: string, nowMs: number): Promise<boolean> {
    return (await this.db.run("UPDATE jobs SET status = 'RUNNING', owner = ?, heartbeat_at = ?, begin_time = ? WHERE id = ? AND status = 'INIT'", [owner, nowMs, nowMs, id])).changes === 1;
  }

  async heartbeat(id: string, owner: string, nowMs: number, done: number, total: number): Promise<boolean> {
    return (await this.db.run("UPDATE jobs SET heartbeat_at = ?, progress_done = ?, progress_total = ? WHERE id = ? AND owner = ? AND status = 'RUNNING'", [nowMs, done, total, id, owner])).changes === 1;
  }

  /**
   * Asks for a queued or running job to stop: its owner sees the reason at its next heartbeat
   * (cancelReason) and aborts it. False when the job has already ended.
   */
  async requestCancel(id: string, reason: string): Promise<boolean> {
    return (await this.db.run("UPDATE jobs SET cancel_reason = ? WHERE id = ? AND status IN ('INIT', 'RUNNING')", [reason, id])).changes === 1;
  }

  /** The reason a cancel was asked for, or null (not cancelled, or no such job). */
  async cancelReason(id: string): Promise<string | null> {
    return (await this.db.get<{ cancel_reason: string | null }>('SELECT cancel_reason FROM jobs WHERE id = ?', [id]))?.cancel_reason ?? null;
  }

  /** Queued or running jobs of some types (few: the queue's working set), for finding a backup's job. */
  async activeJobs(types: readonly JobType[]): Promise<Job[]> {
    const marks = types.map(() => '?').join(', ');
    return (await this.db.all<JobRow>(`SELECT * FROM jobs WHERE status IN ('INIT', 'RUNNING') AND job_type IN (${marks}) ORDER BY created_at, id`, [...types])).map(toJob);
  }

  /** RUNNING -> SUCCESS | FAIL, only by the owner (or by recovery, owner null). */
  async finishJob(id: string, owner: string | null, r: { status: 'SUCCESS' | 'FAIL'; entities: Record<string, string>; errorCode: string | null; failReason: string | null }, nowMs: number): Promise<boolean> {
    const ownerCheck = owner === null ? '' : ' AND owner = ?';
    const params = [r.status, JSON.stringify(r.entities), r.errorCode, r.failReason, nowMs, id, ...(owner === null ? [] : [owner])];
    return (await this.db.run(`UPDATE jobs SET status = ?, entities = ?, error_code = ?, fail_reason = ?, end_time = ? WHERE id = ? AND status IN ('INIT', 'RUNNING')${ownerCheck}`, params)).changes === 1;
  }

  /** Running jobs whose owner stopped refreshing the heartbeat before `beforeMs` (or all, with Infinity). */
  async staleRunningJobs(beforeMs: number): Promise<Job[]> {
    const rows = Number.isFinite(beforeMs)
      ? await this.db.all<JobRow>("SELECT * FROM jobs WHERE status = 'RUNNING' AND heartbeat_at < ?", [beforeMs])
      : await this.db.all<JobRow>("SELECT * FROM jobs WHERE status = 'RUNNING'");
    return rows.map(toJob);
  }

  async countByStatus(): Promise<Record<string, number>> {
    const rows = await this.db.all<{ job_type: string; status: string; n: number }>('SELECT job_type, status, COUNT(*) AS n FROM jobs GROUP BY job_type, status');
    const out: Record<string, number> = {};
    for (const r of rows) out[`${r.job_type}/${r.status}`] = Number(r.n);
    return out;
  }
}
