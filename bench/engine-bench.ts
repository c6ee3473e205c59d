/**
 * `npm run bench`: Haven's engine against restic and borg on the same data, in one run.
 *
 * A 4 GiB raw volume (40% zeros, 30% log-like text, 30% random; HAVEN_BENCH_SIZE to change), backed
 * up in full, then after 1% of 4 KiB blocks changed at random ("scattered"), then after 1% changed in
 * 256 KiB runs ("clustered"); then the latest backup is restored and checked by SHA-256. Encryption is
 * on for every tool. Prints a table with ratios to each peer and the machine's physical limits.
 * Work files go to HAVEN_BENCH_DIR (default bench/work) and are removed at the end;
 * HAVEN_BENCH_PEERS=restic (or none) limits the peers measured.
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { borgTool, dirStats, ensurePeers, havenTool, resticTool, type Tool } from './lib/peers.ts';
import { generateVolume, modifyVolume, randomStream, sha256File } from './lib/volume-gen.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const root = path.resolve(import.meta.dirname, '..');

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(G|M)i?B?$/i.exec(s.trim());
  if (!m) throw new Error(`HAVEN_BENCH_SIZE: cannot parse ${s}`);
  return Math.round(Number(m[1]) * (m[2]!.toUpperCase() === 'G' ? GiB : MiB));
}

interface Row {
  fullMs: number;
  fullAdded: number;
  scatMs: number;
  scatAdded: number;
  clusMs: number;
  clusAdded: number;
  restoreMs: number;
  restoreOk: boolean;
  repoBytes: number;
  peakRssKiB: number;
  objects: number;
}

/**
 * Evens out the page cache before each measured step: flushes dirty pages left by the previous step
 * (so no tool pays for another's write-back) and reads the step's input once (the volume, or for a
 * restore the tool's repository), since this machine reclaims cold page cache on its own and the
 * first tool to read after a pause would otherwise pay for disk reads the next ones are spared.
 */
function settle(...inputs: string[]): void {
  execFileSync('sync');
  for (const p of inputs) execFileSync('sh', ['-c', 'find "$1" -type f -exec cat {} + > /dev/null', 'sh', p]);
}

async function physicalLimits(volume: string): Promise<{ readMBs: number; shaMBs: number; zstdMBs: number }> {
  const fh = await fs.open(volume, 'r');
  const buf = Buffer.allocUnsafe(8 * MiB);
  let t = performance.now();
  let total = 0;
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, total);
    if (!bytesRead) break;
    total += bytesRead;
  }
  await fh.close();
  const readMBs = total / 1e6 / ((performance.now() - t) / 1000);
  const rnd = randomStream(7)(256 * MiB);
  t = performance.now();
  for (let o = 0; o < rnd.length; o += 64 * 1024) createHash('sha256').update(rnd.subarray(o, o + 64 * 1024)).digest();
  const shaMBs = rnd.length / 1e6 / ((performance.now() - t) / 1000);
  const text = Buffer.from(Array.from({ length: 400_000 }, (_, i) => `2026-01-01T00:00:${i % 60}Z INFO req=${randomBytes(4).toString('hex')} status=200 ms=${i % 900}\n`).join(''));
  t = performance.now();
  for (let o = 0; o < text.length; o += 64 * 1024) zlib.zstdCompressSync(text.subarray(o, o + 64 * 1024), { params: { [zlib.constants.ZSTD_c_compressionLevel]: 1 } });
  const zstdMBs = text.length / 1e6 / ((performance.now() - t) / 1000);
  return { readMBs, shaMBs, zstdMBs };
}

async function main(): Promise<void> {
  const size = parseSize(process.env.HAVEN_BENCH_SIZE ?? '4GiB');
  const work = path.resolve(process.env.HAVEN_BENCH_DIR ?? path.join(root, 'bench', 'work'));
  await fs.rm(work, { recursive: true, force: true });
  await fs.mkdir(work, { recursive: true });
  const missing = ensurePeers();
  const tools: Tool[] = [havenTool(work, process.execPath, path.join(root, 'bin', 'haven.js'))];
  const wanted = (process.env.HAVEN_BENCH_PEERS ?? 'restic,borg').split(',');
  if (wanted.includes('restic') && !missing.includes('restic')) tools.push(resticTool(work));
  if (wanted.includes('borg') && !missing.includes('borgbackup')) tools.push(borgTool(work));
  if (missing.includes('time')) throw new Error('/usr/bin/time is needed (Debian package time)');
  if (missing.length) console.log(`peers not available: ${missing.join(', ')}`);

  const volume = path.join(work, 'volume.img');
  let t = performance.now();
  const gen = await generateVolume(volume, size, 1);
  console.log(`generated ${(size / GiB).toFixed(2)} GiB volume in ${((performance.now() - t) / 1000).toFixed(1)} s (zeros ${(gen.zeroBytes / size * 100).toFixed(0)}%, text ${(gen.textBytes / size * 100).toFixed(0)}%, random ${(gen.randomBytes / size * 100).toFixed(0)}%)`);
  const limits = await physicalLimits(volume);

  const rows = new Map<string, Row>();
  for (const tool of tools) {
    await tool.init();
    rows.set(tool.name, { fullMs: 0, fullAdded: 0, scatMs: 0, scatAdded: 0, clusMs: 0, clusAdded: 0, restoreMs: 0, restoreOk: false, repoBytes: 0, peakRssKiB: 0, objects: 0 });
  }
  const step = async (label: string, set: (r: Row, ms: number, added: number) => void): Promise<void> => {
    for (const tool of tools) {
      settle(volume);
      const before = await dirStats(tool.repo);
      const r = await tool.backup(volume, label);
      const after = await dirStats(tool.repo);
      const row = rows.get(tool.name)!;
      set(row, r.ms, after.bytes - before.bytes);
      row.peakRssKiB = Math.max(row.peakRssKiB, r.rssKiB);
      console.log(`  ${label.padEnd(10)} ${tool.name.padEnd(7)} ${(r.ms / 1000).toFixed(2)} s, +${((after.bytes - before.bytes) / MiB).toFixed(1)} MiB`);
    }
  };
  await step('full', (r, ms, a) => { r.fullMs = ms; r.fullAdded = a; });
  const scat = await modifyVolume(volume, size, 4096, 2);
  await step('scattered', (r, ms, a) => { r.scatMs = ms; r.scatAdded = a; });
  await modifyVolume(volume, size, 256 * 1024, 3);
  await step('clustered', (r, ms, a) => { r.clusMs = ms; r.clusAdded = a; });
  const expected = await sha256File(volume);
  for (const tool of tools) {
    settle(tool.repo);
    const dir = path.join(work, `restore-${tool.name}`);
    await fs.mkdir(dir, { recursive: true });
    const r = await tool.restore(volume, dir);
    const row = rows.get(tool.name)!;
    row.restoreMs = r.ms;
    row.restoreOk = (await sha256File(r.file)) === expected;
    row.peakRssKiB = Math.max(row.peakRssKiB, r.rssKiB);
    const st = await dirStats(tool.repo);
    row.repoBytes = st.bytes;
    row.objects = st.files;
    console.log(`  restore    ${tool.name.padEnd(7)} ${(r.ms / 1000).toFixed(2)} s, sha256 ${row.restoreOk ? 'ok' : 'MISMATCH'}`);
    await fs.rm(dir, { recursive: true, force: true });
  }

  printTable(size, scat.changedBytes, rows, limits);
  if (!process.env.HAVEN_BENCH_KEEP) await fs.rm(work, { recursive: true, force: true });
}

function printTable(size: number, changed: number, rows: Map<string, Row>, limits: { readMBs: number; shaMBs: number; zstdMBs: number }): void {
  const names = [...rows.keys()];
  const peers = names.filter((n) => n !== 'Haven');
  const h = rows.get('Haven')!;
  const mbs = (ms: number): string => `${(size / 1e6 / (ms / 1000)).toFixed(0)} MB/s`;
  const sec = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
  const mib = (b: number): string => `${(b / MiB).toFixed(1)} MiB`;
  const pct = (b: number): string => `${((b / size) * 100).toFixed(1)}%`;
  type Metric = [string, (r: Row) => string, (r: Row) => number, 'higher' | 'lower'];
  const metrics: Metric[] = [
    ['full backup time', (r) => `${sec(r.fullMs)} (${mbs(r.fullMs)})`, (r) => r.fullMs, 'lower'],
    ['full backup added', (r) => mib(r.fullAdded), (r) => r.fullAdded, 'lower'],
    ['scattered incr. time', (r) => sec(r.scatMs), (r) => r.scatMs, 'lower'],
    ['scattered incr. added', (r) => `${mib(r.scatAdded)} (${pct(r.scatAdded)})`, (r) => r.scatAdded, 'lower'],
    ['clustered incr. time', (r) => sec(r.clusMs), (r) => r.clusMs, 'lower'],
    ['clustered incr. added', (r) => `${mib(r.clusAdded)} (${pct(r.clusAdded)})`, (r) => r.clusAdded, 'lower'],
    ['restore time (sha256 checked)', (r) => `${sec(r.restoreMs)} (${mbs(r.restoreMs)})${r.restoreOk ? '' : ' MISMATCH'}`, (r) => r.restoreMs, 'lower'],
    ['repository size', (r) => mib(r.repoBytes), (r) => r.repoBytes, 'lower'],
    ['peak RSS', (r) => `${(r.peakRssKiB / 1024).toFixed(0)} MiB`, (r) => r.peakRssKiB, 'lower'],
    ['objects in repository', (r) => String(r.objects), (r) => r.objects, 'lower'],
    ['MiB per object', (r) => (r.repoBytes / MiB / Math.max(1, r.objects)).toFixed(1), (r) => r.repoBytes / Math.max(1, r.objects), 'higher'],
  ];
  const head = ['metric', ...names, ...peers.map((p) => `Haven vs ${p}`)];
  const lines = metrics.map(([label, fmt, val, better]) => [
    label,
    ...names.map((n) => fmt(rows.get(n)!)),
    ...peers.map((p) => {
      const a = val(h);
      const b = val(rows.get(p)!);
      if (!a || !b) return '-';
      // Ratios read "times better": >1 means Haven is better, whichever direction is good.
      return `${(better === 'lower' ? b / a : a / b).toFixed(2)}x`;
    }),
  ]);
  const md = (r: string[]): string => `| ${r.join(' | ')} |`;
  console.log(`\nvolume ${(size / GiB).toFixed(2)} GiB, ${mib(changed)} changed per incremental; encryption on for all tools; ratios: >1x means Haven is better`);
  console.log(md(head));
  console.log(md(head.map(() => '---')));
  for (const l of lines) console.log(md(l));
  console.log(`\nphysical limits on this machine: volume read ${limits.readMBs.toFixed(0)} MB/s (page cache), sha256 ${limits.shaMBs.toFixed(0)} MB/s/core, zstd-1 ${limits.zstdMBs.toFixed(0)} MB/s/core on text`);
  const restic = rows.get('restic');
  const borg = rows.get('borg');
  const goals: [string, boolean | null][] = [
    ['full backup >= 3x restic throughput', restic ? restic.fullMs / h.fullMs >= 3 : null],
    ['full backup >= 1.5x borg (fixed 4 MiB)', borg ? borg.fullMs / h.fullMs >= 1.5 : null],
    ['incremental time >= 2x restic', restic ? restic.scatMs / h.scatMs >= 2 && restic.clusMs / h.clusMs >= 2 : null],
    ['clustered added <= 50% of restic', restic ? h.clusAdded <= restic.clusAdded * 0.5 : null],
    ['scattered added <= 25% of volume', h.scatAdded <= size * 0.25],
    ['restore >= 1.5x restic', restic ? restic.restoreMs / h.restoreMs >= 1.5 : null],
    ['repository <= restic', restic ? h.repoBytes <= restic.repoBytes : null],
    ['peak RSS < 512 MiB', h.peakRssKiB < 512 * 1024],
    ['>= 16 MiB per object', h.repoBytes / h.objects >= 16 * MiB],
    ['restore bit-identical', h.restoreOk],
  ];
  console.log('\ngoals:');
  for (const [g, ok] of goals) console.log(`  ${ok === null ? 'n/a ' : ok ? 'met ' : 'MISS'}  ${g}`);
}

await main();
