/**
 * Prometheus metrics (prom-client): HTTP requests, jobs, bytes backed up, and the repository's size
 * (measured at most once a minute, or every 15 minutes in an object store that bills per listing
 * request, by the composition root, which caches it). Served at /metrics on the API to a cloud-admin
 * token, and without a token only by buildMetricsServer, a listener of its own the operator opts
 * into (HAVEN_METRICS_PORT, on HAVEN_METRICS_HOST: loopback by default).
 *
 * What an operator alerts on (deploy/prometheus/haven-rules.yml): the time of each volume's and
 * each policy's last backup that succeeded, failed jobs by reason, the repository's free space
 * where known, the last verify (damaged chunks) and GC (dead bytes), the time jobs wait in the
 * queue, and each agent's last heartbeat. The catalog's figures are read when scraped.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RunReports } from '../services/backup-engine.ts';

export interface LastBackups {
  volumes: { projectId: string; volumeId: string; policyId: string | null; at: number }[];
  policies: { projectId: string; policyId: string; createdAt: number; at: number | null }[];
}

/**
 * Where the metrics read what they show when scraped (each optional). A costly source (the
 * repository's size: a listing of the whole store) comes cached by the caller, which shares it with
 * the console's repository page (app/compose.ts); what several gauges read is read once a scrape.
 */
export interface MetricSources {
  repositoryBytes?: () => Promise<number>;
  /** Free bytes and size of the file system the repository lies in (a local folder only). */
  repositorySpace?: (() => Promise<{ free: number; size: number } | null>) | undefined;
  jobCounts?: () => Promise<Record<string, number>>;
  lastBackups?: () => Promise<LastBackups>;
  agents?: () => Promise<{ host: string; heartbeatAt: number }[]>;
  runReports?: () => Promise<RunReports>;
}

/**
 * `fn` shared by those that read it (the gauges; the composition root shares the repository's size
 * with the console's repository page too): one call serves every caller until it settles and, with
 * `ttlMs`, for that long after (a rejection is not kept: the next caller tries again).
 */
export function sharedRead<T>(fn: () => Promise<T>, ttlMs = 0): () => Promise<T> {
  let cached: { at: number; value: Promise<T> } | null = null;
  return () => {
    const now = Date.now();
    if (cached && (cached.at === -1 || now - cached.at <= ttlMs)) return cached.value;
    const entry: { at: number; value: Promise<T> } = { at: -1, value: fn() };
    cached = entry;
    entry.value.then(
      () => (entry.at = Date.now()),
      () => void (cached === entry && (cached = null)),
    );
    return entry.value;
  };
}

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter;
  private readonly requestSeconds: Histogram;
  private readonly jobs: Counter;
  private readonly jobSeconds: Histogram;
  private readonly bytesRead: Counter;
  private readonly bytesNew: Counter;
  private readonly bytesStored: Counter;
  private readonly samples: Counter;

  private readonly failed: Counter;
  private readonly queueWait: Histogram;

  constructor(opts: MetricSources = {}) {
    // prom-client's own names start with process_ (process_cpu_user_seconds_total): the prefix is
    // Haven's alone.
    collectDefaultMetrics({ register: this.registry, prefix: 'haven_' });
    this.requests = new Counter({ name: 'haven_http_requests_total', help: 'HTTP requests by method, route and status', labelNames: ['method', 'route', 'status'], registers: [this.registry] });
    this.requestSeconds = new Histogram({ name: 'haven_http_request_duration_seconds', help: 'HTTP request duration', labelNames: ['method', 'route'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5], registers: [this.registry] });
    this.jobs = new Counter({ name: 'haven_jobs_finished_total', help: 'Jobs finished by type and status', labelNames: ['type', 'status'], registers: [this.registry] });
    this.jobSeconds = new Histogram({ name: 'haven_job_duration_seconds', help: 'Job duration by type', labelNames: ['type'], buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200], registers: [this.registry] });
    this.bytesRead = new Counter({ name: 'haven_backup_volume_bytes_total', help: 'Volume bytes covered by finished backups', registers: [this.registry] });
    this.bytesNew = new Counter({ name: 'haven_backup_new_bytes_total', help: 'Chunk bytes that were new to the repository', registers: [this.registry] });
    this.bytesStored = new Counter({ name: 'haven_backup_stored_bytes_total', help: 'Bytes written to the repository by backups (compressed, encrypted)', registers: [this.registry] });
    this.failed = new Counter({ name: 'haven_jobs_failed_total', help: 'Jobs failed by type and reason (Haven\'s error code, e.g. VOLUME_UNREADABLE)', labelNames: ['type', 'reason'], registers: [this.registry] });
    this.queueWait = new Histogram({ name: 'haven_job_queue_wait_seconds', help: 'Time from a job\'s creation to its start', labelNames: ['type'], buckets: [0.1, 1, 5, 15, 60, 300, 900, 3600, 14400], registers: [this.registry] });
    this.samples = new Counter({ name: 'haven_sample_restores_total', help: 'Scheduled sample restores by result: whole, damaged (the backup became error), skipped (no room, a store outage)', labelNames: ['result'], registers: [this.registry] });
    const repoBytes = opts.repositoryBytes;
    new Gauge({
      name: 'haven_repository_bytes', help: 'Bytes the chunk repository occupies', registers: [this.registry],
      async collect() {
        if (repoBytes) this.set(await repoBytes());
      },
    });
    const jobCounts = opts.jobCounts;
    new Gauge({
      name: 'haven_jobs', help: 'Jobs in the catalog by type and status', labelNames: ['type', 'status'], registers: [this.registry],
      async collect() {
        if (!jobCounts) return;
        this.reset();
        for (const [k, n] of Object.entries(await jobCounts())) {
          const [type, status] = k.split('/');
          this.set({ type: type!, status: status! }, n);
        }
      },
    });
    this.catalogGauges(opts);
  }

  private catalogGauges(opts: MetricSources): void {
    const registers = [this.registry];
    const lastBackups = opts.lastBackups;
    if (lastBackups) {
      const read = sharedRead(lastBackups); // one read of the catalog per scrape for the three gauges
      new Gauge({
        name: 'haven_volume_last_backup_success_timestamp_seconds', help: 'When the newest backup of the volume that succeeded was taken (volumes with one; policy_id: the policy the volume is in, empty if none)', labelNames: ['project_id', 'volume_id', 'policy_id'], registers,
        async collect() {
          const r = await read();
          this.reset();
          for (const v of r.volumes) this.set({ project_id: v.projectId, volume_id: v.volumeId, policy_id: v.policyId ?? '' }, v.at / 1000);
        },
      });
      new Gauge({
        name: 'haven_policy_last_backup_success_timestamp_seconds', help: 'When the newest backup of the policy that succeeded was taken (policies that are on and have volumes; none yet: absent, see haven_policy_created_timestamp_seconds)', labelNames: ['project_id', 'policy_id'], registers,
        async collect() {
          const r = await read();
          this.reset();
          for (const p of r.policies) if (p.at !== null) this.set({ project_id: p.projectId, policy_id: p.policyId }, p.at / 1000);
        },
      });
      new Gauge({
        name: 'haven_policy_created_timestamp_seconds', help: 'When the policy was made (policies that are on and have volumes)', labelNames: ['project_id', 'policy_id'], registers,
        async collect() {
          const r = await read();
          this.reset();
          for (const p of r.policies) this.set({ project_id: p.projectId, policy_id: p.policyId }, p.createdAt / 1000);
        },
      });
    }
    const agents = opts.agents;
    if (agents) {
      new Gauge({
        name: 'haven_agent_last_heartbeat_timestamp_seconds', help: 'The last heartbeat of each host agent (embedded or haven agent)', labelNames: ['host'], registers,
        async collect() {
          this.reset();
          for (const a of await agents()) this.set({ host: a.host }, a.heartbeatAt / 1000);
        },
      });
    }
    const space = opts.repositorySpace;
    if (space) {
      const read = sharedRead(space); // one statfs per scrape for both gauges
      new Gauge({
        name: 'haven_repository_free_bytes', help: 'Free space where the repository is stored, for its user (a local folder; absent for an object store)', registers,
        async collect() {
          const s = await read();
          if (s) this.set(s.free);
        },
      });
      new Gauge({
        name: 'haven_repository_filesystem_bytes', help: 'Size of the file system the repository is stored in (a local folder; absent for an object store)', registers,
        async collect() {
          const s = await read();
          if (s) this.set(s.size);
        },
      });
    }
    const runs = opts.runReports;
    if (runs) {
      const read = sharedRead(runs); // one read per scrape for every run-report gauge
      const gauge = (name: string, help: string, pick: (r: RunReports) => number | null, labelNames: string[] = [], labels: (r: RunReports) => Record<string, string> = () => ({})): void =>
        void new Gauge({
          name, help, labelNames, registers,
          async collect() {
            const r = await read();
            this.reset();
            const v = pick(r);
            if (v !== null) this.set(labels(r), v);
          },
        });
      gauge('haven_verify_last_run_timestamp_seconds', 'When the last verify (haven verify, or the service\'s) ended; scope: all, or some backups', (r) => (r.verify ? r.verify.finishedAt / 1000 : null), ['scope'], (r) => ({ scope: r.verify?.scope ?? 'all' }));
      gauge('haven_verify_damaged_chunks', 'Damaged or missing chunks the last verify found', (r) => (r.verify ? r.verify.damagedChunks + r.verify.missingChunks : null), ['scope'], (r) => ({ scope: r.verify?.scope ?? 'all' }));
      // Without labels a gauge always has a sample: 0 until a GC is recorded.
      gauge('haven_gc_last_run_timestamp_seconds', 'When the last garbage collection ended (0: none recorded)', (r) => (r.gc ? r.gc.finishedAt / 1000 : 0));
      gauge('haven_gc_dead_bytes', 'Dead bytes left in packs after the last garbage collection', (r) => (r.gc ? r.gc.deadBytes : 0));
      gauge('haven_gc_reclaimed_bytes', 'Bytes the last garbage collection reclaimed', (r) => (r.gc ? r.gc.reclaimedBytes : 0));
    }
  }

  // Label children cached per (method, route, status): resolving labels on every request costs more
  // than the increment itself.
  private readonly requestChildren = new Map<string, { count: { inc(): void }; time: { observe(v: number): void } }>();

  observeRequest(method: string, route: string, status: number, seconds: number): void {
    const key = `${method} ${route} ${status}`;
    let c = this.requestChildren.get(key);
    if (!c) {
      c = { count: this.requests.labels(method, route, String(status)), time: this.requestSeconds.labels(method, route) };
      this.requestChildren.set(key, c);
    }
    c.count.inc();
    c.time.observe(seconds);
  }

  observeJob(type: string, status: string, seconds: number, errorCode?: string | null): void {
    this.jobs.inc({ type, status });
    this.jobSeconds.observe({ type }, seconds);
    if (status === 'FAIL') this.failed.inc({ type, reason: errorCode ?? 'UNKNOWN' });
  }

  observeJobStart(type: string, waitedSeconds: number): void {
    this.queueWait.observe({ type }, Math.max(0, waitedSeconds));
  }

  observeSample(result: 'whole' | 'damaged' | 'skipped'): void {
    this.samples.inc({ result });
  }

  observeBackup(b: { sizeBytes: number; newBytes: number; storedBytes: number }): void {
    this.bytesRead.inc(b.sizeBytes);
    this.bytesNew.inc(b.newBytes);
    this.bytesStored.inc(b.storedBytes);
  }
}

/** The separate metrics listener: GET /metrics without a token, nothing else (no listen here). */
export function buildMetricsServer(metrics: Metrics): FastifyInstance {
  const app = Fastify({ logger: false });
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  app.setNotFoundHandler((_req, reply) => reply.code(404).send({ error: { code: 404, title: 'Not Found', message: 'Only /metrics is served here.' } }));
  return app;
}
