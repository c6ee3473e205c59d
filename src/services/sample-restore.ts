/**
 * Scheduled sample restores: a backup is never trusted blindly. Every HAVEN_SAMPLE_RESTORE_HOURS
 * one available backup, picked at random, is restored for real into a scratch file of the data
 * folder (the same code a user's restore runs: every chunk fetched, decrypted, decompressed and
 * checked against its digest, the whole against the manifest's volume digest), and the file is
 * removed. A backup found damaged becomes `error` with the reason (event `sampleFoundDamage`),
 * so the console, the API and alerts show it before anyone needs it; one found whole is recorded.
 * `haven verify` does the same for chosen backups on demand (without writing a file).
 *
 * When the data folder has no room for the sample, the restore is skipped and said so in the log.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Catalog } from '../catalog/catalog.ts';
import type { Clock } from '../domain/clock.ts';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import type { BackupEngine } from './backup-engine.ts';

export interface SampleResult {
  backupId: string;
  ok: boolean;
  /** What was wrong, or why no sample was restored. */
  reason: string | null;
  durationMs: number;
  bytes: number;
  at: number;
  skipped?: boolean;
}

export interface SampleRestoreOptions {
  dataDir: string;
  /** Between two samples (0: never). */
  intervalMs: number;
}

const DAMAGE: ErrorCode[] = [ErrorCode.ChunkMissing, ErrorCode.ChunkCorrupt, ErrorCode.RestoreMismatch, ErrorCode.RepositoryCorrupt];

export class SampleRestorer {
  private readonly catalog: Catalog;
  private readonly engine: BackupEngine;
  private readonly clock: Clock;
  private readonly log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
  private readonly opts: SampleRestoreOptions;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<SampleResult | null> | null = null;
  private readonly ac = new AbortController();
  /** The latest sample (null: none yet). */
  last: SampleResult | null = null;
  onResult?: (r: SampleResult) => void;

  constructor(catalog: Catalog, engine: BackupEngine, clock: Clock, log: SampleRestorer['log'], opts: SampleRestoreOptions) {
    this.catalog = catalog;
    this.engine = engine;
    this.clock = clock;
    this.log = log;
    this.opts = opts;
  }

  start(): void {
    if (!this.opts.intervalMs) return;
    this.timer = setInterval(() => void this.runSoon(), this.opts.intervalMs);
    this.timer.unref();
  }

  private runSoon(): Promise<SampleResult | null> {
    this.running ??= this.runOnce().catch((err: unknown) => {
      this.log.error({ err }, 'sample restore failed to run');
      return null;
    }).finally(() => (this.running = null));
    return this.running;
  }

  /** Restores one random available backup (or `backupId`) into a scratch file and checks it. */
  async runOnce(backupId?: string): Promise<SampleResult | null> {
    const id = backupId ?? (await this.catalog.backups.randomAvailableId());
    if (!id) return null;
    const started = this.clock.now();
    const manifest = await this.engine.findManifest(id);
    if (!manifest) {
      // Deleted meanwhile, or an available backup whose manifest is gone: that one is damaged.
      const row = await this.catalog.backups.getBackupById(id);
      if (row?.status !== 'available') return null;
      const reason = 'a sample restore found the backup damaged: the repository holds no manifest for it';
      await this.catalog.backups.applyBackupEvent(id, 'sampleFoundDamage', this.clock.now(), { failReason: reason });
      this.log.error({ backupId: id, reason }, 'sample restore: backup damaged, marked error');
      return this.record({ backupId: id, ok: false, reason, durationMs: this.clock.now() - started, bytes: 0, at: started });
    }
    const dir = path.join(this.opts.dataDir, 'sample-restore');
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const free = await fs.statfs(dir).then((s) => s.bavail * s.bsize).catch(() => Infinity);
    const needed = Math.max(0, manifest.sizeBytes - manifest.stats.holeChunks * manifest.chunkSizeBytes); // holes are not written
    if (needed > free * 0.9) {
      const r: SampleResult = { backupId: id, ok: true, skipped: true, reason: `the data folder has ${free} bytes free; restoring backup ${id} needs ${needed}`, durationMs: 0, bytes: 0, at: started };
      this.log.warn({ backupId: id, free, needed }, 'sample restore skipped: no room in the data folder');
      return this.record(r);
    }
    const scratch = path.join(dir, `${id}.img`);
    let r: SampleResult;
    try {
      await fs.rm(scratch, { force: true });
      const out = await this.engine.restore(id, scratch, { signal: this.ac.signal, onProgress: () => undefined });
      r = { backupId: id, ok: true, reason: null, durationMs: this.clock.now() - started, bytes: out.writtenBytes, at: started };
      this.log.info({ backupId: id, durationMs: r.durationMs }, 'sample restore: the backup restored whole');
    } catch (err) {
      if (!DAMAGE.some((c) => isAppError(err, c))) {
        // Not the backup's fault (no space, a store outage, shutting down): said, nothing marked.
        r = { backupId: id, ok: true, skipped: true, reason: (err as Error).message, durationMs: this.clock.now() - started, bytes: 0, at: started };
        this.log.warn({ backupId: id, err }, 'sample restore could not run');
      } else {
        const reason = `a sample restore found the backup damaged: ${(err as Error).message}`;
        r = { backupId: id, ok: false, reason, durationMs: this.clock.now() - started, bytes: 0, at: started };
        await this.catalog.backups.applyBackupEvent(id, 'sampleFoundDamage', this.clock.now(), { failReason: reason });
        this.log.error({ backupId: id, reason }, 'sample restore: backup damaged, marked error');
      }
    } finally {
      await fs.rm(scratch, { force: true });
    }
    return this.record(r);
  }

  private record(r: SampleResult): SampleResult {
    this.last = r;
    this.onResult?.(r);
    return r;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.ac.abort(new AppError(ErrorCode.Cancelled, 'Haven is shutting down'));
    await this.running;
  }
}
