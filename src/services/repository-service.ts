/**
 * The repository as the operator sees it (GET /haven/v1/repository, the console's repository page):
 * where it is, whether it is encrypted, its size and the room left, what the catalog's backups add
 * up to (and so what deduplication and compression save), the last GC and verify, and its growth.
 *
 * Growth is a series of samples of the repository's size kept in the catalog (repository_samples):
 * one when the service starts, then one an hour while it runs, and one after each GC this process
 * runs (its report carries the size after, so that one costs no listing). Processes sharing a
 * catalog take turns: a process samples only when no sample is younger than SAMPLE_GAP_MS, and
 * inserts under a catalog lock, so a fleet still writes about one sample an hour. Measuring the
 * size lists the whole store (billed per request in S3): the page shows `sources.bytes`, a reading
 * the composition root caches and shares with the metrics, so a page load never lists the store;
 * a sample measures afresh (`sources.measureBytes`, at most once an hour), so its time is its
 * size's, and it leaves the metrics' reading alone.
 *
 * Not here: what the size means for alerts (api/metrics.ts), and the GC and verify themselves
 * (engine/); their last runs are read from the repository's run reports (engine/run-reports.ts).
 */
import { ProjectLock, type Catalog } from '../catalog/catalog.ts';
import type { RepositorySample } from '../catalog/repository-sample-queries.ts';
import type { Clock } from '../domain/clock.ts';
import type { GcReport } from '../engine/garbage-collector.ts';
import type { GcRun, VerifyRun } from '../engine/run-reports.ts';
import type { RunReports } from './backup-engine.ts';

const MINUTE_MS = 60_000;
const DAY_MS = 24 * 60 * MINUTE_MS;
/** Between two scheduled samples. */
export const SAMPLE_EVERY_MS = 60 * MINUTE_MS;
/**
 * A sample younger than this makes the scheduled one unneeded. Less than the hour, so a timer that
 * fires a little early never skips an hour; with several processes, whoever is due first samples.
 */
export const SAMPLE_GAP_MS = 50 * MINUTE_MS;
/** How far back the growth series reaches, and how many points it has at most. */
export const GROWTH_DAYS = 90;
export const GROWTH_POINTS = 500;
/** Samples older than this are forgotten (when a scheduled sample is taken). */
const KEEP_DAYS = 400;

/** Where the service reads the repository's figures (the composition root wires them). */
export interface RepositorySources {
  kind: 'local' | 's3';
  /** A folder, or s3://bucket/prefix: never a credential (storage/s3-url.ts describeLocation). */
  location: string;
  encrypted: boolean;
  /** Bytes the repository occupies, as last measured (cached by the caller, shared with the metrics). */
  bytes(): Promise<number>;
  /** Bytes the repository occupies, measured now (a listing of the whole store). */
  measureBytes(): Promise<number>;
  /** Free bytes and size of the file system the repository lies in; null for an object store. */
  space(): Promise<{ free: number; size: number } | null>;
  /** The last GC and verify recorded in the repository. */
  runReports(): Promise<RunReports>;
}

export interface RepositoryOverview {
  kind: 'local' | 's3';
  location: string;
  encrypted: boolean;
  bytes: number;
  freeBytes: number | null;
  filesystemBytes: number | null;
  /** Backups one can restore (available, or being restored from), every project's. */
  backups: number;
  /** Their volume bytes, the bytes they added to the repository, and what those took once stored. */
  logicalBytes: number;
  newBytes: number;
  storedBytes: number;
  /** logical / (bytes × compression): disk bytes per byte held before compression (null: nothing stored yet). */
  dedupRatio: number | null;
  /** new / stored: what compression saves (null: nothing stored yet). */
  compressionRatio: number | null;
  lastGc: GcRun | null;
  lastVerify: VerifyRun | null;
  /** The size over the last GROWTH_DAYS, oldest first, at most GROWTH_POINTS samples. */
  growth: RepositorySample[];
}

/**
 * At most `max` samples of a series sorted by time, evenly spread over its span: the span is cut
 * into `max` equal intervals and the newest sample of each is kept (so the newest of all stays).
 * A series of 2,160 hourly samples becomes one sample every 4.3 hours; a burst of samples (GCs
 * after many deletes) takes no more room on the chart than any other hour.
 */
export function thinEvenly(samples: readonly RepositorySample[], max: number): RepositorySample[] {
  if (samples.length <= max) return [...samples];
  if (max < 1) return [];
  const first = samples[0]!.takenAt;
  const span = samples.at(-1)!.takenAt - first;
  const kept: RepositorySample[] = [];
  let keptBucket = -1;
  for (const s of samples) {
    const bucket = span === 0 ? 0 : Math.min(max - 1, Math.floor(((s.takenAt - first) * max) / span));
    if (bucket === keptBucket) kept[kept.length - 1] = s;
    else kept.push(s);
    keptBucket = bucket;
  }
  return kept;
}

/** a per b; none while either is nothing (only empty disks backed up: no chunk stored, nothing to compare). */
const ratio = (a: number, b: number): number | null => (a > 0 && b > 0 ? a / b : null);

export class RepositoryService {
  private readonly catalog: Catalog;
  private readonly clock: Clock;
  private readonly sources: RepositorySources;
  private readonly log: { warn(o: object, m?: string): void };
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;

  constructor(catalog: Catalog, clock: Clock, sources: RepositorySources, log: RepositoryService['log']) {
    this.catalog = catalog;
    this.clock = clock;
    this.sources = sources;
    this.log = log;
  }

  async overview(): Promise<RepositoryOverview> {
    const now = this.clock.now();
    const [bytes, space, reports, totals, samples] = await Promise.all([
      this.sources.bytes(),
      this.sources.space(),
      this.sources.runReports(),
      this.catalog.backups.availableTotals(),
      this.catalog.repositorySamples.samplesSince(now - GROWTH_DAYS * DAY_MS),
    ]);
    // Compression: the backups' new bytes per byte they stored. Deduplication: the disks' bytes per
    // byte the repository holds before compression, from its measured size, not from the backups'
    // own new bytes (once a full backup is deleted, its chunks live on in later backups, whose
    // new bytes never counted them).
    const compressionRatio = ratio(totals.newBytes, totals.storedBytes);
    const dedupRatio = compressionRatio !== null ? ratio(totals.sizeBytes, bytes * compressionRatio) : null;
    return {
      kind: this.sources.kind, location: this.sources.location, encrypted: this.sources.encrypted,
      bytes, freeBytes: space?.free ?? null, filesystemBytes: space?.size ?? null,
      backups: totals.count, logicalBytes: totals.sizeBytes, newBytes: totals.newBytes, storedBytes: totals.storedBytes,
      dedupRatio, compressionRatio,
      lastGc: reports.gc, lastVerify: reports.verify,
      growth: thinEvenly(samples, GROWTH_POINTS),
    };
  }

  /** Samples now (when due), then every SAMPLE_EVERY_MS until stop(). */
  start(): void {
    if (this.timer) return;
    void this.sampleSoon();
    this.timer = setInterval(() => void this.sampleSoon(), SAMPLE_EVERY_MS);
    this.timer.unref();
  }

  /** sampleIfDue in the background, one at a time; a failure is logged (the next hour tries again). */
  sampleSoon(): Promise<void> {
    this.running ??= this.sampleIfDue()
      .then(() => undefined, (err: unknown) => this.log.warn({ err }, 'sampling the repository size failed'))
      .finally(() => (this.running = null));
    return this.running;
  }

  /**
   * Records the repository's size unless a sample younger than SAMPLE_GAP_MS exists (checked
   * before the listing, so a due-less call costs one query, and again under the lock, so two
   * processes never both insert). True when a sample was recorded.
   */
  async sampleIfDue(): Promise<boolean> {
    const latest = await this.catalog.repositorySamples.latestSampleAt();
    if (latest !== null && latest > this.clock.now() - SAMPLE_GAP_MS) return false;
    const bytes = await this.sources.measureBytes();
    const takenAt = this.clock.now();
    return this.catalog.transaction(async (c) => {
      await c.lockKey(ProjectLock.repositorySamples, 'repository');
      const added = await c.repositorySamples.insertSampleUnlessSince({ takenAt, bytes }, takenAt - SAMPLE_GAP_MS);
      if (added) await c.repositorySamples.deleteSamplesBefore(takenAt - KEEP_DAYS * DAY_MS);
      return added;
    });
  }

  /** After a GC: its size after, as a sample (BackupEngine.afterGc). Never throws: a failure is logged. */
  async recordGc(report: GcReport): Promise<void> {
    try {
      await this.catalog.repositorySamples.insertSample({ takenAt: this.clock.now(), bytes: report.repositoryBytesAfter });
    } catch (err) {
      this.log.warn({ err }, 'recording the repository size after GC failed');
    }
  }

  /**
   * Stops the hourly samples; waits a little for one being taken (a listing of a large object store
   * can take minutes: a stopping service does not wait for it, and the sample is then dropped, its
   * failure logged).
   */
  async stop(waitMs = 5_000): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (!this.running) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.running, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
  }
}
