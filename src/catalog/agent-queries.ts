/**
 * Catalog statements for agents (migrations/0016_agents.sql): their tokens, their registrations and
 * heartbeats, and the work queued for each host (services/volume-hosts.ts, agent/agent.ts).
 */
import type { WireError } from '../domain/errors.ts';
import type { SqlExecutor } from './sql.ts';

export interface AgentToken {
  id: string;
  host: string;
  secretHash: string;
  createdAt: number;
  revokedAt: number | null;
}

export interface AgentRecord {
  host: string;
  session: string;
  version: string;
  volumeRoots: string[];
  capabilities: string[];
  /** The control plane's own agent (`haven serve` with HAVEN_LOCAL_AGENT, the embedded default). */
  embedded: boolean;
  /** The agent process's identity across restarts (null: embedded). */
  instance: string | null;
  registeredAt: number;
  heartbeatAt: number;
  draining: boolean;
}

export type WorkStatus = 'queued' | 'running' | 'done' | 'failed';

export interface AgentWork {
  id: string;
  host: string;
  jobId: string | null;
  kind: string;
  request: unknown;
  status: WorkStatus;
  session: string | null;
  leaseUntil: number | null;
  progressDone: number;
  progressTotal: number;
  result: unknown;
  /** A failure as the agent reported it: Haven's error code, message and details. */
  error: WireError | null;
  cancelReason: string | null;
  createdAt: number;
  updatedAt: number;
}

interface AgentRow { host: string; session: string; version: string; volume_roots: string; capabilities: string; embedded: number; instance: string | null; registered_at: number; heartbeat_at: number; draining: number }
interface WorkRow {
  id: string; host: string; job_id: string | null; kind: string; request: string; status: WorkStatus; session: string | null; lease_until: number | null;
  progress_done: number; progress_total: number; result: string | null; error: string | null; cancel_reason: string | null; created_at: number; updated_at: number;
}

const toAgent = (r: AgentRow): AgentRecord => ({
  host: r.host, session: r.session, version: r.version, volumeRoots: JSON.parse(r.volume_roots) as string[], capabilities: JSON.parse(r.capabilities) as string[],
  embedded: !!Number(r.embedded), instance: r.instance ?? null, registeredAt: Number(r.registered_at), heartbeatAt: Number(r.heartbeat_at), draining: !!Number(r.draining),
});

const toWork = (r: WorkRow): AgentWork => ({
  id: r.id, host: r.host, jobId: r.job_id, kind: r.kind, request: JSON.parse(r.request) as unknown, status: r.status, session: r.session,
  leaseUntil: r.lease_until === null ? null : Number(r.lease_until), progressDone: Number(r.progress_done), progressTotal: Number(r.progress_total),
  result: r.result === null ? null : (JSON.parse(r.result) as unknown), error: r.error === null ? null : (JSON.parse(r.error) as AgentWork['error']),
  cancelReason: r.cancel_reason, createdAt: Number(r.created_at), updatedAt: Number(r.updated_at),
});

/** The session is still the one registered for the work's host (a superseded agent gets and ends nothing). */
const CURRENT_SESSION = 'EXISTS (SELECT 1 FROM agents WHERE agents.host = agent_work.host AND agents.session = ?)';

export class AgentQueries {
  private readonly db: SqlExecutor;
  constructor(db: SqlExecutor) {
    this.db = db;
  }

  // Tokens

  async insertToken(t: AgentToken): Promise<void> {
    await this.db.run('INSERT INTO agent_tokens (id, host, secret_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)', [t.id, t.host, t.secretHash, t.createdAt, t.revokedAt]);
  }

  async getToken(id: string): Promise<AgentToken | undefined> {
    const r = await this.db.get<{ id: string; host: string; secret_hash: string; created_at: number; revoked_at: number | null }>('SELECT * FROM agent_tokens WHERE id = ?', [id]);
    return r && { id: r.id, host: r.host, secretHash: r.secret_hash, createdAt: Number(r.created_at), revokedAt: r.revoked_at === null ? null : Number(r.revoked_at) };
  }

  /** Revokes a token (its agent is refused from its next call); false when there is no such token. */
  async revokeToken(id: string, nowMs: number): Promise<boolean> {
    return (await this.db.run('UPDATE agent_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL', [nowMs, id])).changes === 1;
  }

  async listTokens(): Promise<AgentToken[]> {
    const rows = await this.db.all<{ id: string; host: string; secret_hash: string; created_at: number; revoked_at: number | null }>('SELECT * FROM agent_tokens ORDER BY created_at, id');
    return rows.map((r) => ({ id: r.id, host: r.host, secretHash: r.secret_hash, createdAt: Number(r.created_at), revokedAt: r.revoked_at === null ? null : Number(r.revoked_at) }));
  }

  // Registrations

  /** Registers (or re-registers) the agent of `a.host` as session `a.session`; the draining mark stays. */
  async register(a: Omit<AgentRecord, 'draining'>): Promise<void> {
    // One statement (an upsert): two first registrations of a host at once cannot both insert.
    await this.db.run(
      `INSERT INTO agents (host, session, version, volume_roots, capabilities, embedded, instance, registered_at, heartbeat_at, draining) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)
       ON CONFLICT (host) DO UPDATE SET session = excluded.session, version = excluded.version, volume_roots = excluded.volume_roots, capabilities = excluded.capabilities,
       embedded = excluded.embedded, instance = excluded.instance, registered_at = excluded.registered_at, heartbeat_at = excluded.heartbeat_at`,
      [a.host, a.session, a.version, JSON.stringify(a.volumeRoots), JSON.stringify(a.capabilities), a.embedded ? 1 : 0, a.instance, a.registeredAt, a.heartbeatAt],
    );
  }

  /** Records a heartbeat of `session`; false when another session of the host registered since. */
  async heartbeat(host: string, session: string, nowMs: number): Promise<boolean> {
    return (await this.db.run('UPDATE agents SET heartbeat_at = ? WHERE host = ? AND session = ?', [nowMs, host, session])).changes === 1;
  }

  async getAgent(host: string): Promise<AgentRecord | undefined> {
    const r = await this.db.get<AgentRow>('SELECT * FROM agents WHERE host = ?', [host]);
    return r && toAgent(r);
  }

  async listAgents(): Promise<AgentRecord[]> {
    return (await this.db.all<AgentRow>('SELECT * FROM agents ORDER BY host')).map(toAgent);
  }

  /** Forgets embedded agents not heard from since `beforeMs` (a machine renamed, or gone). */
  async forgetSilentEmbedded(beforeMs: number): Promise<number> {
    return (await this.db.run('DELETE FROM agents WHERE embedded = 1 AND heartbeat_at < ?', [beforeMs])).changes;
  }

  /** The embedded agent's heartbeat (it has no session of its own to check). */
  async heartbeatEmbedded(host: string, nowMs: number): Promise<void> {
    await this.db.run('UPDATE agents SET heartbeat_at = ? WHERE host = ? AND embedded = 1', [nowMs, host]);
  }

  async setDraining(host: string, draining: boolean): Promise<boolean> {
    return (await this.db.run('UPDATE agents SET draining = ? WHERE host = ?', [draining ? 1 : 0, host])).changes === 1;
  }

  /** Volumes per host (NULL: the control plane's own). */
  async volumeCounts(): Promise<Map<string | null, number>> {
    const rows = await this.db.all<{ host: string | null; n: number }>('SELECT host, COUNT(*) AS n FROM volumes GROUP BY host');
    return new Map(rows.map((r) => [r.host, Number(r.n)]));
  }

  // Work

  async insertWork(w: Pick<AgentWork, 'id' | 'host' | 'jobId' | 'kind' | 'request' | 'createdAt'>): Promise<void> {
    await this.db.run("INSERT INTO agent_work (id, host, job_id, kind, request, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)", [w.id, w.host, w.jobId, w.kind, JSON.stringify(w.request), w.createdAt, w.createdAt]);
  }

  async getWork(id: string): Promise<AgentWork | undefined> {
    const r = await this.db.get<WorkRow>('SELECT * FROM agent_work WHERE id = ?', [id]);
    return r && toWork(r);
  }

  /** The oldest queued work of a host (cancelled work is not handed out). */
  async queuedWork(host: string, limit: number): Promise<AgentWork[]> {
    // (the caller picks quick and long work from these)
    return (await this.db.all<WorkRow>("SELECT * FROM agent_work WHERE host = ? AND status = 'queued' AND cancel_reason IS NULL ORDER BY created_at, id LIMIT ?", [host, limit])).map(toWork);
  }

  /** Compare-and-set: queued -> running for `session`, leased until `leaseUntil`. */
  async claimWork(id: string, session: string, nowMs: number, leaseUntil: number): Promise<boolean> {
    return (await this.db.run(`UPDATE agent_work SET status = 'running', session = ?, lease_until = ?, updated_at = ? WHERE id = ? AND status = 'queued' AND cancel_reason IS NULL AND ${CURRENT_SESSION}`, [session, leaseUntil, nowMs, id, session])).changes === 1;
  }

  /**
   * Renews the lease of work `session` holds and records its progress; false when it no longer
   * holds it (ended, its lease already run out, or another session registered for its host).
   */
  async renewWork(id: string, session: string, nowMs: number, leaseUntil: number, done: number, total: number): Promise<boolean> {
    return (await this.db.run(`UPDATE agent_work SET lease_until = ?, progress_done = ?, progress_total = ?, updated_at = ? WHERE id = ? AND session = ? AND status = 'running' AND lease_until >= ? AND ${CURRENT_SESSION}`, [leaseUntil, done, total, nowMs, id, session, nowMs, session])).changes === 1;
  }

  /** Fails running work whose lease ran out before `beforeMs` (CAS on the lease: a renewal meanwhile wins). */
  async expireWork(id: string, beforeMs: number, error: NonNullable<AgentWork['error']>, nowMs: number): Promise<boolean> {
    return (await this.db.run("UPDATE agent_work SET status = 'failed', error = ?, updated_at = ? WHERE id = ? AND status = 'running' AND lease_until < ?", [JSON.stringify(error), nowMs, id, beforeMs])).changes === 1;
  }

  /**
   * Ends work nobody will end otherwise: running work whose lease ran out before `leaseBeforeMs`
   * (its agent and its waiting job are gone) and queued work older than `queuedBeforeMs`.
   */
  async sweepWork(leaseBeforeMs: number, queuedBeforeMs: number, nowMs: number): Promise<number> {
    const lost = JSON.stringify({ code: 'AGENT_LOST', message: 'the agent stopped renewing its lease on this work' });
    const stale = JSON.stringify({ code: 'HOST_UNAVAILABLE', message: 'no agent took this work in time' });
    const a = await this.db.run("UPDATE agent_work SET status = 'failed', error = ?, updated_at = ? WHERE status = 'running' AND lease_until < ?", [lost, nowMs, leaseBeforeMs]);
    const b = await this.db.run("UPDATE agent_work SET status = 'failed', error = ?, updated_at = ? WHERE status = 'queued' AND created_at < ?", [stale, nowMs, queuedBeforeMs]);
    return a.changes + b.changes;
  }

  /** Work `session` holds that is asked to stop: [id, reason]. */
  async cancelledWorkOf(session: string): Promise<{ id: string; reason: string }[]> {
    const rows = await this.db.all<{ id: string; cancel_reason: string }>("SELECT id, cancel_reason FROM agent_work WHERE session = ? AND status = 'running' AND cancel_reason IS NOT NULL", [session]);
    return rows.map((r) => ({ id: r.id, reason: r.cancel_reason }));
  }

  /** Running work of a host (the admin API's running jobs). */
  async runningWorkOfHost(host: string): Promise<AgentWork[]> {
    return (await this.db.all<WorkRow>("SELECT * FROM agent_work WHERE host = ? AND status = 'running' ORDER BY created_at", [host])).map(toWork);
  }

  /**
   * Ends work: done with a result, or failed with an error. Only from `fromStatuses` and, when
   * `session` is given, only while that session holds it: false otherwise (it ended already).
   */
  async finishWork(id: string, end: { status: 'done'; result: unknown } | { status: 'failed'; error: NonNullable<AgentWork['error']> }, nowMs: number, opts: { session?: string; fromStatuses: WorkStatus[] }): Promise<boolean> {
    const marks = opts.fromStatuses.map(() => '?').join(', ');
    const bySession = opts.session === undefined ? '' : ` AND session = ? AND ${CURRENT_SESSION}`;
    const params = [end.status, end.status === 'done' ? JSON.stringify(end.result ?? null) : null, end.status === 'failed' ? JSON.stringify(end.error) : null, nowMs, id, ...opts.fromStatuses, ...(opts.session === undefined ? [] : [opts.session, opts.session])];
    return (await this.db.run(`UPDATE agent_work SET status = ?, result = ?, error = ?, updated_at = ? WHERE id = ? AND status IN (${marks})${bySession}`, params)).changes === 1;
  }

  /** Asks queued or running work to stop (the agent sees it with its next heartbeat). */
  async cancelWork(id: string, reason: string): Promise<boolean> {
    return (await this.db.run("UPDATE agent_work SET cancel_reason = ? WHERE id = ? AND status IN ('queued', 'running') AND cancel_reason IS NULL", [reason, id])).changes === 1;
  }

  /** Stops all unfinished work of a job (it ended): queued work fails now, running work is asked to stop. */
  async cancelWorkOfJob(jobId: string, reason: string, nowMs: number): Promise<number> {
    const failed = await this.db.run("UPDATE agent_work SET status = 'failed', error = ?, cancel_reason = ?, updated_at = ? WHERE job_id = ? AND status = 'queued'", [JSON.stringify({ code: 'CANCELLED', message: reason }), reason, nowMs, jobId]);
    const asked = await this.db.run("UPDATE agent_work SET cancel_reason = ? WHERE job_id = ? AND status = 'running' AND cancel_reason IS NULL", [reason, jobId]);
    return failed.changes + asked.changes;
  }

  /** Running work of `host` held by sessions other than `session` (an agent that registered anew abandons them). */
  async runningWorkOfOtherSessions(host: string, session: string): Promise<AgentWork[]> {
    return (await this.db.all<WorkRow>("SELECT * FROM agent_work WHERE host = ? AND status = 'running' AND session <> ?", [host, session])).map(toWork);
  }

  /** Ended work older than `beforeMs` goes (it is kept a while for the admin API and debugging). */
  async purgeEndedWork(beforeMs: number): Promise<number> {
    return (await this.db.run("DELETE FROM agent_work WHERE status IN ('done', 'failed') AND updated_at < ?", [beforeMs])).changes;
  }
}
