/**
 * The sparse part: the goal "holes cost nothing". A volume 16 times the size holding the same bytes
 * as the benchmark volume, cut into 64 pieces spread evenly over it with holes between (the pieces'
 * own zero regions stay holes, as in the original), is backed up in full by Haven into a fresh
 * repository, and so is the original volume; the times are means of two runs each.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { log, settle, type RssRecord } from './local-suite.ts';
import { havenTool } from './peers.ts';

const MiB = 1024 ** 2;
export const SPARSE_FACTOR = 16;
const PIECES = 64;

export interface SparseResult {
  size: number;
  sparseSize: number;
  /** Mean times of the two full backups of each. */
  volumeMs: number;
  sparseMs: number;
  /** Bytes Haven's backup reported for the sparse volume (must be its whole size). */
  sparseReported: number;
  /** New (non-zero, unique) bytes each backup stored: equal when the holes hid no data. */
  volumeNewBytes: number;
  sparseNewBytes: number;
}

/** Copies `volume` in pieces across a file SPARSE_FACTOR times its size, leaving zero regions unwritten. */
async function makeSparse(volume: string, sparse: string, size: number): Promise<void> {
  const piece = Math.max(MiB, Math.floor(size / PIECES / MiB) * MiB);
  const src = await fs.open(volume, 'r');
  const dst = await fs.open(sparse, 'w');
  const buf = Buffer.alloc(MiB);
  const zero = Buffer.alloc(MiB);
  try {
    for (let from = 0, i = 0; from < size; from += piece, i++) {
      const to = i * piece * SPARSE_FACTOR;
      for (let o = 0; o < piece && from + o < size; o += MiB) {
        const n = Math.min(MiB, size - from - o);
        const { bytesRead } = await src.read(buf, 0, n, from + o);
        if (!buf.subarray(0, bytesRead).equals(zero.subarray(0, bytesRead))) await dst.write(buf, 0, bytesRead, to + o);
      }
    }
    await dst.truncate(size * SPARSE_FACTOR);
    await dst.sync();
  } finally {
    await src.close();
    await dst.close();
  }
}

export async function runSparse(work: string, volume: string, size: number, node: string, cli: string, rss: RssRecord[]): Promise<SparseResult> {
  await fs.mkdir(work, { recursive: true });
  const sparse = path.join(work, 'sparse.img');
  await makeSparse(volume, sparse, size);
  // Each volume twice, in the order volume, sparse, sparse, volume, each into a fresh repository,
  // and the means compared: whatever favours an earlier or later run (a machine's other load, page
  // cache) then falls on both alike. Haven against itself, so no peer's order matters here.
  const times = { volume: [] as number[], sparse: [] as number[] };
  let volumeNewBytes = 0;
  let sparseNewBytes = 0;
  let sparseReported = 0;
  for (const [i, kind] of (['volume', 'sparse', 'sparse', 'volume'] as const).entries()) {
    const dir = path.join(work, `${kind}-${i}`);
    await fs.mkdir(dir);
    const haven = havenTool(dir, node, cli);
    await haven.init();
    // The sparse file's data was just written and is in the page cache; reading it whole to warm it
    // would fill the cache with the holes' zero pages instead.
    if (kind === 'volume') settle(volume);
    else settle();
    const r = await haven.backup(kind === 'volume' ? volume : sparse);
    rss.push({ tool: 'Haven', step: `sparse part: full backup of the ${kind === 'volume' ? 'volume' : 'sparse volume'}`, rssKiB: r.rssKiB });
    const out = JSON.parse(r.stdout) as { sizeBytes: number; newBytes: number };
    times[kind].push(r.ms);
    if (kind === 'volume') volumeNewBytes = out.newBytes;
    else [sparseNewBytes, sparseReported] = [out.newBytes, out.sizeBytes];
    log(`[sparse] full backup of the ${((kind === 'volume' ? size : size * SPARSE_FACTOR) / MiB).toFixed(0)} MiB ${kind === 'volume' ? 'volume' : 'sparse volume'} ${(r.ms / 1000).toFixed(2)} s`);
    await fs.rm(dir, { recursive: true, force: true });
  }
  await fs.rm(sparse, { force: true });
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  return { size, sparseSize: size * SPARSE_FACTOR, volumeMs: mean(times.volume), sparseMs: mean(times.sparse), sparseReported, volumeNewBytes, sparseNewBytes };
}
