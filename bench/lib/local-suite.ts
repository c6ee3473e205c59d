/**
 * The local part of the benchmark, run once per disk: the generated volume, copied into the disk's
 * work folder, backed up by every tool in full, after 1% of 4 KiB blocks changed at random ("scattered"), and
 * after 1% changed in 256 KiB runs ("clustered"); then the latest backup restored and checked by
 * SHA-256. Each step runs the tools one after the other on the same bytes.
 */
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { dirStats, type RunResult, type Tool } from './peers.ts';
import { modifyVolume, sha256File } from './volume-gen.ts';

const MiB = 1024 ** 2;

export interface LocalRow {
  fullMs: number;
  fullAdded: number;
  scatMs: number;
  scatAdded: number;
  clusMs: number;
  clusAdded: number;
  restoreMs: number;
  restoreOk: boolean;
  repoBytes: number;
  objects: number;
  peakRssKiB: number;
  /** The first step this tool failed; it took no part in the steps after. */
  error?: string;
  /** The tool ran the full backup only (a peer on the second disk, to save time). */
  fullOnly?: boolean;
}

export interface LocalResult {
  size: number;
  /** Bytes changed by each incremental's modification. */
  changedBytes: number;
  rows: Map<string, LocalRow>;
  volume: string;
}

/** Peak RSS of every step of every tool, for the goal that holds for each of Haven's steps. */
export interface RssRecord {
  tool: string;
  step: string;
  rssKiB: number;
}

/**
 * Evens out the page cache before each measured step: flushes dirty pages left by the previous step
 * (so no tool pays for another's write-back) and reads the step's input once (the volume, or for a
 * restore the tool's repository), since this machine reclaims cold page cache on its own and the
 * first tool to read after a pause would otherwise pay for disk reads the next ones are spared.
 */
export function settle(...inputs: string[]): void {
  execFileSync('sync');
  for (const p of inputs) execFileSync('sh', ['-c', 'find "$1" -type f -exec cat {} + > /dev/null', 'sh', p]);
}

/** An error message on one line, cut to a length a table cell can hold. */
export function oneLine(message: string, max = 300): string {
  const s = message.replace(/\s+/g, ' ').trim();
  return s.length > max ? `${s.slice(0, max)}...` : s;
}

export function log(line: string): void {
  console.log(`  ${line}`);
}

/**
 * Runs the part on a copy of `pristine` (the generated volume) in `work`, which the part modifies.
 * Tools named in `fullOnly` take part in the full backup only.
 */
export async function runLocal(label: string, work: string, pristine: string, size: number, tools: Tool[], rss: RssRecord[], fullOnly: string[] = []): Promise<LocalResult> {
  const volume = path.join(work, 'volume.img');
  // cp keeps the zero regions holes, as generateVolume left them.
  execFileSync('cp', ['--sparse=always', pristine, volume]);
  const rows = new Map<string, LocalRow>();
  for (const tool of tools) rows.set(tool.name, { fullMs: 0, fullAdded: 0, scatMs: 0, scatAdded: 0, clusMs: 0, clusAdded: 0, restoreMs: 0, restoreOk: false, repoBytes: 0, objects: 0, peakRssKiB: 0, ...(fullOnly.includes(tool.name) ? { fullOnly: true } : {}) });
  const note = (tool: Tool, step: string, r: RunResult): void => {
    rss.push({ tool: tool.name, step: `${label} ${step}`, rssKiB: r.rssKiB });
    const row = rows.get(tool.name)!;
    row.peakRssKiB = Math.max(row.peakRssKiB, r.rssKiB);
  };
  const lastId = new Map<string, string>();
  // A tool that fails a step is reported and left out of the steps after; the others go on.
  const each = async (name: string, fn: (tool: Tool, row: LocalRow) => Promise<void>): Promise<void> => {
    for (const tool of tools) {
      const row = rows.get(tool.name)!;
      if (row.error || (row.fullOnly && name !== 'init' && name !== 'full')) continue;
      try {
        await fn(tool, row);
      } catch (err) {
        row.error = `${name}: ${oneLine((err as Error).message)}`;
        log(`[${label}] ${name.padEnd(10)} ${tool.name.padEnd(7)} FAILED: ${row.error}`);
      }
    }
  };
  const step = (name: string, set: (r: LocalRow, ms: number, added: number) => void): Promise<void> =>
    each(name, async (tool, row) => {
      settle(volume);
      const before = await dirStats(tool.repo);
      const r = await tool.backup(volume);
      const after = await dirStats(tool.repo);
      set(row, r.ms, after.bytes - before.bytes);
      note(tool, name, r);
      lastId.set(tool.name, r.id);
      log(`[${label}] ${name.padEnd(10)} ${tool.name.padEnd(7)} ${(r.ms / 1000).toFixed(2)} s, +${((after.bytes - before.bytes) / MiB).toFixed(1)} MiB, peak RSS ${(r.rssKiB / 1024).toFixed(0)} MiB`);
    });
  await each('init', async (tool) => void (await tool.init()));
  await step('full', (r, ms, a) => { r.fullMs = ms; r.fullAdded = a; });
  const scat = await modifyVolume(volume, size, 4096, 2);
  await step('scattered', (r, ms, a) => { r.scatMs = ms; r.scatAdded = a; });
  await modifyVolume(volume, size, 256 * 1024, 3);
  await step('clustered', (r, ms, a) => { r.clusMs = ms; r.clusAdded = a; });
  const expected = await sha256File(volume);
  await each('restore', async (tool, row) => {
    settle(tool.repo);
    const dir = path.join(work, `restore-${tool.name}`);
    await fs.mkdir(dir, { recursive: true });
    const r = await tool.restore(lastId.get(tool.name)!, volume, dir);
    row.restoreMs = r.ms;
    row.restoreOk = (await sha256File(r.file)) === expected;
    note(tool, 'restore', r);
    const st = await dirStats(tool.repo);
    row.repoBytes = st.bytes;
    row.objects = st.files;
    log(`[${label}] restore    ${tool.name.padEnd(7)} ${(r.ms / 1000).toFixed(2)} s, sha256 ${row.restoreOk ? 'ok' : 'MISMATCH'}, peak RSS ${(r.rssKiB / 1024).toFixed(0)} MiB`);
    await fs.rm(dir, { recursive: true, force: true });
  });
  // The repositories are measured; only the volume is needed after (the sparse part copies it).
  if (!process.env.HAVEN_BENCH_KEEP) for (const tool of tools) await fs.rm(tool.repo, { recursive: true, force: true });
  return { size, changedBytes: scat.changedBytes, rows, volume };
}
