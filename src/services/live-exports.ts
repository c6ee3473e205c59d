/**
 * LiveExports: the live restores of one host (the embedded process, or a `haven agent`), each
 * served over this host's NBD listener (nbd-endpoint.ts) while its copy runs (engine/live-restore.ts). The control
 * plane's export service asks for them through the volume's host (VolumeHost.openLive, liveCopy,
 * endLive): the volume's bytes are served where the volume is.
 *
 * An export's name is the secret the control plane chose; the volume is opened through its guard
 * (never a link or a swapped file), and a read lock on the repository holds GC's sweep off while
 * the export lives (G6). A live export ends when the control plane ends it (the user's DELETE of the
 * export, a failed restore) or with this process.
 */
import { AppError, ErrorCode } from '../domain/errors.ts';
import { BackupImage, type ImageSource } from '../engine/backup-image.ts';
import { LiveRestore } from '../engine/live-restore.ts';
import { RepositoryLock } from '../engine/locks.ts';
import type { VolumeFileGuard } from '../engine/volume-file.ts';
import type { NbdEndpoint } from '../nbd/nbd-endpoint.ts';
import { sharedDevice, type NbdExport, type NbdExports } from '../nbd/nbd-server.ts';

interface Live {
  session: LiveRestore;
  lock: RepositoryLock;
  copying: boolean;
}

export class LiveExports implements NbdExports {
  private readonly images: () => ImageSource;
  private readonly endpoint: NbdEndpoint;
  private readonly onError: ((err: unknown, where: string) => void) | undefined;
  private readonly lives = new Map<string, Live>();

  /** Serves through `endpoint` (this process's NBD listener), which it registers with. */
  constructor(images: () => ImageSource, endpoint: NbdEndpoint, onError?: (err: unknown, where: string) => void) {
    this.images = images;
    this.endpoint = endpoint;
    this.onError = onError;
    endpoint.add(this);
  }

  /**
   * Empties the volume and serves it at once as `exportName` (the backup's bytes where nothing was
   * copied or written yet); returns its URI. A failure before the volume was opened leaves it as it
   * was (details.targetUntouched).
   */
  async open(o: { backupId: string; path: string; guard: VolumeFileGuard; sizeBytes: number; exportName: string }): Promise<{ uri: string; sizeBytes: number }> {
    if (this.lives.has(o.exportName)) throw new AppError(ErrorCode.InvalidArgument, 'this export name is taken');
    let lock: RepositoryLock | null = null;
    try {
      const uri = await this.endpoint.uri(o.exportName);
      const src = this.images();
      const image = new BackupImage(src, await src.repo.readManifest(o.backupId));
      lock = await RepositoryLock.acquire(src.repo.store, 'read', { backupId: o.backupId });
      const session = await LiveRestore.open(image, o.path, { guard: o.guard, sizeBytes: o.sizeBytes });
      this.lives.set(o.exportName, { session, lock, copying: false });
      return { uri, sizeBytes: session.sizeBytes };
    } catch (err) {
      await lock?.release();
      throw untouched(err);
    }
  }

  /** Runs the copy of a live export opened here; resolves when the volume holds the whole backup. */
  async copy(exportName: string, signal: AbortSignal, onProgress: (done: number, total: number) => void): Promise<{ writtenBytes: number }> {
    const live = this.lives.get(exportName);
    if (!live) throw new AppError(ErrorCode.Cancelled, 'the live restore is no longer open on its host (the host restarted?): restore again');
    live.copying = true;
    live.session.onProgress = (p) => onProgress(p.settledBytes, p.totalBytes);
    try {
      const r = await live.session.run(signal);
      return { writtenBytes: r.writtenBytes };
    } finally {
      live.copying = false;
    }
  }

  /** Ends a live export: its connections close, the volume is closed, the lock released. */
  async end(exportName: string): Promise<void> {
    const live = this.lives.get(exportName);
    if (!live) return;
    this.lives.delete(exportName);
    await this.endpoint.disconnect((n) => n === exportName);
    await live.session.close().catch((err: unknown) => this.onError?.(err, 'live restore close'));
    await live.lock.release();
  }

  async find(name: string): Promise<NbdExport | null> {
    const live = this.lives.get(name);
    if (!live) return null;
    const s = live.session;
    return { name, sizeBytes: s.sizeBytes, readOnly: false, multiConn: true, open: async () => sharedDevice(s) };
  }

  /** NBD_OPT_LIST: refused (export names are secrets). */
  async list(): Promise<null> {
    return null;
  }

  async close(): Promise<void> {
    for (const name of [...this.lives.keys()]) await this.end(name);
  }
}

/** The error with details.targetUntouched: the volume was not written. */
function untouched(err: unknown): AppError {
  if (err instanceof AppError) return new AppError(err.code, err.message, { cause: err.cause, details: { ...err.details, targetUntouched: true } });
  return new AppError(ErrorCode.Internal, (err as Error)?.message ?? String(err), { cause: err, details: { targetUntouched: true } });
}
