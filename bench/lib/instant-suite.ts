/**
 * The instant-recovery part: a backup of the benchmark volume served as a disk.
 *
 * - First byte: `haven nbd` is started and a client (Haven's NBD client, in this process) connects
 *   as soon as the port answers and reads the first 4 KiB; the time counts from the spawn, so the
 *   process start, the key derivation and the chunk map load are in it.
 * - Sequential read: `nbdcopy` of the whole export to `null:` (the read alone) against `haven restore`
 *   into a file, alternately, five rounds each, medians compared (on a shared VM one run of either
 *   can be off by 20 %; the CPU time the hypervisor took meanwhile is reported); then `nbdcopy` into a file too
 *   (through the page cache, where restore writes with direct I/O), whose output is compared with
 *   the restore's. Each on a fresh server (cold cache).
 * - Random 4 KiB reads, 64 in flight on one connection: cold (a fresh server, uniformly over the
 *   volume) and warm (within a 64 MiB region read once before, which the default cache holds),
 *   IOPS and latency percentiles.
 * - Live restore: the engine's LiveRestore served by its NBD server in this process, from opening
 *   the repository to the first 4 KiB read through NBD ("usable"), then the background copy to the
 *   end; the volume is compared with `haven restore`'s output.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { createServer } from 'node:net';
import * as path from 'node:path';
import { BackupImage, ImageSource } from '../../src/engine/backup-image.ts';
import { LiveRestore } from '../../src/engine/live-restore.ts';
import { Repository } from '../../src/engine/repository.ts';
import { ChunkWorkerPool } from '../../src/engine/worker-pool.ts';
import { NbdServer, sharedDevice } from '../../src/nbd/nbd-server.ts';
import { NbdClient } from '../../src/qemu/nbd-client.ts';
import { openObjectStore } from '../../src/storage/open-store.ts';
import { log, settle } from './local-suite.ts';
import { cpuTicks, stealPercent } from './machine.ts';
import { BENCH_PASSWORD, havenTool, run } from './peers.ts';
import { Prng } from './volume-gen.ts';

const RANDOM_READS = 4096;
/** The warm reads' region: it fits the default cache (128 MiB), read once before they are timed. */
const WARM_REGION = 64 * 1024 * 1024;
const IN_FLIGHT = 64;
/** Rounds of restore and sequential read, alternating. */
const ROUNDS = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export interface RandomReads {
  iops: number;
  p50Ms: number;
  p99Ms: number;
}

export interface InstantResult {
  size: number;
  /** CPU time the hypervisor took during the rounds (%), where the machine tells. */
  stealPercent: number | null;
  /** Medians of ROUNDS runs, and each run. */
  restoreMs: number;
  restores: number[];
  firstByteMs: number;
  /** nbdcopy to null: (the read alone), and into a file. */
  nbdReadMs: number;
  reads: number[];
  nbdcopyMs: number;
  identical: boolean;
  cold: RandomReads;
  warm: RandomReads;
  liveUsableMs: number;
  liveCopyMs: number;
  liveIdentical: boolean;
  error?: string;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Starts `haven nbd` and resolves, with the client connected, once the first 4 KiB arrived; the time counts from the spawn. */
async function startServer(node: string, cli: string, repo: string, pwFile: string, id: string): Promise<{ child: ChildProcess; client: NbdClient; firstByteMs: number; port: number }> {
  const port = await freePort();
  const t0 = performance.now();
  const child = spawn(node, [cli, 'nbd', '--repo', repo, '--password-file', pwFile, '--listen', `127.0.0.1:${port}`, '--backup', id], { stdio: ['ignore', 'ignore', 'inherit'] });
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haven nbd exited with ${child.exitCode}`);
    try {
      const client = await NbdClient.connect({ host: '127.0.0.1', port, exportName: id, timeoutMs: 5000 });
      const buf = new Uint8Array(4096);
      await client.read(buf, 0);
      return { child, client, firstByteMs: performance.now() - t0, port };
    } catch (err) {
      if (performance.now() - t0 > 60_000) throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

async function randomReads(client: NbdClient, offsets: number[]): Promise<RandomReads> {
  const lat: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      const buf = new Uint8Array(4096);
      while (next < offsets.length) {
        const off = offsets[next++]!;
        const s = performance.now();
        await client.read(buf, off);
        lat.push(performance.now() - s);
      }
    }),
  );
  const ms = performance.now() - t0;
  lat.sort((a, b) => a - b);
  return { iops: offsets.length / (ms / 1000), p50Ms: lat[Math.floor(lat.length * 0.5)]!, p99Ms: lat[Math.floor(lat.length * 0.99)]! };
}

function sameFiles(a: string, b: string): boolean {
  try {
    execFileSync('cmp', ['-s', a, b]);
    return true;
  } catch {
    return false;
  }
}

export async function runInstant(work: string, pristine: string, size: number, node: string, cli: string): Promise<InstantResult> {
  await fs.mkdir(work, { recursive: true });
  const haven = havenTool(work, node, cli);
  await haven.init();
  const pwFile = path.join(work, 'haven-password');
  const id = (await haven.backup(pristine)).id;
  log(`backed up the volume as ${id}`);
  // A restore and a read of the export, alternately, ROUNDS times; the medians are compared (on a
  // small shared VM one run of either can be off by 20 %).
  const restores: number[] = [];
  const reads: number[] = [];
  let firstByteMs = 0;
  let restoredFile = '';
  const ticks0 = cpuTicks();
  for (let round = 0; round < ROUNDS; round++) {
    settle(haven.repo);
    if (restoredFile) await fs.rm(restoredFile, { force: true });
    const restored = await haven.restore(id, pristine, work);
    restoredFile = restored.file;
    restores.push(restored.ms);
    settle(haven.repo);
    const server = await startServer(node, cli, haven.repo, pwFile, id);
    await server.client.close();
    if (round === 0) firstByteMs = server.firstByteMs;
    // The read itself: nbdcopy to null:.
    const nr = await run('nbdcopy', [`nbd://127.0.0.1:${server.port}/${id}`, 'null:']);
    await stopServer(server.child);
    reads.push(nr.ms);
    log(`round ${round + 1}: haven restore ${(restored.ms / 1000).toFixed(2)} s, nbdcopy of the export to null: ${(nr.ms / 1000).toFixed(2)} s`);
  }
  const steal = stealPercent(ticks0, cpuTicks());
  if (steal !== null) log(`CPU time taken by the hypervisor during these rounds: ${steal.toFixed(1)} %`);
  const restoreMs = median(restores);
  const nbdReadMs = median(reads);
  log(`haven nbd: first 4 KiB read ${firstByteMs.toFixed(0)} ms after the spawn`);
  // A copy into a file (nbdcopy writes it through the page cache: the file system's cost, which
  // restore avoids with direct I/O), compared with the restore.
  settle(haven.repo);
  const again = await startServer(node, cli, haven.repo, pwFile, id);
  await again.client.close();
  const copied = path.join(work, 'nbdcopy.img');
  const nc = await run('nbdcopy', [`nbd://127.0.0.1:${again.port}/${id}`, copied]);
  await stopServer(again.child);
  const identical = sameFiles(copied, restoredFile);
  log(`nbdcopy of the export to a file ${(nc.ms / 1000).toFixed(2)} s, ${identical ? 'identical to the restore' : 'DIFFERS from the restore'}`);
  await fs.rm(copied, { force: true });

  // Cold: over the whole volume, on a fresh server. Warm: within a region read once before.
  const prng = new Prng(42);
  const offsets = Array.from({ length: RANDOM_READS }, () => Math.floor(prng.next() * (size / 4096)) * 4096);
  const region = Math.min(size, WARM_REGION);
  const warmOffsets = Array.from({ length: 2 * RANDOM_READS }, () => Math.floor(prng.next() * (region / 4096)) * 4096);
  settle(haven.repo);
  const second = await startServer(node, cli, haven.repo, pwFile, id);
  const cold = await randomReads(second.client, offsets);
  const buf = new Uint8Array(1024 * 1024);
  for (let o = 0; o < region; o += buf.length) await second.client.read(buf.subarray(0, Math.min(buf.length, region - o)), o);
  const warm = await randomReads(second.client, warmOffsets);
  await second.client.close();
  await stopServer(second.child);
  log(`random 4 KiB reads, ${IN_FLIGHT} in flight: cold ${cold.iops.toFixed(0)} IOPS (p99 ${cold.p99Ms.toFixed(1)} ms), warm ${warm.iops.toFixed(0)} IOPS (p99 ${warm.p99Ms.toFixed(1)} ms)`);

  // Live restore, in this process: from opening the repository to the first read through NBD.
  settle(haven.repo);
  const target = path.join(work, 'live.img');
  const t0 = performance.now();
  const repo = await Repository.open(await openObjectStore(haven.repo), { password: BENCH_PASSWORD });
  const pool = new ChunkWorkerPool();
  const image = new BackupImage(new ImageSource(repo, pool), await repo.readManifest(id));
  const live = await LiveRestore.open(image, target);
  const server = new NbdServer({
    find: async (name) => (name === id ? { name, sizeBytes: live.sizeBytes, readOnly: false, multiConn: true, open: async () => sharedDevice(live) } : null),
    list: async () => [id],
  });
  const at = (await server.listen({ host: '127.0.0.1', port: 0 })) as { port: number };
  const client = await NbdClient.connect({ host: '127.0.0.1', port: at.port, exportName: id });
  await client.read(new Uint8Array(4096), 0);
  const liveUsableMs = performance.now() - t0;
  const c0 = performance.now();
  await live.run();
  const liveCopyMs = performance.now() - c0;
  await client.close();
  await server.close();
  await live.close();
  await pool.close();
  const liveIdentical = sameFiles(target, restoredFile);
  log(`live restore: usable after ${liveUsableMs.toFixed(0)} ms, copied in ${(liveCopyMs / 1000).toFixed(2)} s, ${liveIdentical ? 'identical to the restore' : 'DIFFERS from the restore'}`);
  await fs.rm(target, { force: true });
  await fs.rm(restoredFile, { force: true });
  return { size, stealPercent: steal, restoreMs, restores, firstByteMs, nbdReadMs, reads, nbdcopyMs: nc.ms, identical, cold, warm, liveUsableMs, liveCopyMs, liveIdentical };
}
