/**
 * Exports: a backup served to its project as an NBD disk (a Haven extension of the VBS API,
 * `POST /v2/{project_id}/cloudbackups/{backup_id}/export`). Each export has a secret, random export
 * name (the only thing that opens it: NBD has no other authentication), an expiry, and a read
 * lock on the repository (GC's sweep waits, docs/design.md G6). Read-only, or writable into a
 * copy-on-write overlay per connection (the backup never changes).
 *
 * Only the backup's project, or a project it is shared with, may export it; every new connection
 * checks again that the backup is still available and still visible to that project, and a sweep
 * every few seconds ends the open connections of a backup deleted or no longer shared. Exports of
 * backups live in the process that made them (the URI names its NBD listener); they end with it.
 *
 * Live restores are exports too, of a volume rather than a backup: opened on the volume's host (this
 * process, or its agent: VolumeHost.openLive) and served by that host's listener, while the restore
 * job copies (VolumeHost.liveCopy). They end when the user deletes them once the copy is done, or
 * when the restore fails.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import type { Clock } from '../domain/clock.ts';
import type { Volume } from '../domain/model.ts';
import { BackupImage, type ImageSource } from '../engine/backup-image.ts';
import { RepositoryLock } from '../engine/locks.ts';
import { imageDevice } from '../nbd/backup-exports.ts';
import type { NbdEndpoint } from '../nbd/nbd-endpoint.ts';
import type { NbdDevice, NbdExport, NbdExports } from '../nbd/nbd-server.ts';
import { CowOverlay } from '../nbd/overlay.ts';
import type { BackupService, LiveSessions } from './backup-service.ts';
import { fileRef, type WorkControl } from './volume-host.ts';
import type { VolumeHosts } from './volume-hosts.ts';

/** A live restore's progress, as its host reports it. */
export interface LiveState {
  settledBytes: number;
  totalBytes: number;
  /** Bytes the user wrote, known once the copy has ended. */
  writtenBytes: number | null;
  copying: boolean;
  finished: boolean;
}

export interface ExportInfo {
  id: string;
  backupId: string;
  /** A live restore's: the volume served. */
  volumeId: string | null;
  /** A live restore's progress. */
  live: LiveState | null;
  projectId: string;
  /** The secret export name. */
  exportName: string;
  uri: string;
  writable: boolean;
  tls: boolean;
  createdAt: number;
  expiresAt: number;
}

/** An export of a backup, served here. */
interface BackupExport extends ExportInfo {
  kind: 'backup';
  image: BackupImage;
  lock: RepositoryLock;
}

/** A live restore's export, served by its volume's host. */
interface LiveExport extends ExportInfo {
  kind: 'live';
  host: string | null;
  jobId: string;
  state: LiveState;
}

type Held = BackupExport | LiveExport;

/** A live restore's export as its job waits for it (opened by the request). */
interface Waiter {
  /** The job stopped waiting: an export opened after that is ended at once. */
  gaveUp: boolean;
  promise: Promise<LiveExport>;
  resolve(s: LiveExport): void;
  reject(e: unknown): void;
}

export interface ExportServiceOptions {
  maxTtlSeconds: number;
  /** Where temporary overlays of writable exports go. */
  overlayDir: string;
  /** How long a live restore's job waits for the request to open its export. */
  liveWaitMs?: number;
  onError?: (err: unknown, where: string) => void;
}

export const DEFAULT_EXPORT_TTL_SECONDS = 3600;
/** Exports one project holds at once. */
export const MAX_EXPORTS_PER_PROJECT = 16;

export class ExportService implements NbdExports, LiveSessions {
  private readonly backups: BackupService;
  private readonly hosts: VolumeHosts;
  private readonly images: () => ImageSource;
  private readonly endpoint: NbdEndpoint;
  private readonly clock: Clock;
  private readonly opts: ExportServiceOptions;
  private readonly held = new Map<string, Held>(); // by export name
  private sweeper: NodeJS.Timeout | null = null;
  private readonly waiters = new Map<string, Waiter>(); // live exports by job id

  /** Serves through `endpoint` (this process's NBD listener), which it registers with. */
  constructor(backups: BackupService, hosts: VolumeHosts, images: () => ImageSource, endpoint: NbdEndpoint, clock: Clock, opts: ExportServiceOptions) {
    this.backups = backups;
    this.hosts = hosts;
    this.images = images;
    this.endpoint = endpoint;
    this.clock = clock;
    this.opts = opts;
    endpoint.add(this);
  }

  private startSweeping(): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => void this.sweep(), 5000);
    this.sweeper.unref();
  }

  async create(projectId: string, backupId: string, req: { expiresInSeconds?: number | undefined; writable?: boolean | undefined }): Promise<ExportInfo> {
    const ttl = req.expiresInSeconds ?? Math.min(DEFAULT_EXPORT_TTL_SECONDS, this.opts.maxTtlSeconds);
    if (!Number.isInteger(ttl) || ttl < 60 || ttl > this.opts.maxTtlSeconds) throw new AppError(ErrorCode.InvalidArgument, `expires_in must be a whole number of seconds from 60 to ${this.opts.maxTtlSeconds}.`);
    const b = await this.backups.getBackup(projectId, backupId, { includeShared: true });
    if (b.status !== 'available') throw new AppError(ErrorCode.BackupInvalidState, `Backup ${backupId} is ${b.status}; only available backups can be exported.`);
    // Each export holds a read lock (GC's sweep waits) and an index in memory: a project has a few.
    const open = [...this.held.values()].filter((h) => h.projectId === projectId && h.kind === 'backup').length;
    if (open >= MAX_EXPORTS_PER_PROJECT) throw new AppError(ErrorCode.InvalidArgument, `This project has ${open} exports already (at most ${MAX_EXPORTS_PER_PROJECT}); end one first (DELETE .../cloudbackups/{backup_id}/export).`);
    const exportName = randomBytes(32).toString('base64url');
    const uri = await this.endpoint.uri(exportName);
    this.startSweeping();
    const src = this.images();
    const image = new BackupImage(src, await src.repo.readManifest(backupId));
    const lock = await RepositoryLock.acquire(src.repo.store, 'read', { backupId });
    const now = this.clock.now();
    const h: BackupExport = {
      kind: 'backup', id: randomUUID(), backupId, projectId, volumeId: null, live: null, exportName, writable: req.writable === true, tls: this.endpoint.tls, createdAt: now, expiresAt: now + ttl * 1000,
      uri, image, lock,
    };
    this.held.set(exportName, h);
    return info(h);
  }

  /** NBD_OPT_LIST: refused (export names are secrets). */
  async list(): Promise<null> {
    return null;
  }

  /** The project's exports of a backup. */
  exportsOf(projectId: string, backupId: string): ExportInfo[] {
    const now = this.clock.now();
    return [...this.held.values()].filter((h) => h.projectId === projectId && h.backupId === backupId && h.expiresAt > now).map(info);
  }

  /** Ends the project's exports of a backup (their connections close); throws when there is none. */
  async end(projectId: string, backupId: string): Promise<number> {
    const mine = [...this.held.values()].filter((h) => h.projectId === projectId && h.backupId === backupId);
    const copying = mine.find((h) => h.kind === 'live' && !h.state.finished);
    if (copying) throw new AppError(ErrorCode.BackupInvalidState, `A live restore of backup ${backupId} onto volume ${copying.volumeId} is still copying; its export can end once the restore job has finished.`);
    if (!mine.length) {
      await this.backups.getBackup(projectId, backupId, { includeShared: true }); // 404 for a backup the project cannot see
      throw new AppError(ErrorCode.ExportNotFound, `Backup ${backupId} has no export.`);
    }
    await this.drop(mine);
    return mine.length;
  }

  private async drop(list: Held[]): Promise<void> {
    for (const h of list) this.held.delete(h.exportName);
    const names = new Set(list.map((h) => h.exportName));
    await this.endpoint.disconnect((n) => names.has(n));
    await Promise.all(list.map(async (h) => {
      if (h.kind === 'backup') await h.lock.release();
      // A live export is its host's: ended there (its connections, the volume, the lock).
      else await this.hosts.of(h.host).endLive({ exportName: h.exportName }).catch((err: unknown) => this.opts.onError?.(err, 'ending a live export'));
    }));
  }

  /** Ends expired exports, and those whose backup is gone or no longer visible to their project (open connections too). */
  async sweep(): Promise<void> {
    const now = this.clock.now();
    for (const h of [...this.held.values()]) {
      if (h.kind === 'live' || !this.held.has(h.exportName)) continue;
      const b = await this.backups.getBackup(h.projectId, h.backupId, { includeShared: true }).catch(() => null);
      if (!b || b.status !== 'available') await this.drop([h]).catch((err: unknown) => this.opts.onError?.(err, 'export sweep'));
    }
    // A live restore's export is a running VM's disk: it ends when the user ends it.
    const gone = [...this.held.values()].filter((h) => h.kind === 'backup' && h.expiresAt <= now);
    if (gone.length) await this.drop(gone).catch((err: unknown) => this.opts.onError?.(err, 'export sweep'));
  }

  async find(name: string): Promise<NbdExport | null> {
    const h = this.held.get(name);
    if (!h || h.kind !== 'backup') return null; // live exports are served by their host's LiveExports
    if (h.expiresAt <= this.clock.now()) {
      await this.drop([h]);
      return null;
    }
    // Still available, still the project's or shared with it (a revoked share, a deleted backup: no more).
    const b = await this.backups.getBackup(h.projectId, h.backupId, { includeShared: true }).catch(() => null);
    if (!b || b.status !== 'available') {
      await this.drop([h]);
      return null;
    }
    return {
      name,
      sizeBytes: h.image.sizeBytes,
      readOnly: !h.writable,
      multiConn: !h.writable,
      open: (): Promise<NbdDevice> => (h.writable ? CowOverlay.open(imageDevice(h.image), { baseId: h.backupId, dir: this.opts.overlayDir }) : Promise.resolve(imageDevice(h.image))),
    };
  }

  // ---- live restores ----

  private waiter(jobId: string): Waiter {
    let w = this.waiters.get(jobId);
    if (!w) {
      const { promise, resolve, reject } = Promise.withResolvers<LiveExport>();
      promise.catch(() => undefined);
      w = { gaveUp: false, promise, resolve, reject };
      this.waiters.set(jobId, w);
    }
    return w;
  }

  /** Refuses a live restore onto a volume of this process while exports are off here, before anything changes. */
  precheck(host: string | null): void {
    if (this.hosts.isLocal(host) && this.endpoint.off) throw new AppError(ErrorCode.ExportUnavailable, 'Exports are switched off on this service (HAVEN_NBD_LISTEN=off): no live restores.');
  }

  /**
   * Opens a live restore of a backup onto a volume (its job queued, the volume restoring) on the
   * volume's host: the volume is emptied and served at once; the job then copies (copy()). A
   * failure fails the job too (before the volume was opened: the volume is left as it was).
   */
  async beginLive(projectId: string, backupId: string, volume: Volume, jobId: string): Promise<ExportInfo> {
    const w = this.waiter(jobId);
    try {
      const exportName = randomBytes(32).toString('base64url');
      const opened = await this.hosts.of(volume.host).openLive({ backupId, target: fileRef(volume), exportName });
      const now = this.clock.now();
      const h: LiveExport = {
        kind: 'live', id: randomUUID(), backupId, projectId, volumeId: volume.id, live: null, exportName, writable: true, tls: opened.uri.startsWith('nbds'), createdAt: now, expiresAt: now + this.opts.maxTtlSeconds * 1000,
        uri: opened.uri, host: volume.host, jobId, state: { settledBytes: 0, totalBytes: opened.sizeBytes, writtenBytes: null, copying: false, finished: false },
      };
      if (w.gaveUp) {
        // Its job has failed already: nothing will copy, so nothing is served.
        await this.hosts.of(volume.host).endLive({ exportName }).catch(() => undefined);
        throw new AppError(ErrorCode.Cancelled, 'the live restore\'s job stopped waiting for it');
      }
      this.held.set(exportName, h);
      w.resolve(h);
      return info(h);
    } catch (err) {
      w.reject(err);
      throw err;
    }
  }

  /** The copy of a live restore (its job): waits briefly for the request to have opened it. */
  async copy(jobId: string, ctl: WorkControl): Promise<{ writtenBytes: number }> {
    const w = this.waiter(jobId);
    const wait = this.opts.liveWaitMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    let h: LiveExport;
    try {
      h = await Promise.race([
        w.promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            w.gaveUp = true;
            reject(new AppError(ErrorCode.Cancelled, 'the live restore was not opened (the service restarted after the request?): restore again'));
          }, wait);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    h.state.copying = true;
    try {
      const r = await this.hosts.of(h.host).liveCopy({ exportName: h.exportName }, {
        ...ctl,
        onProgress: (done, total) => {
          h.state.settledBytes = done;
          h.state.totalBytes = total;
          ctl.onProgress(done, total);
        },
      });
      h.state.writtenBytes = r.writtenBytes;
      h.state.settledBytes = h.state.totalBytes;
      h.state.finished = true;
      return r;
    } finally {
      h.state.copying = false;
    }
  }

  async ended(jobId: string, ok: boolean): Promise<void> {
    this.waiters.delete(jobId);
    // A failed live restore's volume is not the backup: its export ends.
    if (!ok) await this.drop([...this.held.values()].filter((h) => h.kind === 'live' && h.jobId === jobId));
  }

  serving(volumeId: string): boolean {
    for (const h of this.held.values()) if (h.kind === 'live' && h.volumeId === volumeId) return true;
    return false;
  }

  async close(): Promise<void> {
    for (const w of this.waiters.values()) w.reject(new AppError(ErrorCode.Cancelled, 'the service is stopping'));
    this.waiters.clear();
    if (this.sweeper) clearInterval(this.sweeper);
    await this.drop([...this.held.values()]);
  }
}

function info(h: Held): ExportInfo {
  return { id: h.id, backupId: h.backupId, volumeId: h.volumeId, live: h.kind === 'live' ? { ...h.state } : null, projectId: h.projectId, exportName: h.exportName, uri: h.uri, writable: h.writable, tls: h.tls, createdAt: h.createdAt, expiresAt: h.expiresAt };
}
