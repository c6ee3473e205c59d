/**
 * Prometheus metrics (prom-client): HTTP requests, jobs, bytes backed up, and the repository's size
 * (measured at most once a minute, or every 15 minutes in an object store that bills per listing
 * request: listing a large repository is not free). Served at /metrics on the API to a cloud-admin
 * token, and without a token only by buildMetricsServer, a listener of its own the operator opts
 * into (HAVEN_METRICS_PORT, on HAVEN_METRICS_HOST: loopback by default).
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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

  constructor(opts: { repositoryBytes?: () => Promise<number>; repositoryBytesTtlMs?: number; jobCounts?: () => Promise<Record<string, number>> } = {}) {
    collectDefaultMetrics({ register: this.registry, prefix: 'haven_process_' });
    this.requests = new Counter({ name: 'haven_http_requests_total', help: 'HTTP requests by method, route and status', labelNames: ['method', 'route', 'status'], registers: [this.registry] });
    this.requestSeconds = new Histogram({ name: 'haven_http_request_duration_seconds', help: 'HTTP request duration', labelNames: ['method', 'route'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5], registers: [this.registry] });
    this.jobs = new Counter({ name: 'haven_jobs_finished_total', help: 'Jobs finished by type and status', labelNames: ['type', 'status'], registers: [this.registry] });
    this.jobSeconds = new Histogram({ name: 'haven_job_duration_seconds', help: 'Job duration by type', labelNames: ['type'], buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200], registers: [this.registry] });
    this.bytesRead = new Counter({ name: 'haven_backup_volume_bytes_total', help: 'Volume bytes covered by finished backups', registers: [this.registry] });
    this.bytesNew = new Counter({ name: 'haven_backup_new_bytes_total', help: 'Chunk bytes that were new to the repository', registers: [this.registry] });
    this.bytesStored = new Counter({ name: 'haven_backup_stored_bytes_total', help: 'Bytes written to the repository by backups (compressed, encrypted)', registers: [this.registry] });
    this.samples = new Counter({ name: 'haven_sample_restores_total', help: 'Scheduled sample restores by result: whole, damaged (the backup became error), skipped (no room, a store outage)', labelNames: ['result'], registers: [this.registry] });
    const repoBytes = opts.repositoryBytes;
    const repoBytesTtl = opts.repositoryBytesTtlMs ?? 60_000;
    let cached: { at: number; value: number } | null = null;
    new Gauge({
      name: 'haven_repository_bytes', help: 'Bytes the chunk repository occupies', registers: [this.registry],
      async collect() {
        if (!repoBytes) return;
        if (!cached || Date.now() - cached.at > repoBytesTtl) cached = { at: Date.now(), value: await repoBytes() };
        this.set(cached.value);
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

  observeJob(type: string, status: string, seconds: number): void {
    this.jobs.inc({ type, status });
    this.jobSeconds.observe({ type }, seconds);
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
