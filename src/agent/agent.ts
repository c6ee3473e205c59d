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
import { AppError, ErrorCode } from '../domain/errors.ts';
import { errorToWire } from '../services/volume-hosts.ts';
import { isHostCall, type VolumeHost, type WorkControl } from '../services/volume-host.ts';

export interface AgentLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

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
  private beatTimer: NodeJS.Timeout | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private lastBeatOk = 0;
  private claiming = false;
  private stopped = false;
  draining = false;

  constructor(opts: AgentOptions) {
    this.opts = { pollMs: 1000, ...opts };
  }

  private async call<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.opts.controlUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.opts.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(20_000),
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
    this.pollTimer = setInterval(() => void this.claim(), this.opts.pollMs);
  }

  private async register(): Promise<void> {
    const r = await this.call<{ host: string; session: string; lease_seconds: number }>('POST', '/haven/v1/agent/register', { version: this.opts.version, volume_roots: this.opts.volumeRoots, capabilities: this.opts.capabilities });
    this.session = r.session;
    this.hostName = r.host;
    this.leaseMs = r.lease_seconds * 1000;
    this.lastBeatOk = Date.now();
    this.opts.log.info({ host: r.host, session: r.session, leaseSeconds: r.lease_seconds }, 'agent registered');
  }

  private async beat(): Promise<void> {
    if (!this.session || this.stopped) return;
    try {
      const work = [...this.running].map(([id, r]) => ({ id, done: r.done, total: r.total }));
      const r = await this.call<{ stop: { id: string; reason: string }[]; draining: boolean }>('POST', '/haven/v1/agent/heartbeat', { session: this.session, work });
      this.lastBeatOk = Date.now();
      if (r.draining !== this.draining) this.opts.log.info({ draining: r.draining }, r.draining ? 'host drained: no new work' : 'host undrained');
      this.draining = r.draining;
      for (const s of r.stop) this.abort(s.id, s.reason);
    } catch (err) {
      if (err instanceof AppError && err.code === ErrorCode.WorkNotHeld) {
        // Another agent registered for this host since (its work here was abandoned there): two
        // agents of one host would take turns abandoning each other's work, so this one stops.
        const why = `another agent registered for host ${this.hostName} since this one did; one agent per host: this one stops`;
        this.opts.log.error({ err: (err as Error).message }, why);
        void this.stop(why).then(() => this.opts.onSuperseded?.(why));
        return;
      }
      this.opts.log.warn({ err: (err as Error).message }, 'heartbeat failed');
      // Silent for a whole lease: the control plane failed this work already; it must not go on.
      if (Date.now() - this.lastBeatOk > this.leaseMs) this.abortAll(`the control plane was unreachable for longer than the lease (${this.leaseMs / 1000} s)`);
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
    const free = this.opts.slots - this.running.size;
    if (free < 1) return;
    this.claiming = true;
    try {
      const r = await this.call<{ work: { id: string; kind: string; request: unknown }[] }>('POST', '/haven/v1/agent/claim', { session: this.session, slots: free });
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
