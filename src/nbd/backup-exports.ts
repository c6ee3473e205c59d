/**
 * The backups of a repository as NBD exports (`haven nbd`): export name = backup id. Read-only by
 * default; writable exports give each connection its own copy-on-write overlay (overlay.ts), or,
 * with a kept overlay file, one overlay all connections to that backup share.
 */
import { AppError, ErrorCode } from '../domain/errors.ts';
import { BackupImage, type ImageSource } from '../engine/backup-image.ts';
import { BACKUP_ID_RE } from '../engine/manifest.ts';
import { sharedDevice, type NbdDevice, type NbdExport, type NbdExports } from './nbd-server.ts';
import { CowOverlay } from './overlay.ts';

/** A backup read-only, as one connection sees it. */
export function imageDevice(image: BackupImage): NbdDevice {
  return {
    sizeBytes: image.sizeBytes,
    read: (o, l, s) => image.read(o, l, s),
    extents: (o, l) => image.extents(o, l),
    close: async () => undefined,
  };
}

/** Backup images kept (their manifests and index segments), least recently used out. */
const MAX_IMAGES = 64;

export interface RepositoryExportsOptions {
  /** Only these backups (default: every backup of the repository, looked up when asked for). */
  backupIds?: string[];
  writable?: boolean;
  /** A kept overlay (writable; one backup only). */
  overlayFile?: string;
  /** Where temporary overlays go. */
  overlayDir?: string;
}

export class RepositoryExports implements NbdExports {
  private readonly src: ImageSource;
  private readonly opts: RepositoryExportsOptions;
  private readonly images = new Map<string, Promise<BackupImage>>();
  private kept: CowOverlay | null = null;

  constructor(src: ImageSource, opts: RepositoryExportsOptions = {}) {
    if (opts.overlayFile && (!opts.writable || opts.backupIds?.length !== 1)) throw new AppError(ErrorCode.InvalidArgument, '--overlay needs --writable and exactly one --backup');
    this.src = src;
    this.opts = opts;
  }

  /** The image of a backup (its manifest read once). */
  image(id: string): Promise<BackupImage> {
    let p = this.images.get(id);
    if (p) {
      this.images.delete(id); // most recently used last
    } else {
      p = this.src.repo.readManifest(id).then((m) => new BackupImage(this.src, m));
      p.catch(() => this.images.delete(id));
    }
    this.images.set(id, p);
    // The images of the backups asked for lately (each keeps some of its index): the served ones stay.
    for (const k of this.images.keys()) {
      if (this.images.size <= MAX_IMAGES) break;
      if (!this.opts.backupIds?.includes(k)) this.images.delete(k);
    }
    return p;
  }

  async find(name: string): Promise<NbdExport | null> {
    const ids = this.opts.backupIds;
    // The empty (default) export name means the one backup served, when only one is.
    const id = name === '' && ids?.length === 1 ? ids[0]! : name;
    if (!BACKUP_ID_RE.test(id) || (ids && !ids.includes(id))) return null;
    let image: BackupImage;
    try {
      image = await this.image(id);
    } catch (err) {
      if ((err as { code?: string }).code === ErrorCode.BackupNotFound) return null;
      throw err;
    }
    const writable = this.opts.writable === true;
    return {
      name: id,
      sizeBytes: image.sizeBytes,
      readOnly: !writable,
      multiConn: !writable || this.opts.overlayFile !== undefined,
      open: () => this.open(id, image),
    };
  }

  /**
   * Opens the kept overlay (--overlay) now, so that a file made over another backup, or no overlay
   * at all, is refused before the server says it is ready. It stays open until close(): the
   * connections share it, and one ending never closes it under the next.
   */
  async openKept(): Promise<void> {
    const id = this.opts.backupIds?.[0];
    if (!this.opts.overlayFile || !id || this.kept) return;
    this.kept = await CowOverlay.open(imageDevice(await this.image(id)), { baseId: id, file: this.opts.overlayFile });
  }

  private async open(id: string, image: BackupImage): Promise<NbdDevice> {
    if (!this.opts.writable) return imageDevice(image);
    if (!this.opts.overlayFile) return CowOverlay.open(imageDevice(image), { baseId: id, ...(this.opts.overlayDir ? { dir: this.opts.overlayDir } : {}) });
    await this.openKept();
    const o = this.kept!;
    // A connection's end makes its writes durable (the map saved); the overlay stays open.
    return sharedDevice(o, () => o.flush());
  }

  /** Closes the kept overlay (its map saved). */
  async close(): Promise<void> {
    const o = this.kept;
    this.kept = null;
    await o?.close();
  }

  async list(): Promise<string[]> {
    return this.opts.backupIds ?? (await this.src.repo.listBackupIds());
  }
}
