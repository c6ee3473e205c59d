/**
 * How large a volume Haven creates may be: HAVEN_MAX_VOLUME_GB, and what the data folder's file
 * system allows (ext4 with 4 KiB blocks stops just short of 16 TiB: ftruncate fails with EFBIG).
 * Both are checked before the volume's file is made, so a refused size leaves nothing behind.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { VolumeQuotaCheck } from './quota-service.ts';

const GiB = 1024 ** 3;

/** The limits VolumeService applies to new and adopted volumes (set by the composition root). */
export interface VolumeLimits {
  quotas: VolumeQuotaCheck | null;
  /** HAVEN_MAX_VOLUME_GB. */
  maxVolumeGb: number;
}

/** A size beyond HAVEN_MAX_VOLUME_GB is refused (400), with the limit. */
export function checkVolumeSize(sizeGb: number, maxVolumeGb: number): void {
  if (sizeGb > maxVolumeGb) throw new AppError(ErrorCode.InvalidArgument, `Volume size ${sizeGb} GB is larger than the largest volume this Haven creates (${maxVolumeGb} GB, HAVEN_MAX_VOLUME_GB).`);
}

const tooBig = (err: unknown): boolean => ['EFBIG', 'EINVAL'].includes((err as NodeJS.ErrnoException).code ?? '');

/**
 * Refuses (400) a size the file system of `dir` cannot hold as a sparse file, naming the largest it
 * can (in whole GB, found by bisection on a probe file, which is always removed).
 */
export async function checkFileSystemAllows(dir: string, sizeGb: number): Promise<void> {
  const probe = path.join(dir, `.size-probe-${randomBytes(6).toString('hex')}`);
  const fh = await fs.open(probe, 'wx', 0o600);
  try {
    try {
      await fh.truncate(sizeGb * GiB);
      return;
    } catch (err) {
      if (!tooBig(err)) throw err;
    }
    let lo = 0; // fits
    let hi = sizeGb; // does not
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      try {
        await fh.truncate(mid * GiB);
        lo = mid;
      } catch (err) {
        if (!tooBig(err)) throw err;
        hi = mid;
      }
    }
    throw new AppError(ErrorCode.InvalidArgument, `Volume size ${sizeGb} GB is larger than the data folder's file system allows for one file (at most ${lo} GB).`);
  } finally {
    await fh.close();
    await fs.rm(probe, { force: true });
  }
}
