/**
 * The composition root: the only module that knows the concrete classes. Builds the catalog, the
 * object store and engine, the services, the job runner and the HTTP server from a Config.
 */
import { promises as fs } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../api/server.ts';
import { buildMetricsServer, Metrics, sharedRead } from '../api/metrics.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { s3Settings, type Config } from '../config/config.ts';
import { systemClock, type Clock } from '../domain/clock.ts';
import { openFailure, openObjectStore } from '../storage/open-store.ts';
import { describeLocation, isS3Url } from '../storage/s3-url.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { BackupEngine, readPasswordFile } from '../services/backup-engine.ts';
import { BackupService } from '../services/backup-service.ts';
import { IdentityService } from '../services/identity-service.ts';
import { JobRunner } from '../services/job-runner.ts';
import { PolicyScheduler } from '../scheduler/scheduler.ts';
import { csbsPolicySource, vbsPolicySource } from '../scheduler/sources.ts';
import { parsePattern } from '../scheduler/rrule.ts';
import { ScheduleError } from '../scheduler/schedule-spec.ts';
import { CsbsPolicyService } from '../services/csbs-policy-service.ts';
import { CsbsTagService } from '../services/csbs-tag-service.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { pino, type Logger as PinoLogger } from 'pino';
import { VolumeService } from '../services/volume-service.ts';
import { VolumeFiles } from '../services/volume-files.ts';
import { LocalVolumeHost } from '../services/local-volume-host.ts';
import { VolumeHosts } from '../services/volume-hosts.ts';
import { AgentService } from '../services/agent-service.ts';
import { ExportService } from '../services/export-service.ts';
import { LiveExports } from '../services/live-exports.ts';
import { NbdEndpoint } from '../nbd/nbd-endpoint.ts';
import type { ImageSource } from '../engine/backup-image.ts';
import { createSecureContext } from 'node:tls';
import { SampleRestorer } from '../services/sample-restore.ts';
import { HAVEN_VERSION, hostCapabilities } from '../agent/capabilities.ts';
import { PolicyService } from '../services/policy-service.ts';
import { SharingService } from '../services/sharing-service.ts';
import { ServerService } from '../services/server-service.ts';
import { ServerBackupService } from '../services/server-backup-service.ts';
import { QuotaService } from '../services/quota-service.ts';
import { RepositoryService } from '../services/repository-service.ts';
import { openCatalog } from './open-catalog.ts';
import { CachedProbe, probeWritable } from './health.ts';
import { loadTlsFiles } from './tls.ts';

export interface App {
  config: Config;
  server: FastifyInstance;
  catalog: Catalog;
  engine: BackupEngine;
  identity: IdentityService;
  volumes: VolumeService;
  backups: BackupService;
  policies: PolicyService;
  runner: JobRunner;
  scheduler: PolicyScheduler;
  /** Agents: tokens, registrations, the work queued for hosts (services/agent-service.ts). */
  agents: AgentService;
  /** Backups served as NBD disks (POST .../cloudbackups/{id}/export). */
  exports: ExportService;
  /** Scheduled sample restores (HAVEN_SAMPLE_RESTORE_HOURS). */
  samples: SampleRestorer;
  /** The repository's figures and its size over time (GET /haven/v1/repository). */
  repository: RepositoryService;
  /** Where the generated admin password was written (null when HAVEN_ADMIN_PASSWORD is set). */
  adminPasswordFile: string | null;
  /** The admin was made by another process sharing the catalog: its password is in that one's data folder. */
  adminPasswordShared: boolean;
  /** HTTPS: re-reads HAVEN_TLS_CERT/KEY for new connections (open ones keep theirs); returns the new certificate's description. */
  reloadTls(): string;
  /** The token-less /metrics listener (HAVEN_METRICS_PORT set), not yet listening; null otherwise. */
  metricsServer: FastifyInstance | null;
  close(): Promise<void>;
}

export interface ComposeOptions {
  clock?: Clock;
  /** A pino logger (default: silent). */
  logger?: PinoLogger;
  /** Wraps the object store (fault injection in tests). */
  wrapStore?: (s: ObjectStore) => ObjectStore;
  /** Engine worker threads (default: one per core). */
  threads?: number;
  /** Start the job runner (default true). */
  runJobs?: boolean;
  /** Start the policy scheduler (default: as runJobs). */
  runScheduler?: boolean;
}

const silentLogger: PinoLogger = pino({ level: 'silent' });

/** The admin password: HAVEN_ADMIN_PASSWORD, else generated once into a 0600 file in the data folder. */
/** 'ok' when the repository's config can be read where it was opened, else why not. */
async function probeRepository(engine: BackupEngine): Promise<string> {
  try {
    return (await engine.configPresent()) ? 'ok' : 'the repository config is gone (the folder or bucket was emptied or replaced?)';
  } catch (err) {
    return `unreachable: ${(err as Error).message}`;
  }
}

/** Free bytes (for an unprivileged user) and size of the file system `dir` lies in (statfs). */
async function fileSystemSpace(dir: string): Promise<{ free: number; size: number }> {
  const st = await fs.statfs(dir);
  return { free: Number(st.bavail) * Number(st.bsize), size: Number(st.blocks) * Number(st.bsize) };
}

async function adminPassword(config: Config): Promise<{ password: string; file: string | null; generated: boolean }> {
  if (config.adminPassword) return { password: config.adminPassword, file: null, generated: false };
  const file = path.join(config.dataDir, 'admin-password');
  try {
    return { password: (await fs.readFile(file, 'utf8')).trim(), file, generated: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const password = randomBytes(18).toString('base64url');
  await fs.writeFile(file, `${password}\n`, { mode: 0o600, flag: 'wx' });
  return { password, file, generated: true };
}

export async function composeApp(config: Config, opts: ComposeOptions = {}): Promise<App> {
  const clock = opts.clock ?? systemClock;
  // A bad certificate or key fails the start before anything is created.
  const tls = config.tlsCert ? loadTlsFiles(config.tlsCert, config.tlsKey) : null;
  const { db, catalog } = await openCatalog(config);
  let engine: BackupEngine | null = null;
  try {
    let store: ObjectStore = await openObjectStore(config.repositoryUrl, s3Settings(config));
    if (opts.wrapStore) store = opts.wrapStore(store);
    const repoPassword = config.repoPasswordFile ? await readPasswordFile(config.repoPasswordFile) : undefined;
    engine = await BackupEngine.open(store, { password: repoPassword, threads: opts.threads, nice: config.workerNice }).catch(openFailure(config.repositoryUrl));

    const identity = new IdentityService(catalog, clock, config.tokenTtlSeconds, { adminProject: config.adminProject });
    const admin = await adminPassword(config);
    const boot = await identity.bootstrap(admin.password);
    if (config.adminPassword) await identity.resetPassword('admin', config.adminPassword);
    // Another process sharing the catalog made the admin first, with its own password.
    const adminPasswordShared = admin.generated && !boot.created;
    let adminPasswordFile = admin.file;
    if (adminPasswordShared) {
      // The password generated here would not work, so it must not be offered.
      if (admin.file) await fs.rm(admin.file, { force: true });
      adminPasswordFile = null;
    }

    const eng = engine;
    const log = opts.logger ?? silentLogger;
    // The repository's size, free space and run reports, read once for the metrics and the
    // repository page (GET /haven/v1/repository) alike: a scrape and a page load share one listing.
    const s3 = isS3Url(config.repositoryUrl);
    const repositoryBytes = sharedRead(() => eng.storedBytes(), s3 ? 15 * 60_000 : 60_000); // S3 bills each LIST request
    const repositorySpace = s3 ? undefined : () => fileSystemSpace(config.repositoryUrl);
    const runReports = sharedRead(() => eng.runReports(), s3 ? 60_000 : 0); // two small GETs per read
    const metrics = new Metrics({
      repositoryBytes,
      repositorySpace,
      jobCounts: () => catalog.jobs.countByStatus(),
      lastBackups: async () => ({ volumes: await catalog.backups.lastSuccessByVolume(), policies: await catalog.policies.lastSuccessByPolicy() }),
      agents: () => catalog.agents.listAgents(),
      runReports,
    });
    const repository = new RepositoryService(catalog, clock, {
      ...describeLocation(config.repositoryUrl),
      encrypted: eng.repo.keys !== null,
      bytes: repositoryBytes,
      measureBytes: () => eng.storedBytes(),
      space: async () => (repositorySpace ? repositorySpace() : null),
      runReports,
    }, log);
    // Each GC's size after becomes a growth sample.
    eng.afterGc = (report) => repository.recordGc(report);
    // Haven's own folders are never volumes, whatever HAVEN_VOLUME_ROOTS says.
    const files = new VolumeFiles({ dataDir: config.dataDir, volumeRoots: config.volumeRoots, privateDirs: isS3Url(config.repositoryUrl) ? [] : [config.repositoryUrl] });
    // This process's one NBD listener (HAVEN_NBD_LISTEN, started at the first export): exports of
    // backups, and live restores of this host's volumes.
    let nbdTls = tls ? createSecureContext({ cert: tls.cert, key: tls.key }) : null;
    const nbd = new NbdEndpoint({ listen: config.nbdListen, publicHost: config.nbdPublicHost, tls: nbdTls ? () => nbdTls! : null, onError: (err, where) => log.warn({ err, where }, 'NBD') });
    const images = (): ImageSource => eng.imageSource(config.nbdCacheMib * 1024 * 1024);
    const liveExports = config.localAgent ? new LiveExports(images, nbd, (err, where) => log.warn({ err, where }, 'live restore')) : null;
    // This process holds volumes itself (the embedded default) unless it is a control plane of agents only.
    const local = config.localAgent ? new LocalVolumeHost({ host: config.hostName, files, engine, dataDir: config.dataDir, freezeCommand: config.freezeCommand, thawCommand: config.thawCommand, live: liveExports }) : null;
    const hosts = new VolumeHosts(catalog, clock, local, { localName: config.hostName, leaseMs: config.agentLeaseSeconds * 1000 });
    const agents = new AgentService(catalog, clock, { leaseMs: config.agentLeaseSeconds * 1000 });
    const volumes = new VolumeService(catalog, clock, hosts, { availabilityZone: config.availabilityZone });
    let runner: JobRunner | null = null;
    const quotas = new QuotaService(catalog, { volumes: config.quotaVolumes, gigabytes: config.quotaGigabytes, backups: config.quotaBackups, backup_gigabytes: config.quotaBackupGigabytes, per_volume_gigabytes: config.maxVolumeGb });
    volumes.limits = { quotas, maxVolumeGb: config.maxVolumeGb };
    let policiesRef: PolicyService | null = null;
    const backups = new BackupService(catalog, clock, engine, { backups: config.quotaBackups, backupGigabytes: config.quotaBackupGigabytes }, {
      jobQueued: () => runner?.wake(),
      jobCancelled: (jobId, reason) => runner?.cancel(jobId, reason),
      backupFinished: (b) => metrics.observeBackup(b),
      backupSucceeded: async (b) => policiesRef?.applyRetention(b),
    }, log, hosts);
    const policies = new PolicyService(catalog, clock, backups, config.maxPoliciesPerProject);
    policiesRef = policies;
    const serverBackups = new ServerBackupService(catalog, clock, backups, { hosts }, () => runner?.wake());
    const csbsPolicies = new CsbsPolicyService(catalog, clock, serverBackups, (pattern) => {
      try {
        parsePattern(pattern);
      } catch (err) {
        if (err instanceof ScheduleError) throw new AppError(ErrorCode.InvalidArgument, `trigger pattern: ${err.message}`);
        throw err;
      }
    });
    serverBackups.onItemAvailable = (item) => csbsPolicies.applyRetention(item);
    const scheduler = new PolicyScheduler(clock, [vbsPolicySource(catalog, policies), csbsPolicySource(catalog, csbsPolicies, log)], log, { graceMs: config.scheduleGraceSeconds * 1000 });
    runner = new JobRunner(catalog, clock, { ...backups.handlers(), ...serverBackups.handlers() }, log, {
      concurrency: config.jobConcurrency,
      // SQLite: this process owns the catalog, so a running job found at start-up is orphaned.
      // PostgreSQL: other processes may be running jobs; only stale heartbeats mean orphans.
      exclusive: db.dialect === 'sqlite',
      onJobFinished: (job, status, ms, errorCode) => metrics.observeJob(job.type, status, ms / 1000, errorCode),
      onJobStarted: (job, waitedMs) => metrics.observeJobStart(job.type, waitedMs / 1000),
    });
    const jobsStarted = opts.runJobs !== false;
    const dataProbe = new CachedProbe(() => probeWritable(config.dataDir, '.healthz-'));
    // A local repository is probed in its temp-file namespace (.tmp-*, which listings skip and the
    // store's cleanup removes); an S3 repository is not: a write there costs a billed request.
    const repositoryProbe = isS3Url(config.repositoryUrl) ? null : new CachedProbe(() => probeWritable(config.repositoryUrl, '.tmp-healthz-'));
    // Any repository, S3 too: its config must still be there and readable (one HEAD request, at
    // most every 3 s locally, every 30 s in S3, which bills requests).
    const repositoryReadable = new CachedProbe(() => probeRepository(eng), isS3Url(config.repositoryUrl) ? 30_000 : undefined);
    const exports = new ExportService(backups, hosts, images, nbd, clock, {
      maxTtlSeconds: config.exportMaxHours * 3600,
      overlayDir: path.join(config.dataDir, 'overlays'),
      onError: (err, where) => log.warn({ err, where }, 'NBD export'),
    });
    backups.live = exports;
    volumes.servedLive = (id) => exports.serving(id);
    const server = await buildServer({
      config, identity, volumes, backups, policies, sharing: new SharingService(catalog, clock), servers: new ServerService(catalog, clock, config.availabilityZone), serverBackups, csbsPolicies, csbsTags: new CsbsTagService(catalog), metrics,
      quotas,
      agents,
      exports,
      repository,
      health: async () => {
        const parts: Record<string, string> = {};
        try {
          await db.get('SELECT 1');
          parts.catalog = 'ok';
        } catch {
          parts.catalog = 'unavailable';
        }
        // The SQLite catalog lives in the data folder: a folder that cannot be written is a catalog
        // that cannot be written.
        const data = await dataProbe.get();
        parts.dataFolder = data;
        if (parts.catalog === 'ok' && db.dialect === 'sqlite' && data !== 'ok') parts.catalog = data;
        const readable = await repositoryReadable.get();
        parts.repository = readable !== 'ok' ? readable : repositoryProbe ? await repositoryProbe.get() : 'ok';
        parts.jobRunner = jobsStarted ? 'ok' : 'disabled';
        return parts;
      },
    }, { logger: log, ...(tls ? { https: tls } : {}) });
    if (jobsStarted) await runner.start();
    // Backups left `error` by damage that has since been mended come back (docs/state-machines.md).
    if (jobsStarted) backups.reverifyErrorBackupsSoon();
    if (opts.runScheduler ?? jobsStarted) scheduler.start();
    // A backup is never trusted blindly: one at random is restored and checked now and then.
    const samples = new SampleRestorer(catalog, engine, clock, log, { dataDir: config.dataDir, intervalMs: config.sampleRestoreHours * 3600_000 });
    samples.onResult = (res) => metrics.observeSample(res.skipped ? 'skipped' : res.ok ? 'whole' : 'damaged');
    if (jobsStarted) samples.start();
    // The repository's size at start, then hourly (the console's growth chart).
    if (jobsStarted) repository.start();
    const r = runner;
    const purge = setInterval(() => identity.purgeExpiredTokens().catch((err: unknown) => log.warn({ err }, 'purging expired tokens failed')), 3600_000);
    purge.unref();
    // The embedded agent: this host is listed with the others (GET /haven/v1/agents) and takes new volumes.
    let localBeat: NodeJS.Timeout | null = null;
    if (local && jobsStarted) {
      const info = { version: HAVEN_VERSION, volumeRoots: config.volumeRoots, capabilities: hostCapabilities() };
      const existing = await catalog.agents.getAgent(config.hostName);
      // A `haven agent` registered under this host's name keeps its registration.
      if (!existing || existing.embedded) await agents.register(config.hostName, info, true);
      // An embedded host silent for a week is a machine renamed or gone: it leaves the list.
      await catalog.agents.forgetSilentEmbedded(clock.now() - 7 * 24 * 3600_000);
      localBeat = setInterval(() => {
        catalog.agents.heartbeatEmbedded(config.hostName, clock.now()).catch((err: unknown) => log.warn({ err }, 'the embedded agent\'s heartbeat failed'));
      }, Math.max(1000, (config.agentLeaseSeconds * 1000) / 3));
      localBeat.unref();
    }
    const metricsServer = config.metricsPort ? buildMetricsServer(metrics) : null;
    return {
      config, server, catalog, engine, identity, volumes, backups, policies, runner: r, scheduler, agents, exports, samples, repository, adminPasswordFile, adminPasswordShared,
      reloadTls() {
        if (!config.tlsCert) throw new AppError(ErrorCode.InvalidArgument, 'TLS is not configured (HAVEN_TLS_CERT, HAVEN_TLS_KEY)');
        const next = loadTlsFiles(config.tlsCert, config.tlsKey);
        (server.server as unknown as HttpsServer).setSecureContext({ cert: next.cert, key: next.key });
        nbdTls = createSecureContext({ cert: next.cert, key: next.key });
        return next.describe;
      },
      metricsServer,
      async close() {
        clearInterval(purge);
        if (localBeat) clearInterval(localBeat);
        await scheduler.stop();
        await samples.stop();
        await repository.stop();
        await server.close();
        await metricsServer?.close();
        // Jobs first (a live restore's copy stops with its job), then the exports they served.
        await r.stop();
        await exports.close();
        await liveExports?.close();
        await nbd.close();
        await eng.close();
        await catalog.close();
      },
    };
  } catch (err) {
    await engine?.close();
    await catalog.close();
    throw err;
  }
}

