/**
 * The control plane's side of agents: their credentials, registrations, heartbeats, the work they
 * claim and the results they return (the HTTP routes are api/agents.routes.ts, the agent itself
 * agent/agent.ts), and the admin's view (list, drain).
 *
 * A token is `hvagent_<id>_<secret>`: the catalog keeps its host and SHA-256 of the secret only.
 * Every call of an agent is checked against its token's host: an agent sees and ends only the
 * work of its own host, and only while its session holds it.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Catalog } from '../catalog/catalog.ts';
import type { AgentRecord, AgentWork } from '../catalog/agent-queries.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode, type WireError } from '../domain/errors.ts';
import { agentOnline, HOST_NAME_RE } from '../domain/host.ts';
import { newHexId } from '../domain/ids.ts';
import { isQuickCall } from './volume-host.ts';

const TOKEN_RE = /^hvagent_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$/;
/** Queued work no agent took in this long is failed (its job waited with a time limit or is gone). */
const STALE_QUEUED_MS = 3600_000;
/** Ended work is kept this long for the admin's view and debugging. */
const KEEP_ENDED_WORK_MS = 24 * 3600_000;

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

export interface AgentView extends AgentRecord {
  online: boolean;
  volumes: number;
  running: AgentWork[];
}

export class AgentService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  readonly leaseMs: number;
  private lastPurge = 0;

  constructor(catalog: Catalog, clock: Clock, opts: { leaseMs: number }) {
    this.catalog = catalog;
    this.clock = clock;
    this.leaseMs = opts.leaseMs;
  }

  /** A new token for the agent of `host` (shown once; only its hash is kept). */
  async createToken(host: string): Promise<{ id: string; host: string; token: string }> {
    if (!HOST_NAME_RE.test(host) || host === 'tokens') throw new AppError(ErrorCode.InvalidArgument, `invalid host name ${JSON.stringify(host)}: letters, digits, ".", "_" and "-", at most 253`);
    const id = newHexId();
    const secret = randomBytes(32).toString('base64url');
    await this.catalog.agents.insertToken({ id, host, secretHash: sha256(secret), createdAt: this.clock.now(), revokedAt: null });
    return { id, host, token: `hvagent_${id}_${secret}` };
  }

  /** Revokes a token by its id (the part after `hvagent_`): its agent is refused from its next call. */
  async revokeToken(id: string): Promise<void> {
    if (!/^[0-9a-f]{32}$/.test(id) || !(await this.catalog.agents.revokeToken(id, this.clock.now()))) throw new AppError(ErrorCode.AgentNotFound, `no agent token ${id} that is not revoked already`);
  }

  /** The tokens (never their secrets): id, host, created, revoked. */
  async listTokens(): Promise<{ id: string; host: string; createdAt: number; revokedAt: number | null }[]> {
    return (await this.catalog.agents.listTokens()).map(({ id, host, createdAt, revokedAt }) => ({ id, host, createdAt, revokedAt }));
  }

  /** The host a token belongs to; TokenInvalid for anything else (never saying which part was wrong). */
  async authenticate(token: string): Promise<{ host: string; tokenId: string }> {
    const m = TOKEN_RE.exec(token);
    const bad = (): never => {
      throw new AppError(ErrorCode.TokenInvalid, 'The agent token is not valid.');
    };
    if (!m) return bad();
    const t = await this.catalog.agents.getToken(m[1]!);
    if (!t || t.revokedAt !== null) return bad();
    const a = Buffer.from(sha256(m[2]!), 'hex');
    const b = Buffer.from(t.secretHash, 'hex');
    if (a.length !== b.length || !timingSafeEqual(a, b)) return bad();
    return { host: t.host, tokenId: t.id };
  }

  /**
   * An agent process starts: a new session for its host. Work an earlier session of the host still
   * held is abandoned (that process is gone or superseded): it fails now rather than at its lease.
   */
  async register(host: string, info: { version: string; volumeRoots: string[]; capabilities: string[]; instance?: string | null }, embedded = false): Promise<{ session: string; leaseMs: number }> {
    const session = newHexId();
    const now = this.clock.now();
    const current = await this.catalog.agents.getAgent(host);
    // One agent per host: another process registering while the host's agent is online is refused
    // (they would take turns abandoning each other's work); the same agent restarting takes over.
    if (!embedded && current && !current.embedded && agentOnline(current, now, this.leaseMs) && current.instance !== (info.instance ?? null)) {
      throw new AppError(ErrorCode.AgentConflict, `another agent of host ${host} is online (last heartbeat ${new Date(current.heartbeatAt).toISOString()}); one agent per host: stop it, or wait ${Math.ceil(this.leaseMs / 1000)} s after it stopped`);
    }
    await this.catalog.agents.register({ host, session, version: info.version, volumeRoots: info.volumeRoots, capabilities: info.capabilities, embedded, instance: info.instance ?? null, registeredAt: now, heartbeatAt: now });
    for (const w of await this.catalog.agents.runningWorkOfOtherSessions(host, session)) {
      const error = { code: ErrorCode.AgentLost, message: `the agent of host ${host} restarted before it finished this work; the new agent abandoned it` };
      await this.catalog.agents.finishWork(w.id, { status: 'failed', error }, now, { fromStatuses: ['running'] });
    }
    return { session, leaseMs: this.leaseMs };
  }

  private async session(host: string, session: string): Promise<AgentRecord> {
    const a = await this.catalog.agents.getAgent(host);
    if (!a || a.session !== session) throw new AppError(ErrorCode.WorkNotHeld, `session ${session} of host ${host} is no longer registered: another agent of the host registered since; register again`);
    return a;
  }

  /**
   * A heartbeat: the agent is alive, and renews the leases of the work it reports (with its
   * progress). It learns which work to stop: cancelled, or no longer its own (failed meanwhile).
   */
  async heartbeat(host: string, session: string, work: { id: string; done: number; total: number }[]): Promise<{ stop: { id: string; reason: string }[]; draining: boolean }> {
    const now = this.clock.now();
    if (!(await this.catalog.agents.heartbeat(host, session, now))) await this.session(host, session);
    const a = await this.session(host, session);
    const stop: { id: string; reason: string }[] = [];
    for (const w of work) {
      if (!(await this.catalog.agents.renewWork(w.id, session, now, now + this.leaseMs, w.done, w.total))) {
        const row = await this.catalog.agents.getWork(w.id);
        stop.push({ id: w.id, reason: row && row.host === host ? `the work ended on the control plane: ${row.error?.message ?? row.status}` : 'no such work for this host' });
      }
    }
    for (const c of await this.catalog.agents.cancelledWorkOf(session)) if (!stop.some((s) => s.id === c.id)) stop.push(c);
    if (now - this.lastPurge > 60_000) {
      this.lastPurge = now;
      // Work nobody ends otherwise (its agent and its job's process both gone), then old records.
      await this.catalog.agents.sweepWork(now - 2 * this.leaseMs, now - STALE_QUEUED_MS, now);
      await this.catalog.agents.purgeEndedWork(now - KEEP_ENDED_WORK_MS);
    }
    return { stop, draining: a.draining };
  }

  /**
   * Hands out queued work of the host (none while it is drained): up to `slots` long works
   * (backups, restores, copies) and up to `quickSlots` quick ones (volume files made or removed).
   */
  async claim(host: string, session: string, slots: number, quickSlots = 0): Promise<{ id: string; kind: string; request: unknown }[]> {
    const a = await this.session(host, session);
    if (a.draining || (slots < 1 && quickSlots < 1)) return [];
    const out: { id: string; kind: string; request: unknown }[] = [];
    let long = 0;
    let quick = 0;
    for (const w of await this.catalog.agents.queuedWork(host, 64)) {
      const isQuick = isQuickCall(w.kind);
      if (isQuick ? quick >= quickSlots : long >= slots) continue;
      const now = this.clock.now();
      if (await this.catalog.agents.claimWork(w.id, session, now, now + this.leaseMs)) {
        out.push({ id: w.id, kind: w.kind, request: w.request });
        if (isQuick) quick++;
        else long++;
      }
    }
    return out;
  }

  /** The agent's result: accepted only while its session holds the work (WorkNotHeld otherwise). */
  async finish(host: string, session: string, workId: string, outcome: { ok: true; result: unknown } | { ok: false; error: WireError }): Promise<void> {
    const end = outcome.ok ? { status: 'done' as const, result: outcome.result } : { status: 'failed' as const, error: outcome.error };
    const row = await this.catalog.agents.getWork(workId);
    if (!row || row.host !== host || !(await this.catalog.agents.finishWork(workId, end, this.clock.now(), { session, fromStatuses: ['running'] }))) {
      throw new AppError(ErrorCode.WorkNotHeld, `work ${workId} is not held by this agent session (it ended, or its lease ran out)`);
    }
  }

  async list(): Promise<AgentView[]> {
    const now = this.clock.now();
    const counts = await this.catalog.agents.volumeCounts();
    const out: AgentView[] = [];
    for (const a of await this.catalog.agents.listAgents()) {
      out.push({ ...a, online: agentOnline(a, now, this.leaseMs), volumes: (counts.get(a.host) ?? 0) + (a.embedded ? (counts.get(null) ?? 0) : 0), running: await this.catalog.agents.runningWorkOfHost(a.host) });
    }
    return out;
  }

  async get(host: string): Promise<AgentView> {
    const a = (await this.list()).find((x) => x.host === host);
    if (!a) throw new AppError(ErrorCode.AgentNotFound, `no agent has registered for host ${host}`);
    return a;
  }

  /** Drains a host (no new work, no new volumes; running work finishes) or takes it back. */
  async setDraining(host: string, draining: boolean): Promise<AgentView> {
    if (!(await this.catalog.agents.setDraining(host, draining))) throw new AppError(ErrorCode.AgentNotFound, `no agent has registered for host ${host}`);
    return this.get(host);
  }
}

