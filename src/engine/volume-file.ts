/**
 * Opening a volume's file or device safely: the one way every job (backup, restore, snapshot,
 * delete) reaches a volume's bytes in the service.
 *
 * A volume is a path the operator allowed (under HAVEN_VOLUME_ROOTS, or Haven's own volumes
 * folder). Between adoption and use, whoever can write the folder may swap the path for a symbolic
 * link or another file; following it would read a foreign file into a backup or overwrite it with a
 * restore. So an open here:
 *   - never follows a symbolic link in the last component (O_NOFOLLOW: ELOOP);
 *   - resolves the opened descriptor itself (/proc/self/fd, so no second path lookup can race) and
 *     requires that real path to lie under one of the volume's roots (a symlinked folder on the way
 *     is caught here);
 *   - accepts only a regular file with a single link, or a block device;
 *   - compares the device and inode with those recorded when Haven adopted or created the volume
 *     (the "file id"), so a file renamed into place is not the volume.
 * Only then does the caller get the descriptor, and it does all its I/O through it (a reopen with
 * other flags, such as O_DIRECT, goes through /proc/self/fd as well: the same inode, whatever the
 * path now names).
 */
import { constants as fsc, promises as fs, type BigIntStats } from 'node:fs';
import * as path from 'node:path';
import { AppError, ErrorCode } from '../domain/errors.ts';

/** Where a volume may be and which file it is. */
export interface VolumeFileGuard {
  /** Folders (absolute) under which the opened file's real path must lie. */
  roots: readonly string[];
  /** "dev:ino" recorded at adoption or creation; null/undefined: not known (volumes from older builds). */
  fileId?: string | null | undefined;
}

export interface OpenedVolumeFile {
  fh: fs.FileHandle;
  stat: BigIntStats;
  /** "dev:ino" of the opened file. */
  fileId: string;
  /** The real path of the opened descriptor. */
  realPath: string;
}

export function fileIdOf(st: BigIntStats): string {
  return `${st.dev}:${st.ino}`;
}

function refused(message: string, cause?: unknown): AppError {
  return new AppError(ErrorCode.VolumePathRefused, message, cause === undefined ? undefined : { cause });
}

/** True when `p` is `root` or lies below it (both absolute and normalized). */
export function isUnder(p: string, root: string): boolean {
  const r = root.endsWith('/') ? root : `${root}/`;
  return p === root || p.startsWith(r);
}

/** The real path of an open descriptor, as the kernel knows it (no path lookup that could race). */
async function realPathOfFd(fh: fs.FileHandle, fallback: string): Promise<string> {
  try {
    const p = await fs.readlink(`/proc/self/fd/${fh.fd}`);
    if (p.startsWith('/')) return p.replace(/ \(deleted\)$/, '');
  } catch {
    // no /proc (not Linux): the path lookup below is the best there is
  }
  return fs.realpath(fallback);
}

const realRoots = new Map<string, string>();
async function realRoot(root: string): Promise<string> {
  let r = realRoots.get(root);
  if (r === undefined) {
    r = await fs.realpath(root).catch(() => path.resolve(root));
    realRoots.set(root, r);
  }
  return r;
}

/**
 * Checks an opened descriptor against the guard; throws VolumePathRefused (and leaves the
 * descriptor open: the caller closes it).
 */
export async function checkOpened(fh: fs.FileHandle, shownPath: string, guard: VolumeFileGuard): Promise<OpenedVolumeFile> {
  const st = await fh.stat({ bigint: true });
  if (!st.isFile() && !st.isBlockDevice()) throw refused(`volume path ${shownPath} is neither a regular file nor a block device`);
  if (st.isFile() && st.nlink > 1n) throw refused(`volume path ${shownPath} has ${st.nlink} hard links; Haven uses only files with one link`);
  const realPath = await realPathOfFd(fh, shownPath);
  let under = false;
  for (const root of guard.roots) if (isUnder(realPath, await realRoot(root)) || isUnder(realPath, root)) under = true;
  if (!under) throw refused(`volume path ${shownPath} resolves to ${realPath}, outside its volume roots (${guard.roots.join(':')})`);
  const id = fileIdOf(st);
  if (guard.fileId && guard.fileId !== id) throw refused(`volume path ${shownPath} is no longer the file Haven adopted (device:inode ${id}, recorded ${guard.fileId}); it was replaced`);
  return { fh, stat: st, fileId: id, realPath };
}

/**
 * Opens a volume's path with `flags` (O_NOFOLLOW is added) and checks it against the guard.
 * Never creates a file (O_CREAT and O_TRUNC are refused: a restore truncates through the
 * descriptor once it knows the file is the volume).
 */
export async function openVolumeFile(p: string, flags: number, guard: VolumeFileGuard): Promise<OpenedVolumeFile> {
  if ((flags & (fsc.O_CREAT | fsc.O_TRUNC)) !== 0) throw new Error('openVolumeFile never creates or truncates');
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(p, flags | fsc.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw refused(`volume path ${p} is a symbolic link; Haven does not follow links to volumes`, err);
    if (code === 'ENOENT') throw refused(`volume path ${p} does not exist`, err);
    throw new AppError(ErrorCode.VolumeUnreadable, `cannot open volume ${p}: ${(err as Error).message}`, { cause: err });
  }
  try {
    return await checkOpened(fh, p, guard);
  } catch (err) {
    await fh.close().catch(() => undefined); // the refusal is what matters
    throw err;
  }
}

/**
 * Opens the file behind `fh` once more, with other flags (O_DIRECT), through /proc/self/fd: the
 * same inode whatever its path names now. Null when that is not possible (no /proc) or refused.
 */
export async function reopenSame(fh: fs.FileHandle, flags: number): Promise<fs.FileHandle | null> {
  let again: fs.FileHandle;
  try {
    again = await fs.open(`/proc/self/fd/${fh.fd}`, flags & ~(fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NOFOLLOW));
  } catch {
    return null;
  }
  const [a, b] = await Promise.all([fh.stat({ bigint: true }), again.stat({ bigint: true })]);
  if (a.dev !== b.dev || a.ino !== b.ino) {
    await again.close().catch(() => undefined);
    return null;
  }
  return again;
}

/** Whether the file at `p` (not following a link) is the one with `fileId`; for deletions. */
export async function isSameFile(p: string, fileId: string): Promise<boolean> {
  const st = await fs.lstat(p, { bigint: true }).catch(() => null);
  return !!st && !st.isSymbolicLink() && fileIdOf(st) === fileId;
}
