/**
 * Volume sources: what a backup reads. A raw image file or a block device, opened read-only (a
 * backup never modifies its volume).
 */
import { constants as fsc, promises as fs } from 'node:fs';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { ChangedBlocks } from './changed-blocks.ts';
import { qemuImgDataExtents, type Extent } from './volume-extents.ts';
import { openVolumeFile, type VolumeFileGuard } from './volume-file.ts';

export interface VolumeSource {
  readonly sizeBytes: number;
  /** Reads up to `length` bytes at `position` into `into`; returns bytes read (short only at the end). */
  read(into: Uint8Array, length: number, position: number): Promise<number>;
  /**
   * The byte ranges that may hold data, sorted and disjoint; every byte outside them reads as
   * zeros, so a backup records those chunks as holes without reading them (isHole in
   * volume-extents.ts). Null (or no method): not known, read everything. Taken once, before the
   * reading starts: data written into a hole after that is missed, as a write behind the reader
   * would be; a volume written to during its backup is copied as of no single moment either way
   * (a snapshot is).
   */
  dataExtents?(signal?: AbortSignal): Promise<Extent[] | null>;
  /**
   * Changed-block tracking: the ranges that may differ from what the backup `sinceBackupId` read
   * (changed-blocks.ts). Null (or no method): not known, every chunk is read. Used only when
   * `sinceBackupId` is the backup's parent.
   */
  changedBlocks?(signal?: AbortSignal): Promise<ChangedBlocks | null>;
  close(): Promise<void>;
}

export class FileVolumeSource implements VolumeSource {
  readonly sizeBytes: number;
  private readonly fh: fs.FileHandle;

  private constructor(fh: fs.FileHandle, sizeBytes: number) {
    this.fh = fh;
    this.sizeBytes = sizeBytes;
  }

  /**
   * Opens a volume read-only. With a guard (the service's volumes), the path must be the very file
   * Haven adopted, under its roots, not through a symbolic link (volume-file.ts); without one (the
   * operator's CLI), links are followed like any tool does.
   */
  static async open(path: string, guard?: VolumeFileGuard): Promise<FileVolumeSource> {
    let fh: fs.FileHandle;
    if (guard) {
      fh = (await openVolumeFile(path, fsc.O_RDONLY, guard)).fh;
    } else {
      try {
        fh = await fs.open(path, 'r');
      } catch (err) {
        throw new AppError(ErrorCode.VolumeUnreadable, `cannot open volume ${path}: ${(err as Error).message}`, { cause: err });
      }
    }
    try {
      const st = await fh.stat();
      let size: number;
      if (st.isFile()) size = st.size;
      else if (st.isBlockDevice()) size = await blockDeviceSize(st.rdev);
      else throw new AppError(ErrorCode.VolumeUnreadable, `volume ${path} is neither a file nor a block device`);
      return new FileVolumeSource(fh, size);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async read(into: Uint8Array, length: number, position: number): Promise<number> {
    let got = 0;
    while (got < length) {
      const { bytesRead } = await this.fh.read(into, got, length - got, position + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got;
  }

  /**
   * A regular file's data extents, from qemu-img (volume-extents.ts), on this very descriptor.
   * Null for a block device: SEEK_DATA there reports the whole device as data (a thin volume's
   * unprovisioned blocks are not visible through it). Null without running anything for a file
   * with no holes (as many 512-byte blocks allocated as it is long: st_blocks counts 512-byte units
   * whatever the file system's block size; blocks preallocated past the end count too, which only
   * costs the map), and for a file whose size changed since it was opened (the read loop reports that).
   */
  async dataExtents(signal?: AbortSignal): Promise<Extent[] | null> {
    const st = await this.fh.stat();
    if (!st.isFile() || st.size !== this.sizeBytes || st.blocks * 512 >= st.size) return null;
    return qemuImgDataExtents(this.fh.fd, this.sizeBytes, signal ? { signal } : {});
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Size of a block device from sysfs (Node has no BLKGETSIZE64 ioctl). */
export async function blockDeviceSize(rdev: number): Promise<number> {
  const major = (rdev >> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  const sectors = Number((await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  return sectors * 512;
}
