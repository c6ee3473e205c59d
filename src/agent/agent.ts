/**
 * `haven agent`: runs on every host that holds disks. It registers its host with the control plane
 * (over the HTTP API, with the host's agent token: it never holds the catalog's credentials),
 * heartbeats, takes the work queued for its host and does it on a LocalVolumeHost: the volume
 * files and QEMU guests are here, chunks go straight to the repository (a folder or S3), so volume
 * data never passes through the control plane.
 *
 * Leases: every heartbeat renews the leases of the work it reports. Work the control plane says
 * to stop (cancelled, or failed there because a lease ran out) is aborted. When the agent cannot
 * reach the control plane for a whole lease, the control plane has failed its work already: the
 * agent aborts it too, so no work ever runs twice at once. A restarted agent registers a new
 * session, and the work of its old one is abandoned (failed) at once.
 */
import { AppError, ErrorCode, errorToWire } from '../domain/errors.ts';
import type { Logger } from '../services/job-runner.ts';
import { isHostCall, isQuickCall, type VolumeHost, type WorkControl } from '../services/volume-host.ts';

/** Quick works run at once, besides the slots for long work. */
const QUICK_SLOTS = 4;

/** The agent logs as the job runner does (a pino logger fits). */
export type AgentLogger = Logger;

export interface AgentOptions {
  controlUrl: string;
  token: string;
  /** Where the work is done: this host's files, guests and repository. */
  host: VolumeHost;
  version: string;
  volumeRoots: readonly string[];
  capabilities: readonly string[];
  /** Works run at once. */
  slots: number;
  log: AgentLogger;
  /** How often free slots look for work (ms). */
  pollMs?: number;
  /** This agent's identity across restarts (kept in its data folder): a restart may take over its own session, not another agent's. */
  instance: string;
  /** Called when another agent registered for this host: this one has stopped. */
  onSuperseded?: (why: string) => void;
}

interface Running {
  ac: AbortController;
  done: number;
  total: number;
  finished: Promise<void>;
}

export class Agent {
  private readonly opts: Required<Omit<AgentOptions, 'onSuperseded'>> & Pick<AgentOptions, 'onSuperseded'>;
  private session: string | null = null;
  private leaseMs = 30_000;
  /** The host name the control plane knows this agent by (from its token). */
  hostName: string | null = null;
  private readonly running = new Map<string, Running>();
  /** The running work that is quick (its own slots). */
  private readonly quick = new Set<string>();
  private beatTimer: NodeJS.Timeout | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  /** When the last heartbeat that was answered was sent. */
  private lastBeatSent = 0;
  private beating = false;
  private claiming = false;
  private stopped = false;
  draining = false;

  constructor(opts: AgentOptions) {
    this.opts = { pollMs: 1000, ...opts };
  }

  private async call<T>(method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = 20_000): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.opts.controlUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.opts.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw new AppError(ErrorCode.HostUnavailable, `cannot reach the control plane at ${this.opts.controlUrl}: ${(err as Error).message}`, { cause: err });
    }
    const text = await res.text();
    if (!res.ok) {
      let message = text.slice(0, 500);
      try {
        const j = JSON.parse(text) as Record<string, { message?: string }>;
        message = Object.values(j)[0]?.message ?? message;
      } catch {
        // not JSON: the text itself
      }
      const code = res.status === 401 ? ErrorCode.TokenInvalid : res.status === 409 ? ErrorCode.WorkNotHeld : res.status >= 500 ? ErrorCode.HostUnavailable : ErrorCode.InvalidArgument;
      throw new AppError(code, `control plane: ${res.status} ${message}`, { details: { status: res.status } });
    }
    return (text ? JSON.parse(text) : null) as T;
  }

  /** Registers (a new session) and starts heartbeats and claiming. */
  async start(): Promise<void> {
    this.stopped = false;
    await this.register();
    this.beatTimer = setInterval(() => void this.beat(), Math.max(500, Math.floor(this.leaseMs / 3)));
    this.pollTimer = setInterval(() => {
      void this.claim();
      this.watchdog();
    }, Math.min(this.opts.pollMs, 500));
  }

  /**
   * The control plane fails work whose lease (renewed when a heartbeat arrives there) ran out. This
   * agent stops its work earlier: two thirds of a lease after it *sent* its last heartbeat that
   * was answered, so it has stopped before the control plane can give the volume to new work.
   */
  private watchdog(): void {
    if (this.running.size && Date.now() - this.lastBeatSent > (this.leaseMs * 2) / 3) {
      this.abortAll(`the control plane did not answer a heartbeat for ${Math.round((Date.now() - this.lastBeatSent) / 1000)} s (lease ${this.leaseMs / 1000} s): the work stops before its lease runs out`);
    }
  }

  private async register(): Promise<void> {
    const sent = Date.now();
    const r = await this.call<{ host: string; session: string; lease_seconds: number }>('POST', '/haven/v1/agent/register', { version: this.opts.version, volume_roots: this.opts.volumeRoots, capabilities: this.opts.capabilities, instance: this.opts.instance });
    this.session = r.session;
    this.hostName = r.host;
    this.leaseMs = r.lease_seconds * 1000;
    this.lastBeatSent = sent;
    this.opts.log.info({ host: r.host, session: r.session, leaseSeconds: r.lease_seconds }, 'agent registered');
  }

  private async beat(): Promise<void> {
    if (!this.session || this.stopped || this.beating) return; // one heartbeat at a time
    this.beating = true;
    try {
      const work = [...this.running].map(([id, r]) => ({ id, done: r.done, total: r.total }));
      const sent = Date.now();
      // Answered within a third of the lease, or it does not count.
      const r = await this.call<{ stop: { id: string; reason: string }[]; draining: boolean }>('POST', '/haven/v1/agent/heartbeat', { session: this.session, work }, Math.max(1000, Math.floor(this.leaseMs / 3)));
      this.lastBeatSent = sent;
      if (r.draining !== this.draining) this.opts.log.info({ draining: r.draining }, r.draining ? 'host drained: no new work' : 'host undrained');
      this.draining = r.draining;
      for (const s of r.stop) this.abort(s.id, s.reason);
    } catch (err) {
      if (err instanceof AppError && err.code === ErrorCode.WorkNotHeld) {
        // Another agent registered for this host since (its work here was abandoned there): two
        // agents of one host would take turns abandoning each other's work, so this one stops.
        const why = `another agent registered for host ${this.hostName} since this one did; one agent per host: this one stops`;
        this.opts.log.error({ err: (err as Error).message }, why);
        void this.stop(why).then(() => this.opts.onSuperseded?.(why)).catch(() => undefined);
        return;
      }
      this.opts.log.warn({ err: (err as Error).message }, 'heartbeat failed');
      this.watchdog();
    } finally {
      this.beating = false;
    }
  }

  private abort(id: string, reason: string): void {
    const r = this.running.get(id);
    if (r && !r.ac.signal.aborted) {
      this.opts.log.warn({ workId: id, reason }, 'work stopped');
      r.ac.abort(new AppError(ErrorCode.Cancelled, `cancelled: ${reason}`));
    }
  }

  private abortAll(reason: string): void {
    for (const id of this.running.keys()) this.abort(id, reason);
  }

  private async claim(): Promise<void> {
    if (this.claiming || this.stopped || !this.session || this.draining) return;
    // Quick work (a volume's file made or removed, an adoption checked) does not wait behind
    // backups: it has slots of its own.
    let long = 0;
    for (const id of this.running.keys()) if (!this.quick.has(id)) long++;
    const free = Math.max(0, this.opts.slots - long);
    const quickFree = Math.max(0, QUICK_SLOTS - this.quick.size);
    if (free < 1 && quickFree < 1) return;
    this.claiming = true;
    try {
      const r = await this.call<{ work: { id: string; kind: string; request: unknown }[] }>('POST', '/haven/v1/agent/claim', { session: this.session, slots: free, quick_slots: quickFree });
      for (const w of r.work) this.execute(w);
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'claiming work failed');
    } finally {
      this.claiming = false;
    }
  }

  private execute(w: { id: string; kind: string; request: unknown }): void {
    const ac = new AbortController();
    const entry: Running = { ac, done: 0, total: 0, finished: Promise.resolve() };
    if (isQuickCall(w.kind)) this.quick.add(w.id);
    const session = this.session;
    const ctl: WorkControl = { signal: ac.signal, onProgress: (done, total) => ((entry.done = done), (entry.total = total)) };
    entry.finished = (async () => {
      const started = Date.now();
      this.opts.log.info({ workId: w.id, kind: w.kind }, 'work started');
      let outcome: { ok: true; result: unknown } | { ok: false; error: ReturnType<typeof errorToWire> };
      try {
        if (!isHostCall(w.kind)) throw new AppError(ErrorCode.InvalidArgument, `unknown work kind ${w.kind}: this agent (version ${this.opts.version}) is older than the control plane`);
        const fn = this.opts.host[w.kind] as (request: unknown, ctl: WorkControl) => Promise<unknown>;
        const result = await fn.call(this.opts.host, w.request, ctl);
        outcome = { ok: true, result: result ?? null };
        this.opts.log.info({ workId: w.id, kind: w.kind, durationMs: Date.now() - started }, 'work done');
      } catch (err) {
        const e = ac.signal.aborted && ac.signal.reason instanceof AppError ? ac.signal.reason : err;
        outcome = { ok: false, error: errorToWire(e) };
        this.opts.log.warn({ workId: w.id, kind: w.kind, error: outcome.error.message }, 'work failed');
      }
      await this.report(w.id, session, outcome);
    })().finally(() => {
      this.running.delete(w.id);
      this.quick.delete(w.id);
      void this.claim();
    });
    this.running.set(w.id, entry);
  }

  /** Sends a result, retrying while the control plane is unreachable (within the lease: later it is moot). */
  private async report(id: string, session: string | null, outcome: unknown): Promise<void> {
    const until = Date.now() + this.leaseMs;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.call('POST', `/haven/v1/agent/work/${encodeURIComponent(id)}/result`, { session, ...(outcome as object) });
        return;
      } catch (err) {
        if (err instanceof AppError && err.code !== ErrorCode.HostUnavailable) {
          this.opts.log.warn({ workId: id, err: err.message }, 'result refused: the work ended on the control plane');
          return;
        }
        if (Date.now() > until) {
          this.opts.log.error({ workId: id }, 'result not delivered within the lease; the control plane has failed the work');
          return;
        }
        await new Promise((r) => setTimeout(r, Math.min(5000, 250 * attempt)));
      }
    }
  }

  get runningCount(): number {
    return this.running.size;
  }

  /** Stops taking work, aborts the running work (reported as failed) and stops heartbeats. */
  async stop(reason = 'the agent is shutting down'): Promise<void> {
    this.stopped = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.abortAll(reason);
    await Promise.allSettled([...this.running.values()].map((r) => r.finished));
    if (this.beatTimer) clearInterval(this.beatTimer);
  }
}
