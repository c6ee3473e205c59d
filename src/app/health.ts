/**
 * What /healthz checks beyond "the process answers": that the folders Haven writes to can still be
 * written. A probe writes a small file, fsyncs it and deletes it; a full disk (ENOSPC, EDQUOT), a
 * read-only remount or a vanished folder shows up as a reason instead of as 500s on every request.
 * Results are cached for a few seconds, so a monitor polling /healthz costs one probe per period
 * however often it asks, and a probe never runs twice at once.
 */
import { constants as fsc, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { isNoSpaceError } from '../domain/errors.ts';
import { errnoText } from '../domain/errno.ts';

export const HEALTH_PROBE_TTL_MS = 3000;
const PROBE_BYTES = 4096; // one page: what a catalog or pack write needs at the least

/** 'ok', or why the folder cannot be written. */
export async function probeWritable(dir: string, prefix: string): Promise<string> {
  const file = path.join(dir, `${prefix}${randomBytes(6).toString('hex')}`);
  let fh: fs.FileHandle | null = null;
  try {
    fh = await fs.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    await fh.write(Buffer.alloc(PROBE_BYTES, 0x68), 0, PROBE_BYTES, 0);
    await fh.sync();
    return 'ok';
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (isNoSpaceError(err)) return `no space left: cannot write to ${dir}`;
    return `cannot write to ${dir}: ${errnoText(e)}`;
  } finally {
    await fh?.close().catch(() => {}); // close errors change nothing about the verdict
    await fs.rm(file, { force: true }).catch(() => {}); // best effort: the probe file holds nothing
  }
}

/** Caches a probe's answer for `ttlMs`; concurrent callers share one running probe. */
export class CachedProbe {
  private readonly run: () => Promise<string>;
  private readonly ttlMs: number;
  private cached: { at: number; value: Promise<string> } | null = null;
  constructor(run: () => Promise<string>, ttlMs = HEALTH_PROBE_TTL_MS) {
    this.run = run;
    this.ttlMs = ttlMs;
  }
  get(now = Date.now()): Promise<string> {
    if (!this.cached || now - this.cached.at >= this.ttlMs) this.cached = { at: now, value: this.run() };
    return this.cached.value;
  }
}
