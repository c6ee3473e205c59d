/**
 * The sparse part: the goal "holes cost nothing". A volume 16 times the size holding the same bytes
 * as the benchmark volume, cut into 64 pieces spread evenly over it with holes between (the pieces'
 * own zero regions stay holes, as in the original), is backed up in full by Haven into a fresh
 * repository, right after the original volume is backed up in full into another fresh one.
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
  const plain = havenTool(path.join(work, 'plain'), node, cli);
  const holey = havenTool(path.join(work, 'holey'), node, cli);
  await fs.mkdir(path.join(work, 'plain'), { recursive: true });
  await fs.mkdir(path.join(work, 'holey'), { recursive: true });
  await plain.init();
  await holey.init();
  settle(volume);
  const a = await plain.backup(volume);
  rss.push({ tool: 'Haven', step: 'sparse part: full backup of the volume', rssKiB: a.rssKiB });
  log(`[sparse] full backup of the ${(size / MiB).toFixed(0)} MiB volume ${(a.ms / 1000).toFixed(2)} s`);
  // The sparse file's data was just written and is in the page cache; reading it whole to warm it
  // would fill the cache with the holes' zero pages instead.
  settle();
  const b = await holey.backup(sparse);
  rss.push({ tool: 'Haven', step: 'sparse part: full backup of the sparse volume', rssKiB: b.rssKiB });
  const ra = JSON.parse(a.stdout) as { newBytes: number };
  const rb = JSON.parse(b.stdout) as { sizeBytes: number; newBytes: number };
  log(`[sparse] full backup of the ${(size * SPARSE_FACTOR / MiB).toFixed(0)} MiB sparse volume ${(b.ms / 1000).toFixed(2)} s (${(b.ms / a.ms).toFixed(2)}x)`);
  await fs.rm(sparse, { force: true });
  return { size, sparseSize: size * SPARSE_FACTOR, volumeMs: a.ms, sparseMs: b.ms, sparseReported: rb.sizeBytes, volumeNewBytes: ra.newBytes, sparseNewBytes: rb.newBytes };
}
