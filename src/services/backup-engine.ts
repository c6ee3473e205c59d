/**
 * The service layer's view of the engine: one repository (all volumes of all projects deduplicate
 * against each other) and one worker pool, shared by every job of this process. Knows nothing of
 * projects or statuses; the job handlers do.
 */
import { promises as fs } from 'node:fs';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import { writeBackup, type BackupResult, type Progress } from '../engine/backup-writer.ts';
import { readRunReports, type RunReports } from '../engine/run-reports.ts';

/** The last GC and verify a repository recorded (api/metrics.ts shows them). */
export type { RunReports };
import { collectGarbage, deleteBackup, type GcReport } from '../engine/garbage-collector.ts';
import type { BackupManifest } from '../engine/manifest.ts';
import { ImageSource } from '../engine/backup-image.ts';
import { Repository } from '../engine/repository.ts';
import { restoreBackup, type RestoreResult } from '../engine/restore-reader.ts';
import { backupsUsingChunks, verifyRepository, type VerifyReport } from '../engine/verifier.ts';
import { openVolumeSource } from '../engine/open-volume.ts';
import { openGuestDisk, type GuestDisk } from '../qemu/qemu-guest.ts';
import type { VolumeFormat } from '../domain/model.ts';
import type { VolumeFileGuard } from '../engine/volume-file.ts';
import { ChunkWorkerPool } from '../engine/worker-pool.ts';
import type { ObjectStore } from '../storage/object-store.ts';

/** A running guest's disk held at one point in time (BackupEngine.takeGuestPoint). */
export interface GuestPoint {
  disk: GuestDisk;
  parent: BackupManifest | null;
  ended: boolean;
  /** Ends the point in time: `ok`, the backup was written (else the bitmaps fold back). Once. */
  end(ok: boolean): Promise<void>;
}

export class BackupEngine {
  readonly repo: Repository;
  private readonly pool: ChunkWorkerPool;
  private gcRunning: Promise<GcReport> | null = null;
  private images: ImageSource | null = null;
  private gcAgain = false;
  private readonly background = new Set<Promise<unknown>>();
  /**
   * Called after each GC this process runs that was not deferred, before collectGarbage() (and
   * gcIdle()) resolve: the repository's size is known again (compose records a growth sample).
   * It reports its own errors; it must not throw.
   */
  afterGc: ((report: GcReport) => Promise<void>) | null = null;

  private constructor(repo: Repository, pool: ChunkWorkerPool) {
    this.repo = repo;
    this.pool = pool;
  }

  /** Opens the repository in `store`, creating it on first start (encrypted when a password is given). */
  static async open(store: ObjectStore, opts: { password?: string | undefined; threads?: number | undefined; nice?: number | undefined } = {}): Promise<BackupEngine> {
    let repo: Repository;
    try {
      repo = await Repository.open(store, { password: opts.password });
    } catch (err) {
      if (!isAppError(err, ErrorCode.RepositoryNotFound)) throw err;
      try {
        repo = await Repository.init(store, { password: opts.password });
      } catch (e) {
        // Another process created it at the same moment: open theirs.
        if (!isAppError(e, ErrorCode.RepositoryExists)) throw e;
        repo = await Repository.open(store, { password: opts.password });
      }
    }
    return new BackupEngine(repo, new ChunkWorkerPool(opts.threads, opts.nice === undefined ? {} : { nice: opts.nice }));
  }

  /** Random access to backups (exports, live restores): one chunk cache for the process. */
  imageSource(cacheBytes: number): ImageSource {
    this.images ??= new ImageSource(this.repo, this.pool, { cacheBytes });
    return this.images;
  }

  async backup(sourcePath: string, opts: { guard?: VolumeFileGuard; format?: VolumeFormat; qmp?: { socket: string; node: string } | null; backupId: string; volume: { id: string; name: string; projectId?: string }; previousId: string | null; full: boolean; checkReused?: boolean; signal: AbortSignal; onProgress: (p: Progress) => void }): Promise<BackupResult> {
    let previous: BackupManifest | null = null;
    if (opts.previousId && !opts.full) previous = await this.manifest(opts.previousId).catch(() => null); // a missing parent only means: record as full
    if (opts.qmp) return this.backupGuest(sourcePath, opts.qmp, previous, opts);
    const { source } = await openVolumeSource(sourcePath, { format: opts.format ?? 'raw', ...(opts.guard ? { guard: opts.guard } : {}), signal: opts.signal });
    try {
      return await writeBackup(this.repo, source, { backupId: opts.backupId, volume: opts.volume, previous, full: opts.full || !previous, checkReused: opts.checkReused ?? false, pool: this.pool, signal: opts.signal, onProgress: opts.onProgress });
    } finally {
      await source.close();
    }
  }

  /**
   * The disk of a running guest, at one point in time through its QMP socket (qemu/qemu-guest.ts),
   * reading only the blocks changed since `previous` when the guest's bitmap for it is there. The
   * node must still be the volume's image.
   */
  private async backupGuest(imagePath: string, qmp: { socket: string; node: string }, previous: BackupManifest | null, opts: { backupId: string; volume: { id: string; name: string; projectId?: string }; full: boolean; checkReused?: boolean; signal: AbortSignal; onProgress: (p: Progress) => void }): Promise<BackupResult> {
    const point = await this.openGuestPoint(imagePath, qmp, previous, opts);
    return this.writeGuestPoint(point, opts);
  }

  /**
   * Takes a running guest's point in time (its fleece overlay: later guest writes no longer reach
   * what is read), for writing later with writeGuestPoint: a server backup takes every disk's
   * between its freeze and thaw hooks, and writes them after. `previousId` as for backup().
   */
  async takeGuestPoint(imagePath: string, qmp: { socket: string; node: string }, opts: { backupId: string; previousId: string | null; full: boolean; signal: AbortSignal }): Promise<GuestPoint> {
    let previous: BackupManifest | null = null;
    if (opts.previousId && !opts.full) previous = await this.manifest(opts.previousId).catch(() => null);
    return this.openGuestPoint(imagePath, qmp, previous, opts);
  }

  private async openGuestPoint(imagePath: string, qmp: { socket: string; node: string }, previous: BackupManifest | null, opts: { backupId: string; full: boolean; signal: AbortSignal }): Promise<GuestPoint> {
    const parent = opts.full ? null : previous;
    const disk = await openGuestDisk({ qmpSocket: qmp.socket, node: qmp.node, backupId: opts.backupId, previous: () => (parent ? { id: parent.id } : null), signal: opts.signal });
    const point: GuestPoint = { disk, parent, ended: false, end: async (ok) => {
      if (point.ended) return;
      point.ended = true;
      await disk.source.close().catch(() => undefined);
      await disk.finish(ok);
    } };
    const real = await fs.realpath(disk.imageFile).catch(() => disk.imageFile);
    if (real !== imagePath) {
      await point.end(false);
      throw new AppError(ErrorCode.VolumePathRefused, `node ${qmp.node} of the guest at ${qmp.socket} is now the image ${disk.imageFile}, not the volume's ${imagePath}`);
    }
    return point;
  }

  /** Writes a guest's point in time as backup `backupId`, then ends it (its bitmaps settled either way). */
  async writeGuestPoint(point: GuestPoint, opts: { backupId: string; volume: { id: string; name: string; projectId?: string }; full: boolean; checkReused?: boolean; signal: AbortSignal; onProgress: (p: Progress) => void }): Promise<BackupResult> {
    let ok = false;
    try {
      const r = await writeBackup(this.repo, point.disk.source, { backupId: opts.backupId, volume: opts.volume, previous: point.parent, full: opts.full || !point.parent, checkReused: opts.checkReused ?? false, pool: this.pool, signal: opts.signal, onProgress: opts.onProgress });
      ok = true;
      return r;
    } finally {
      await point.end(ok);
    }
  }

  async restore(backupId: string, targetPath: string, opts: { guard?: VolumeFileGuard; format?: VolumeFormat; targetSizeBytes?: number; signal: AbortSignal; onProgress: (p: Progress) => void }): Promise<RestoreResult> {
    const manifest = await this.manifest(backupId);
    // A VM disk must be on stable storage when the restore reports success.
    return restoreBackup(this.repo, manifest, targetPath, { pool: this.pool, signal: opts.signal, onProgress: opts.onProgress, fsync: true, ...(opts.format ? { format: opts.format } : {}), ...(opts.guard ? { guard: opts.guard } : {}), ...(opts.targetSizeBytes ? { targetSizeBytes: opts.targetSizeBytes } : {}) });
  }

  /** The manifest of a backup, or null when the engine never completed it. */
  async findManifest(backupId: string): Promise<BackupManifest | null> {
    try {
      return await this.repo.readManifest(backupId);
    } catch (err) {
      if (isAppError(err, ErrorCode.BackupNotFound)) return null;
      throw err;
    }
  }

  async manifest(backupId: string): Promise<BackupManifest> {
    const m = await this.findManifest(backupId);
    if (!m) throw new AppError(ErrorCode.BackupNotFound, `the repository holds no manifest for backup ${backupId}`);
    return m;
  }

  /** Deletes a backup's manifest and index (idempotent); its chunks go at the next GC. */
  async delete(backupId: string): Promise<void> {
    if (!(await this.findManifest(backupId))) return;
    await deleteBackup(this.repo, backupId);
  }

  /**
   * Runs GC now, or once more after the running one (deletes that land during a GC are reclaimed
   * by the next pass). Errors are returned to the caller, who logs them: GC is housekeeping.
   */
  collectGarbage(): Promise<GcReport> {
    if (this.gcRunning) {
      this.gcAgain = true;
      return this.gcRunning;
    }
    const runOnce = async (): Promise<GcReport> => {
      try {
        let report = await collectGarbage(this.repo);
        while (this.gcAgain) {
          this.gcAgain = false;
          report = await collectGarbage(this.repo);
        }
        if (!report.deferred) await this.afterGc?.(report);
        return report;
      } finally {
        this.gcRunning = null;
      }
    };
    this.gcRunning = runOnce();
    return this.gcRunning;
  }

  /** Background work of this process's services (verifying error backups): close() waits for it. */
  track<T>(p: Promise<T>): Promise<T> {
    this.background.add(p);
    void p.finally(() => this.background.delete(p)).catch(() => undefined);
    return p;
  }

  /** Resolves when no GC started by this process is running (tests, and callers that must see its result). */
  async gcIdle(): Promise<void> {
    while (this.gcRunning) await this.gcRunning.catch(() => undefined);
  }

  /** Verifies the given backups (quarantining damaged chunks, releasing those found intact). */
  verify(backupIds: string[]): Promise<VerifyReport> {
    return verifyRepository(this.repo, { backupIds, pool: this.pool });
  }

  /** The backups whose data uses any of these chunks (hex digests): who a damaged chunk affects. */
  backupsUsingChunks(digests: string[]): Promise<string[]> {
    return backupsUsingChunks(this.repo, digests);
  }

  /** The last GC and verify recorded in the repository (engine/run-reports.ts). */
  runReports(): Promise<RunReports> {
    return readRunReports(this.repo.store);
  }

  /** Whether the repository's config is still in its store (for /healthz; errors: the store cannot be reached). */
  async configPresent(): Promise<boolean> {
    return (await this.repo.store.head('config')) !== null;
  }

  /** Bytes the repository occupies (for metrics). */
  async storedBytes(): Promise<number> {
    let total = 0;
    for await (const o of this.repo.store.list('')) total += o.sizeBytes;
    return total;
  }

  async close(): Promise<void> {
    await this.gcRunning?.catch(() => undefined); // its error was reported to whoever awaited it
    await Promise.allSettled([...this.background]); // likewise
    await this.pool.close();
    await this.repo.store.close?.();
  }
}

export async function readPasswordFile(file: string): Promise<string> {
  try {
    const pw = (await fs.readFile(file, 'utf8')).replace(/\r?\n$/, '');
    if (!pw) throw new AppError(ErrorCode.InvalidArgument, `password file ${file} is empty`);
    return pw;
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw new AppError(ErrorCode.InvalidArgument, `cannot read password file ${file}: ${(err as Error).message}`, { cause: err });
  }
}
