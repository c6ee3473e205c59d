/**
 * Exports: a backup served to its project as an NBD disk (a Haven extension of the VBS API,
 * `POST /v2/{project_id}/cloudbackups/{backup_id}/export`). Each export has a secret, random export
 * name (the only thing that opens it: NBD has no other authentication), an expiry, and a read
 * lock on the repository (GC's sweep waits, docs/design.md G6). Read-only, or writable into a
 * copy-on-write overlay per connection (the backup never changes).
 *
 * Only the backup's project, or a project it is shared with, may export it; every new connection
 * checks again that the backup is still available and still visible to that project, so a
 * deleted backup or a revoked share ends access. Exports live in the process that made them (the
 * URI names its NBD listener); they end with it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { SecureContext } from 'node:tls';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import type { Clock } from '../domain/clock.ts';
import { nbdUri, parseListen, type ListenSpec } from '../domain/listen.ts';
import { BackupImage, type ImageSource } from '../engine/backup-image.ts';
import { RepositoryLock } from '../engine/locks.ts';
import { imageDevice } from '../nbd/backup-exports.ts';
import { NbdServer, type NbdDevice, type NbdExport, type NbdExports } from '../nbd/nbd-server.ts';
import { CowOverlay } from '../nbd/overlay.ts';
import type { BackupService, LiveSessions } from './backup-service.ts';
import { LiveRestore, type LiveProgress } from '../engine/live-restore.ts';
import type { VolumeFileGuard } from '../engine/volume-file.ts';
import type { Volume } from '../domain/model.ts';

export interface ExportInfo {
  id: string;
  backupId: string;
  /** A live restore's: the volume served. */
  volumeId: string | null;
  /** A live restore's progress. */
  live: LiveProgress | null;
  projectId: string;
  /** The secret export name. */
  exportName: string;
  uri: string;
  writable: boolean;
  tls: boolean;
  createdAt: number;
  expiresAt: number;
}

interface Held extends ExportInfo {
  image: BackupImage;
  lock: RepositoryLock;
  /** A live restore's export: the volume being restored, served as it fills. */
  liveRestore?: { session: LiveRestore; volumeId: string; jobId: string };
}

/** A promise settled from outside (a live restore's session, awaited by its job). */
interface Waiter {
  /** The job stopped waiting (session() timed out): a session opened after that is dropped. */
  gaveUp: boolean;
  promise: Promise<LiveRestore>;
  resolve(s: LiveRestore): void;
  reject(e: unknown): void;
}

export interface ExportServiceOptions {
  /** HOST:PORT or unix:PATH, or 'off'. */
  listen: string;
  publicHost: string;
  maxTtlSeconds: number;
  /** The service's TLS (asked at each handshake: certificates reload). */
  tls: (() => SecureContext) | null;
  /** Where temporary overlays of writable exports go. */
  overlayDir: string;
  /** How a volume's file is checked on open (volume-file.ts). */
  guardOf: (v: Volume) => VolumeFileGuard;
  /** How long a live restore's job waits for the request to open its session. */
  liveWaitMs?: number;
  onError?: (err: unknown, where: string) => void;
}

export const DEFAULT_EXPORT_TTL_SECONDS = 3600;
/** Exports one project holds at once. */
export const MAX_EXPORTS_PER_PROJECT = 16;

/** The error with details.targetUntouched: the restore target was not written. */
function withUntouched(err: unknown): unknown {
  if (isAppError(err)) return new AppError(err.code, err.message, { cause: err.cause, details: { ...err.details, targetUntouched: true } });
  return new AppError(ErrorCode.Internal, (err as Error)?.message ?? String(err), { cause: err, details: { targetUntouched: true } });
}

export class ExportService implements NbdExports, LiveSessions {
  private readonly backups: BackupService;
  private readonly images: () => ImageSource;
  private readonly clock: Clock;
  private readonly opts: ExportServiceOptions;
  private readonly held = new Map<string, Held>(); // by export name
  private server: NbdServer | null = null;
  private listening: Promise<ListenSpec> | null = null;
  private sweeper: NodeJS.Timeout | null = null;
  private readonly waiters = new Map<string, Waiter>(); // live sessions by job id

  constructor(backups: BackupService, images: () => ImageSource, clock: Clock, opts: ExportServiceOptions) {
    this.backups = backups;
    this.images = images;
    this.clock = clock;
    this.opts = opts;
  }

  /** Starts the NBD listener once (the first export, or a live restore). */
  async listener(): Promise<{ at: ListenSpec; server: NbdServer }> {
    if (this.opts.listen === 'off') throw new AppError(ErrorCode.ExportUnavailable, 'Exports are switched off on this service (HAVEN_NBD_LISTEN=off).');
    if (!this.listening) {
      const server = new NbdServer(this, { ...(this.opts.tls ? { tls: this.opts.tls } : {}), ...(this.opts.onError ? { onError: (e, r) => this.opts.onError!(e, r) } : {}) });
      this.listening = server.listen(parseListen(this.opts.listen)).then((at) => {
        this.server = server;
        return at;
      });
      this.listening.catch(() => (this.listening = null));
      this.sweeper = setInterval(() => void this.sweep(), 5000);
      this.sweeper.unref();
    }
    let at: ListenSpec;
    try {
      at = await this.listening;
    } catch (err) {
      throw new AppError(ErrorCode.ExportUnavailable, `The NBD listener cannot start on ${this.opts.listen}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}.`, { cause: err });
    }
    return { at, server: this.server! };
  }

  async create(projectId: string, backupId: string, req: { expiresInSeconds?: number | undefined; writable?: boolean | undefined }): Promise<ExportInfo> {
    const ttl = req.expiresInSeconds ?? Math.min(DEFAULT_EXPORT_TTL_SECONDS, this.opts.maxTtlSeconds);
    if (!Number.isInteger(ttl) || ttl < 60 || ttl > this.opts.maxTtlSeconds) throw new AppError(ErrorCode.InvalidArgument, `expires_in must be a whole number of seconds from 60 to ${this.opts.maxTtlSeconds}.`);
    const b = await this.backups.getBackup(projectId, backupId, { includeShared: true });
    if (b.status !== 'available') throw new AppError(ErrorCode.BackupInvalidState, `Backup ${backupId} is ${b.status}; only available backups can be exported.`);
    // Each export holds a read lock (GC's sweep waits) and an index in memory: a project has a few.
    const open = [...this.held.values()].filter((h) => h.projectId === projectId && !h.liveRestore).length;
    if (open >= MAX_EXPORTS_PER_PROJECT) throw new AppError(ErrorCode.InvalidArgument, `This project has ${open} exports already (at most ${MAX_EXPORTS_PER_PROJECT}); end one first (DELETE .../cloudbackups/{backup_id}/export).`);
    const { at } = await this.listener();
    const src = this.images();
    const image = new BackupImage(src, await src.repo.readManifest(backupId));
    const lock = await RepositoryLock.acquire(src.repo.store, 'read', { backupId });
    const now = this.clock.now();
    const exportName = randomBytes(32).toString('base64url');
    const tls = this.opts.tls !== null;
    const h: Held = {
      id: randomUUID(), backupId, projectId, volumeId: null, live: null, exportName, writable: req.writable === true, tls, createdAt: now, expiresAt: now + ttl * 1000,
      uri: nbdUri(at, exportName, { tls, host: this.opts.publicHost }), image, lock,
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
    const copying = mine.find((h) => h.liveRestore && !h.liveRestore.session.finished);
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
    await this.server?.disconnect((n) => names.has(n));
    await Promise.all(list.map(async (h) => {
      await h.liveRestore?.session.close().catch((err: unknown) => this.opts.onError?.(err, 'live restore close'));
      await h.lock.release();
    }));
  }

  /** Ends expired exports, and those whose backup is gone or no longer visible to their project (open connections too). */
  async sweep(): Promise<void> {
    const now = this.clock.now();
    for (const h of [...this.held.values()]) {
      if (h.liveRestore || !this.held.has(h.exportName)) continue;
      const b = await this.backups.getBackup(h.projectId, h.backupId, { includeShared: true }).catch(() => null);
      if (!b || b.status !== 'available') await this.drop([h]).catch((err: unknown) => this.opts.onError?.(err, 'export sweep'));
    }
    const open = new Set(this.server?.connections().map((c) => c.exportName) ?? []);
    // A live restore's export is a running VM's disk: it expires only once nobody is connected.
    const gone = [...this.held.values()].filter((h) => h.expiresAt <= now && !(h.liveRestore && (open.has(h.exportName) || !h.liveRestore.session.finished)));
    if (gone.length) await this.drop(gone).catch((err: unknown) => this.opts.onError?.(err, 'export sweep'));
  }

  async find(name: string): Promise<NbdExport | null> {
    const h = this.held.get(name);
    if (!h) return null;
    if (h.liveRestore) {
      const session = h.liveRestore.session;
      return { name, sizeBytes: session.sizeBytes, readOnly: false, multiConn: true, open: async () => liveDevice(session) };
    }
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
      let resolve!: (s: LiveRestore) => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<LiveRestore>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(() => undefined);
      w = { gaveUp: false, promise, resolve, reject };
      this.waiters.set(jobId, w);
    }
    return w;
  }

  /**
   * Opens a live restore of a backup onto a volume (its job queued, the volume restoring): the
   * volume is emptied and served at once; the job then copies (session()). A failure fails the job.
   */
  async beginLive(projectId: string, backupId: string, volume: Volume, jobId: string): Promise<ExportInfo> {
    const w = this.waiter(jobId);
    try {
      const { at } = await this.listener();
      const src = this.images();
      const image = new BackupImage(src, await src.repo.readManifest(backupId));
      const lock = await RepositoryLock.acquire(src.repo.store, 'read', { backupId });
      let session: LiveRestore;
      try {
        session = await LiveRestore.open(image, volume.path, { guard: this.opts.guardOf(volume), sizeBytes: volume.sizeBytes });
      } catch (err) {
        await lock.release();
        throw err;
      }
      if (w.gaveUp) {
        // Its job has failed already: nothing will copy, so nothing is served.
        await session.close();
        await lock.release();
        throw new AppError(ErrorCode.Cancelled, 'the live restore\'s job stopped waiting for it');
      }
      const now = this.clock.now();
      const exportName = randomBytes(32).toString('base64url');
      const tls = this.opts.tls !== null;
      const h: Held = {
        id: randomUUID(), backupId, projectId, volumeId: volume.id, live: null, exportName, writable: true, tls, createdAt: now, expiresAt: now + this.opts.maxTtlSeconds * 1000,
        uri: nbdUri(at, exportName, { tls, host: this.opts.publicHost }), image, lock, liveRestore: { session, volumeId: volume.id, jobId },
      };
      this.held.set(exportName, h);
      w.resolve(session);
      return info(h);
    } catch (err) {
      // Nothing was written unless the volume was opened: the job's failure says so, and the
      // volume is available again (services/jobs/restore-backup.ts).
      const untouched = !isAppError(err, ErrorCode.Cancelled) ? withUntouched(err) : err;
      w.reject(untouched);
      throw err;
    }
  }

  async session(jobId: string): Promise<LiveRestore> {
    const w = this.waiter(jobId);
    const wait = this.opts.liveWaitMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
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
  }

  async ended(jobId: string, ok: boolean): Promise<void> {
    this.waiters.delete(jobId);
    // A failed live restore's volume is not the backup: its export ends.
    if (!ok) await this.drop([...this.held.values()].filter((h) => h.liveRestore?.jobId === jobId));
  }

  serving(volumeId: string): boolean {
    for (const h of this.held.values()) if (h.liveRestore?.volumeId === volumeId) return true;
    return false;
  }

  async close(): Promise<void> {
    for (const w of this.waiters.values()) w.reject(new AppError(ErrorCode.Cancelled, 'the service is stopping'));
    this.waiters.clear();
    if (this.sweeper) clearInterval(this.sweeper);
    await this.drop([...this.held.values()]);
    await this.server?.close();
  }
}

/** The live session as one connection's device: shared, so a connection's end closes nothing. */
function liveDevice(s: LiveRestore): NbdDevice {
  return {
    sizeBytes: s.sizeBytes,
    read: (o, l, sig) => s.read(o, l, sig),
    extents: (o, l) => s.extents(o, l),
    write: (o, d) => s.write(o, d),
    writeZeroes: (o, l) => s.writeZeroes(o, l),
    flush: () => s.flush(),
    close: async () => undefined,
  };
}

function info(h: Held): ExportInfo {
  return { id: h.id, backupId: h.backupId, volumeId: h.volumeId, live: h.liveRestore ? h.liveRestore.session.progress() : null, projectId: h.projectId, exportName: h.exportName, uri: h.uri, writable: h.writable, tls: h.tls, createdAt: h.createdAt, expiresAt: h.expiresAt };
}
