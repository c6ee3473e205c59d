/**
 * The QEMU part: a qcow2 disk of the benchmark volume under qemu-storage-daemon (the running guest,
 * with a QMP socket and an NBD server for the guest's writes), backed up by Haven through QMP in
 * full, then 1 % of its 4 KiB blocks rewritten at random through qemu-io and backed up again
 * (changed-block tracking); restic backs up the same disk the only way it can, `qemu-img convert`
 * to raw and then a backup of that file, both times. Haven's incremental is restored as qcow2 and
 * compared with the disk (`qemu-img compare`). Then the goal "holes cost nothing" for qcow2: a
 * 100 GiB virtual disk holding 2 GiB of data against a 2 GiB disk holding the same data.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { log, settle, type RssRecord } from './local-suite.ts';
import { BENCH_PASSWORD, resticTool, run, type RunResult } from './peers.ts';
import { Prng } from './volume-gen.ts';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const BLOCK = 4096;

export interface QemuStep {
  ms: number;
  cpuMs: number;
  readBytes?: number;
  changedBlockTracking?: boolean;
}

/** The chunk size of the QEMU part's repository (`haven init --chunk-size`). */
export const QEMU_CHUNK = process.env.HAVEN_BENCH_QEMU_CHUNK ?? '64KiB';

export interface QemuResult {
  size: number;
  haven: { full?: QemuStep; incremental?: QemuStep; restore?: QemuStep; identical?: boolean };
  restic?: { convertFullMs: number; full: QemuStep; convertIncrementalMs: number; incremental: QemuStep };
  writes: { blocks: number; ms: number };
  big?: { virtualSize: number; dataBytes: number; bigMs: number; smallMs: number; bigReadBytes: number };
  error?: string;
}

interface Guest {
  qmp: string;
  nbd: string;
  child: ChildProcess;
}

async function startGuest(dir: string, image: string): Promise<Guest> {
  const qmp = path.join(dir, 'qmp.sock');
  const nbd = path.join(dir, 'guest.sock');
  const child = spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=file0,filename=${image}`,
    '--blockdev', 'driver=qcow2,node-name=disk0,file=file0',
    '--chardev', `socket,path=${qmp},server=on,wait=off,id=qmp0`, '--monitor', 'chardev=qmp0',
    '--nbd-server', `addr.type=unix,addr.path=${nbd}`,
    '--export', 'type=nbd,id=exp0,node-name=disk0,name=disk0,writable=on',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  for (let i = 0; i < 500 && !(existsSync(qmp) && existsSync(nbd)); i++) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon ended: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { qmp, nbd, child };
}

async function stopGuest(g: Guest): Promise<void> {
  if (g.child.exitCode !== null) return;
  const ended = new Promise((r) => g.child.once('close', r));
  g.child.kill('SIGTERM');
  await ended;
}

/** Rewrites `share` of the disk's 4 KiB blocks at random places through the guest's NBD export. */
async function guestWrites(dir: string, nbd: string, size: number, share: number, seed: number): Promise<{ blocks: number; ms: number }> {
  const rng = new Prng(seed);
  const total = size / BLOCK;
  const want = Math.round(total * share);
  const picked = new Set<number>();
  while (picked.size < want) picked.add(rng.int(total));
  const script = path.join(dir, `writes-${seed}.txt`);
  await fs.writeFile(script, [...picked].map((b) => `write -P ${(b % 251) + 1} ${b * BLOCK} 4k`).join('\n') + '\n');
  const started = performance.now();
  execFileSync('sh', ['-c', `qemu-io -f raw 'nbd+unix:///disk0?socket=${nbd}' < "${script}" > /dev/null`]);
  return { blocks: want, ms: performance.now() - started };
}

export async function runQemu(work: string, pristine: string, size: number, node: string, cli: string, rss: RssRecord[], withRestic: boolean): Promise<QemuResult> {
  await fs.mkdir(work, { recursive: true });
  const res: QemuResult = { size, haven: {}, writes: { blocks: 0, ms: 0 } };
  const image = path.join(work, 'disk.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', pristine, image]);
  const repo = path.join(work, 'repo-haven');
  const pw = path.join(work, 'haven-password');
  await fs.writeFile(pw, BENCH_PASSWORD, { mode: 0o600 });
  const haven = (args: string[]): Promise<RunResult> => run(node, [cli, ...args, '--repo', repo, '--password-file', pw]);
  // The repository's chunk size (HAVEN_BENCH_QEMU_CHUNK, default Haven's 64 KiB): random 4 KiB guest
  // writes touch a share of chunks that grows with it (docs/design.md, Changed-block tracking).
  await haven(['init', '--chunk-size', QEMU_CHUNK]);
  const guest = await startGuest(work, image);
  try {
    const backup = async (step: string): Promise<QemuStep> => {
      settle(image);
      const r = await haven(['backup', '--qmp', guest.qmp, '--node', 'disk0', '--json']);
      rss.push({ tool: 'Haven', step: `QEMU ${step}`, rssKiB: r.rssKiB });
      const j = JSON.parse(r.stdout) as { readBytes: number; changedBlockTracking: boolean };
      log(`Haven ${step}: ${(r.ms / 1000).toFixed(2)} s, read ${(j.readBytes / MiB).toFixed(1)} MiB, changed-block tracking ${j.changedBlockTracking}`);
      return { ms: r.ms, cpuMs: r.cpuMs, readBytes: j.readBytes, changedBlockTracking: j.changedBlockTracking };
    };
    const restic = withRestic ? resticTool(work) : null;
    const raw = path.join(work, 'disk.raw');
    const resticBackup = async (step: string): Promise<{ convertMs: number; step: QemuStep }> => {
      settle(image);
      const c = await run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', image, raw]);
      const r = await restic!.backup(raw);
      rss.push({ tool: 'restic', step: `QEMU ${step}`, rssKiB: r.rssKiB });
      log(`restic ${step}: qemu-img convert ${(c.ms / 1000).toFixed(2)} s + backup ${(r.ms / 1000).toFixed(2)} s`);
      await fs.rm(raw, { force: true });
      return { convertMs: c.ms, step: { ms: r.ms, cpuMs: r.cpuMs + c.cpuMs } };
    };
    res.haven.full = await backup('full backup');
    let resticFull: { convertMs: number; step: QemuStep } | null = null;
    if (restic) {
      await restic.init();
      resticFull = await resticBackup('full backup');
    }
    res.writes = await guestWrites(work, guest.nbd, size, 0.01, 7);
    log(`guest: ${res.writes.blocks} blocks of 4 KiB rewritten at random through qemu-io in ${(res.writes.ms / 1000).toFixed(1)} s`);
    res.haven.incremental = await backup('incremental');
    if (restic && resticFull) {
      const inc = await resticBackup('incremental');
      res.restic = { convertFullMs: resticFull.convertMs, full: resticFull.step, convertIncrementalMs: inc.convertMs, incremental: inc.step };
    }
    const list = JSON.parse((await haven(['list', '--json'])).stdout) as Array<{ id: string; createdAt: string }>;
    const last = list.sort((a, b) => (a.createdAt < b.createdAt ? -1 : 1)).at(-1)!;
    const restored = path.join(work, 'restored.qcow2');
    const r = await haven(['restore', '--backup', last.id, '--target', restored, '--format', 'qcow2', '--json']);
    rss.push({ tool: 'Haven', step: 'QEMU restore (qcow2)', rssKiB: r.rssKiB });
    res.haven.restore = { ms: r.ms, cpuMs: r.cpuMs };
    try {
      execFileSync('qemu-img', ['compare', '-U', image, restored], { stdio: 'ignore' });
      res.haven.identical = true;
    } catch {
      res.haven.identical = false;
    }
    log(`Haven restore of the incremental as qcow2: ${(r.ms / 1000).toFixed(2)} s, qemu-img compare: ${res.haven.identical ? 'identical' : 'DIFFERENT'}`);
    await fs.rm(restored, { force: true });
  } finally {
    await stopGuest(guest);
  }
  await fs.rm(image, { force: true });
  await fs.rm(path.join(work, 'repo-restic'), { recursive: true, force: true });
  res.big = await bigVirtual(work, pristine, size, node, cli, pw, rss);
  return res;
}

/**
 * A qcow2 of 100 GiB virtual size holding `data` bytes of the volume in 32 pieces spread over it,
 * and a qcow2 of exactly those bytes back to back: full backups (offline, --volume) into fresh
 * repositories, mean of two each, in the order small, big, big, small.
 */
async function bigVirtual(work: string, pristine: string, size: number, node: string, cli: string, pw: string, rss: RssRecord[]): Promise<NonNullable<QemuResult['big']>> {
  const virtualSize = Number(process.env.HAVEN_BENCH_QEMU_VIRTUAL ?? 100 * GiB);
  const data = Math.min(size, 2 * GiB);
  const pieces = 32;
  const piece = Math.floor(data / pieces / MiB) * MiB;
  const small = path.join(work, 'small.qcow2');
  const big = path.join(work, 'big.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', small, String(piece * pieces)]);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', big, String(virtualSize)]);
  // Copies through qemu-img dd would need one process per piece; qemu-io's write -s reads a file.
  const chunk = path.join(work, 'piece.raw');
  for (let i = 0; i < pieces; i++) {
    execFileSync('dd', [`if=${pristine}`, `of=${chunk}`, 'bs=1M', `skip=${(i * piece) / MiB}`, `count=${piece / MiB}`, 'status=none']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -s ${chunk} ${i * piece} ${piece}`, small], { stdio: 'ignore' });
    const at = Math.floor((i * virtualSize) / pieces / MiB) * MiB;
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -s ${chunk} ${at} ${piece}`, big], { stdio: 'ignore' });
  }
  await fs.rm(chunk, { force: true });
  const times = { small: [] as number[], big: [] as number[] };
  let bigReadBytes = 0;
  for (const kind of ['small', 'big', 'big', 'small'] as const) {
    const repo = path.join(work, `repo-${kind}`);
    await fs.rm(repo, { recursive: true, force: true });
    await run(node, [cli, 'init', '--repo', repo, '--password-file', pw]);
    const file = kind === 'small' ? small : big;
    settle(file);
    const r = await run(node, [cli, 'backup', '--repo', repo, '--password-file', pw, '--volume', file, '--json']);
    rss.push({ tool: 'Haven', step: `QEMU full backup of the ${kind === 'big' ? 'large virtual' : 'small'} qcow2`, rssKiB: r.rssKiB });
    times[kind].push(r.ms);
    if (kind === 'big') bigReadBytes = (JSON.parse(r.stdout) as { readBytes: number }).readBytes;
    await fs.rm(repo, { recursive: true, force: true });
  }
  const mean = (a: number[]): number => a.reduce((s, x) => s + x, 0) / a.length;
  const out = { virtualSize, dataBytes: piece * pieces, bigMs: mean(times.big), smallMs: mean(times.small), bigReadBytes };
  log(`full backup of a ${(virtualSize / GiB).toFixed(0)} GiB virtual qcow2 holding ${(out.dataBytes / MiB).toFixed(0)} MiB: ${(out.bigMs / 1000).toFixed(2)} s, of a qcow2 of just that data ${(out.smallMs / 1000).toFixed(2)} s (${(out.bigMs / out.smallMs).toFixed(2)}x)`);
  await fs.rm(small, { force: true });
  await fs.rm(big, { force: true });
  return out;
}
