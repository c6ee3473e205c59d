/**
 * Where the service's volumes may live and how jobs reach their files: the one place that turns a
 * volume row into a guarded open (engine/volume-file.ts). Adopted volumes must stay under
 * HAVEN_VOLUME_ROOTS, volumes Haven created under its own volumes folder, snapshots under its
 * snapshots folder; nothing of Haven's own (the data folder, the chunk repository) is ever a volume.
 */
import { spawn } from 'node:child_process';
import { constants as fsc, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import type { Volume } from '../domain/model.ts';
import { isSameFile, isUnder, openVolumeFile, type OpenedVolumeFile, type VolumeFileGuard } from '../engine/volume-file.ts';

export interface VolumeFilesOptions {
  dataDir: string;
  volumeRoots: readonly string[];
  /** Folders that hold Haven's own files besides the data folder (a local chunk repository). */
  privateDirs?: readonly string[];
}

export class VolumeFiles {
  private readonly opts: VolumeFilesOptions;

  constructor(opts: VolumeFilesOptions) {
    this.opts = opts;
  }

  get volumesDir(): string {
    return path.join(this.opts.dataDir, 'volumes');
  }

  get snapshotsDir(): string {
    return path.join(this.opts.dataDir, 'snapshots');
  }

  get volumeRoots(): readonly string[] {
    return this.opts.volumeRoots;
  }

  /** The guard every open of this volume's path goes through. */
  guardOf(v: Pick<Volume, 'adopted' | 'fileId'>): VolumeFileGuard {
    return { roots: v.adopted ? this.opts.volumeRoots : [this.volumesDir], fileId: v.fileId };
  }

  /** The guard of a snapshot's file (Haven's own, in the snapshots folder). */
  snapshotGuard(): VolumeFileGuard {
    return { roots: [this.snapshotsDir] };
  }

  /**
   * Opens a path an admin asks to adopt: under a volume root, no link, one hard link only, and
   * nothing of Haven's own (its data folder, its repository), checked on the opened descriptor.
   * The caller closes the returned handle.
   */
  async openForAdoption(requested: string): Promise<OpenedVolumeFile> {
    const opened = await openVolumeFile(requested, fsc.O_RDWR, { roots: this.opts.volumeRoots }).catch((err: unknown) => {
      if (isAppError(err, ErrorCode.VolumePathRefused)) throw err;
      const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is not readable and writable by Haven`, { cause: err });
      if (code === 'EISDIR') throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} is neither a regular file nor a block device`, { cause: err });
      throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} cannot be adopted: ${(err as Error).message}`, { cause: err });
    });
    try {
      for (const own of [this.opts.dataDir, ...(this.opts.privateDirs ?? [])]) {
        const real = await fs.realpath(own).catch(() => own);
        if (isUnder(opened.realPath, real) || isUnder(opened.realPath, own)) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} lies in Haven's own data (${own}); it cannot be a volume`);
      }
      if (opened.realPath !== requested) throw new AppError(ErrorCode.VolumePathRefused, `path ${requested} resolves to ${opened.realPath} through a symbolic link`);
      return opened;
    } catch (err) {
      await opened.fh.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Copies a volume's (or snapshot's) bytes to `to`, keeping holes, as a reflink when the file
   * system can: coreutils' cp reads the very descriptor checked here (as its standard input, so no
   * path is looked up again), and writes a temporary name that is renamed when complete.
   */
  async copyOut(from: string, guard: VolumeFileGuard, to: string): Promise<void> {
    const { fh } = await openVolumeFile(from, fsc.O_RDONLY, guard);
    const tmp = `${to}.tmp-${process.pid}`;
    try {
      await new Promise<void>((resolve, reject) => {
        const child = spawn('cp', ['--reflink=auto', '--sparse=always', '--', '/dev/stdin', tmp], { stdio: [fh.fd, 'ignore', 'pipe'] });
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(stderr.trim() || `cp exited with ${code}`))));
      });
      await fs.rename(tmp, to);
    } catch (err) {
      await fs.rm(tmp, { force: true }); // best effort cleanup of the partial copy
      throw err;
    } finally {
      await fh.close();
    }
  }

  /**
   * Removes the file of a volume Haven created, only if the path still names that file (a path
   * swapped for a link or another file is left alone, and the deletion refused).
   */
  async removeCreated(v: Pick<Volume, 'path' | 'fileId' | 'id'>): Promise<void> {
    // Only in Haven's own volumes folder: a request naming any other file is refused.
    if (!isUnder(path.normalize(v.path), this.volumesDir)) throw new AppError(ErrorCode.VolumePathRefused, `the file of volume ${v.id} (${v.path}) is not in Haven's volumes folder ${this.volumesDir}; Haven leaves it alone`);
    const st = await fs.lstat(v.path).catch(() => null);
    if (!st) return; // already gone
    if (st.isSymbolicLink() || (v.fileId ? !(await isSameFile(v.path, v.fileId)) : !st.isFile())) {
      throw new AppError(ErrorCode.VolumePathRefused, `the file of volume ${v.id} (${v.path}) was replaced by another file or a link; Haven leaves it alone`);
    }
    await fs.rm(v.path, { force: true });
  }
}
