/**
 * Small file systems for disk-full tests: a tmpfs of a given size (mounting needs root, which CI
 * has), and a filler that takes its last byte.
 */
import { execFile } from 'node:child_process';
import { constants as fsc, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Mounts a tmpfs of `size` (e.g. '16m') on `dir`; null when done, else why it could not. */
export async function mountTmpfs(dir: string, size: string): Promise<string | null> {
  try {
    await run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir]);
    return null;
  } catch (err) {
    return `cannot mount a tmpfs (${(err as Error).message.split('\n')[0]})`;
  }
}

/** Fills the file system holding `dir` to the last byte; returns the filler file. */
export async function fill(dir: string): Promise<string> {
  const file = path.join(dir, 'filler');
  const fh = await fs.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_APPEND, 0o600);
  try {
    for (let block = 1 << 20; block >= 1; block >>= 2) {
      const buf = Buffer.alloc(block, 0x5a);
      for (;;) {
        try {
          await fh.write(buf);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw err;
        }
      }
    }
    await fh.sync().catch(() => {}); // tmpfs: nothing to flush; the data is already in pages
  } finally {
    await fh.close();
  }
  return file;
}
