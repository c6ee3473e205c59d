/**
 * Which host does a volume's file work, and how it is reached: this process itself (the embedded
 * default, and `haven serve` on a host of its own volumes) or the `haven agent` of another host,
 * through work queued in the catalog (agent_work) that the agent claims over the HTTP API, holds
 * under a lease it renews with its heartbeats, and ends with its result. The control plane never
 * opens another host's files; volume data goes from the agent to the repository directly.
 *
 * Failure: work whose lease runs out (the agent died, or lost the control plane) fails with
 * AGENT_LOST, so a job never waits forever and never runs twice at once: an agent that comes back
 * is told to drop it, and its late result is refused. Work for a host with no agent online fails
 * at once with HOST_UNAVAILABLE.
 */
import type { Catalog } from '../catalog/catalog.ts';
import type { AgentWork } from '../catalog/agent-queries.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, errorFromWire, errorToWire, ErrorCode, isAppError } from '../domain/errors.ts';
import { agentOnline } from '../domain/host.ts';
import { newUuid } from '../domain/ids.ts';
import type { BackupOrder, BackupSummary, HostCall, ServerProtectOrder, VolumeFileRef, VolumeHost, WorkControl } from './volume-host.ts';

export interface VolumeHostsOptions {
  /** This process's own host name (HAVEN_HOST_NAME); its volumes are worked on here. */
  localName: string;
  /** How long an agent's work and registration last without a heartbeat (ms). */
  leaseMs: number;
  /** How often a waiting job looks at its work (ms). */
  pollMs?: number;
}

export class VolumeHosts {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly local: VolumeHost | null;
  readonly opts: Required<VolumeHostsOptions>;

  constructor(catalog: Catalog, clock: Clock, local: VolumeHost | null, opts: VolumeHostsOptions) {
    this.catalog = catalog;
    this.clock = clock;
    this.local = local;
    this.opts = { pollMs: 250, ...opts };
  }

  /** Whether a volume's host is this process (which holds volumes itself). */
  isLocal(host: string | null): boolean {
    return this.local !== null && (host === null || host === this.opts.localName);
  }

  /** The host of a volume (null: the control plane's own). */
  of(host: string | null): VolumeHost {
    if (host === null || host === this.opts.localName) {
      if (this.local) return this.local;
      throw new AppError(ErrorCode.HostUnavailable, host === null ? 'this volume belongs to the control plane\'s own host, and this process holds no volumes (HAVEN_LOCAL_AGENT=false)' : `host ${host} is this control plane's, which holds no volumes (HAVEN_LOCAL_AGENT=false)`);
    }
    return new RemoteVolumeHost(host, this.catalog, this.clock, this.opts);
  }

  /**
   * The host an adoption names (Cinder's `host`: "NAME", "NAME@backend" or "NAME@backend#pool").
   * This process's own name, "haven" (what it showed as os-vol-host-attr:host before agents) or no
   * name: this process. A deployment without agents takes any name as itself, as Haven always did
   * (Cinder clients send a host whatever it is); with agents, a name must be an agent's.
   */
  async placeAdoption(host: string | null | undefined): Promise<string | null> {
    const name = (host ?? '').split('#')[0]!.split('@')[0]!.trim();
    if ((!name || name === this.opts.localName || name === 'haven') && this.local) return null;
    const agents = await this.catalog.agents.listAgents();
    if (name && agents.some((a) => a.host === name && !a.embedded)) return name;
    if (this.local && !agents.some((a) => !a.embedded)) return null;
    throw new AppError(ErrorCode.InvalidArgument, name ? `host ${name} has no Haven agent (GET /haven/v1/agents lists them)` : 'name the host whose file this is (the request\'s host: one of GET /haven/v1/agents)');
  }

  /**
   * The host of a new volume: the online, not drained host with the fewest volumes (this process counts, when it holds volumes). This
   * process's own volumes are recorded with no host (null): they stay its own whatever the
   * machine's name becomes (a container's host name changes with every container).
   */
  async place(): Promise<string | null> {
    const now = this.clock.now();
    const agents = await this.catalog.agents.listAgents();
    const localName = this.opts.localName;
    const counts = await this.catalog.agents.volumeCounts();
    const candidates = agents.filter((a) => !a.embedded && !a.draining && agentOnline(a, now, this.opts.leaseMs)).map((a) => a.host);
    const localDrained = agents.find((a) => a.host === localName && a.embedded)?.draining ?? false;
    if (this.local && !localDrained) candidates.push(localName);
    if (!candidates.length) throw new AppError(ErrorCode.HostUnavailable, 'no host can take a new volume: no Haven agent is online and not drained (GET /haven/v1/agents)');
    const load = (h: string): number => (h === localName && this.local ? (counts.get(null) ?? 0) + (counts.get(h) ?? 0) : (counts.get(h) ?? 0));
    const best = candidates.sort((a, b) => load(a) - load(b) || a.localeCompare(b))[0]!;
    return best === localName && this.local ? null : best;
  }
}

/** Another host's volumes: each call is work queued for its agent, awaited here. */
class RemoteVolumeHost implements VolumeHost {
  readonly host: string;
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly opts: Required<VolumeHostsOptions>;

  constructor(host: string, catalog: Catalog, clock: Clock, opts: Required<VolumeHostsOptions>) {
    this.host = host;
    this.catalog = catalog;
    this.clock = clock;
    this.opts = opts;
  }

  createVolumeFile(o: Parameters<VolumeHost['createVolumeFile']>[0]): Promise<{ path: string; fileId: string }> {
    return this.call('createVolumeFile', o);
  }
  inspectAdoption(o: Parameters<VolumeHost['inspectAdoption']>[0]): ReturnType<VolumeHost['inspectAdoption']> {
    return this.call('inspectAdoption', o);
  }
  removeVolumeFile(o: { id: string; path: string; fileId: string | null }): Promise<void> {
    return this.call('removeVolumeFile', o);
  }
  snapshotVolume(o: { volume: VolumeFileRef; snapshotId: string }): Promise<{ path: string }> {
    return this.call('snapshotVolume', o);
  }
  removeSnapshotFile(o: { snapshotId?: string; path?: string }): Promise<void> {
    return this.call('removeSnapshotFile', o);
  }
  backup(o: BackupOrder, ctl: WorkControl): Promise<BackupSummary> {
    return this.call('backup', o, ctl);
  }
  restore(o: { backupId: string; target: VolumeFileRef }, ctl: WorkControl): Promise<void> {
    return this.call('restore', o, ctl);
  }
  protectServer(o: ServerProtectOrder, ctl: WorkControl): Promise<BackupSummary[]> {
    return this.call('protectServer', o, ctl);
  }
  thawServer(o: { hookEnv: Record<string, string> }): Promise<void> {
    return this.call('thawServer', o);
  }
  removeServerCopies(o: { itemId: string }): Promise<void> {
    return this.call('removeServerCopies', o);
  }

  openLive(o: { backupId: string; target: VolumeFileRef; exportName: string }): Promise<{ uri: string; sizeBytes: number }> {
    return this.call('openLive', o);
  }

  liveCopy(o: { exportName: string }, ctl: WorkControl): Promise<{ writtenBytes: number }> {
    return this.call('liveCopy', o, ctl);
  }

  endLive(o: { exportName: string }): Promise<void> {
    return this.call('endLive', o);
  }

  /** Why no work can be queued for this host now, or null. */
  private async unavailable(): Promise<string | null> {
    const a = await this.catalog.agents.getAgent(this.host);
    if (!a) return `no Haven agent has registered for host ${this.host}`;
    if (a.draining) return `host ${this.host} is drained: it takes no new work (POST /haven/v1/agents/${this.host}/undrain)`;
    if (!agentOnline(a, this.clock.now(), this.opts.leaseMs)) return `the agent of host ${this.host} is offline: last heard from ${new Date(a.heartbeatAt).toISOString()}, its lease is ${this.opts.leaseMs / 1000} s`;
    return null;
  }

  private async call<T>(kind: HostCall, request: unknown, ctl?: WorkControl): Promise<T> {
    const down = await this.unavailable();
    if (down) throw new AppError(ErrorCode.HostUnavailable, down);
    const id = newUuid();
    await this.catalog.agents.insertWork({ id, host: this.host, jobId: ctl?.jobId ?? null, kind, request, createdAt: this.clock.now() });
    // Quick calls (an API request waits on them) have a time limit; a job's work has its job's signal.
    const deadline = ctl ? null : AbortSignal.timeout(QUICK_CALL_MS);
    const signal = ctl?.signal ?? deadline!;
    let cancelled = false;
    const started = Date.now();
    let lastSeen = started;
    // A catalog step is tried again while the catalog's connection is lost, for as long as a lease
    // (the agent goes on meanwhile).
    const busy = async <R>(step: () => Promise<R>): Promise<R> => {
      for (;;) {
        try {
          const r = await step();
          lastSeen = Date.now();
          return r;
        } catch (err) {
          if (!isAppError(err, ErrorCode.ServiceBusy) || Date.now() - lastSeen > this.opts.leaseMs) throw err;
          await new Promise((r) => setTimeout(r, this.opts.pollMs));
        }
      }
    };
    for (;;) {
      // Quick work is seen at once; long work (a backup of hours) is looked at once a second.
      await new Promise((r) => setTimeout(r, Date.now() - started < 5000 ? this.opts.pollMs : Math.max(this.opts.pollMs, 1000)));
      const w = await busy(() => this.catalog.agents.getWork(id));
      if (!w) throw new AppError(ErrorCode.Internal, `work ${id} for host ${this.host} disappeared from the catalog`);
      if (w.status === 'done') return w.result as T;
      if (w.status === 'failed') throw errorFromWire(w.error ?? { code: ErrorCode.Internal, message: 'the agent reported no reason' });
      if (w.status === 'running' && w.progressTotal) ctl?.onProgress(w.progressDone, w.progressTotal);
      if (signal.aborted && !cancelled) {
        cancelled = true;
        const reason = deadline?.aborted
          ? new AppError(ErrorCode.HostUnavailable, `the agent of host ${this.host} did not do ${kind} within ${QUICK_CALL_MS / 1000} s`, { details: { timedOut: true } })
          : signal.reason instanceof Error ? signal.reason : new AppError(ErrorCode.Cancelled, 'cancelled');
        await busy(() => this.catalog.agents.cancelWork(id, reason.message));
        // Queued work is not handed out once cancelled: it ends here. Running work ends when the
        // agent has stopped it (its next heartbeat), or when its lease runs out; a quick call's
        // caller does not wait for that.
        if (await busy(() => this.catalog.agents.finishWork(id, { status: 'failed', error: errorToWire(reason) }, this.clock.now(), { fromStatuses: ['queued'] }))) throw reason;
        if (deadline) throw reason;
      }
      await busy(() => this.expireIfLost(w));
    }
  }

  /**
   * Fails the work when its agent is gone: its lease ran out (with a third of a lease's grace, for
   * clocks that differ between control planes; the agent stops its work two thirds of a lease
   * after its last answered heartbeat, well before), or it never came to take it.
   */
  private async expireIfLost(w: AgentWork): Promise<void> {
    const now = this.clock.now();
    const grace = Math.floor(this.opts.leaseMs / 3);
    if (w.status === 'running' && w.leaseUntil !== null && w.leaseUntil + grace < now) {
      const why = `the agent of host ${this.host} stopped renewing its lease on this work (last renewed ${new Date(w.leaseUntil - this.opts.leaseMs).toISOString()}, lease ${this.opts.leaseMs / 1000} s): it is presumed gone, and the work failed`;
      // CAS on the lease: a renewal that landed meanwhile wins.
      if (await this.catalog.agents.expireWork(w.id, now - grace, { code: ErrorCode.AgentLost, message: why }, now)) await this.catalog.agents.cancelWork(w.id, why);
    } else if (w.status === 'queued') {
      const a = await this.catalog.agents.getAgent(this.host);
      const why = !a || !agentOnline(a, now, this.opts.leaseMs) ? `the agent of host ${this.host} went offline before it took this work` : a.draining ? `host ${this.host} was drained before its agent took this work` : null;
      if (why) await this.catalog.agents.finishWork(w.id, { status: 'failed', error: { code: ErrorCode.HostUnavailable, message: why } }, now, { fromStatuses: ['queued'] });
    }
  }
}

/** How long an API request waits for a host's quick work (a volume's file made or removed). */
const QUICK_CALL_MS = 120_000;
