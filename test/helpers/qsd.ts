/**
 * A "running guest" for tests of `haven backup --qmp`: qemu-storage-daemon holding a qcow2 image as
 * block node `disk0`, with a QMP monitor and an NBD server exporting the node writable (the guest's
 * writes go through it with qemu-io, and the guest's view of its disk is read back through it).
 * Also a QMP proxy that can hold the reply to one of Haven's commands, so a test can act at an exact
 * point of a backup (after its point in time, before it reads anything).
 */
import { CBT_SAMPLE_CHUNKS } from '../../src/engine/changed-blocks.ts';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { QmpClient } from '../../src/qemu/qmp-client.ts';
import { skipOutsideCi } from './skip.ts';
import { sleep } from './volumes.ts';

const run = promisify(execFile);

/** Why the QEMU tests cannot run here (false: they can). */
export const noQemu: string | false = skipOutsideCi(
  ['qemu-img', 'qemu-io', 'qemu-storage-daemon'].some((t) => spawnSync(t, ['--version']).status !== 0)
    ? `QEMU's tools (qemu-img, qemu-io, qemu-storage-daemon; Debian: qemu-utils, qemu-system-common) are not installed`
    : false,
);

export interface BitmapInfo {
  /** Absent for QEMU's own (a backup job's copy bitmap). */
  name?: string;
  recording: boolean;
  persistent: boolean;
  busy: boolean;
  granularity: number;
  inconsistent?: boolean;
}

interface NodeInfo {
  'node-name': string;
  drv: string;
  file: string;
  'dirty-bitmaps'?: BitmapInfo[];
}

/** What a guest's QEMU holds, as QMP reports it. */
export interface GuestState {
  /** Bitmaps of node disk0. */
  bitmaps: BitmapInfo[];
  /** Every node name, export id and job id. */
  nodes: string[];
  exports: string[];
  jobs: string[];
  /** Bitmaps named haven-* on nodes other than disk0. */
  strayBitmaps: string[];
}

export interface GuestOptions {
  sizeBytes: number;
  /** A raw file converted into the image (its size must be sizeBytes); else the image starts empty. */
  baseRaw?: string;
  /**
   * Unix sockets QEMU listens on and never speaks on (as a serial console's would), made before its
   * NBD server's: at least one has a file descriptor listed before the NBD server's in /proc.
   */
  silentSockets?: number;
}

/** Runs a command; rejects with its stderr when it fails. */
export async function tool(command: string, args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await run(command, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string; stdout?: string };
    throw new Error(`${command} ${args.slice(0, 6).join(' ')}${args.length > 6 ? ' ...' : ''} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

export class Guest {
  readonly dir: string;
  readonly image: string;
  readonly qmpSocket: string;
  readonly nbdSocket: string;
  readonly sizeBytes: number;
  private readonly silentSockets: number;
  private proc: ChildProcess | null = null;
  private log = '';

  private constructor(dir: string, sizeBytes: number, silentSockets: number) {
    this.silentSockets = silentSockets;
    this.dir = dir;
    this.image = path.join(dir, 'disk.qcow2');
    this.qmpSocket = path.join(dir, 'qmp.sock');
    this.nbdSocket = path.join(dir, 'guest.sock');
    this.sizeBytes = sizeBytes;
  }

  /** The guest's disk as an NBD URL (what qemu-io and qemu-img open with -f raw). */
  get url(): string {
    return `nbd+unix:///disk0?socket=${this.nbdSocket}`;
  }

  /** Creates the image in `dir` and starts the daemon on it. */
  static async start(dir: string, opts: GuestOptions): Promise<Guest> {
    const g = new Guest(dir, opts.sizeBytes, opts.silentSockets ?? 0);
    if (opts.baseRaw) await tool('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', opts.baseRaw, g.image]);
    else await tool('qemu-img', ['create', '-q', '-f', 'qcow2', g.image, String(opts.sizeBytes)]);
    await g.boot();
    return g;
  }

  /** Starts the daemon on the existing image (again, after stop()). */
  async boot(): Promise<void> {
    if (this.proc) throw new Error('the guest is running');
    for (const s of [this.qmpSocket, this.nbdSocket]) await fs.rm(s, { force: true });
    const p = spawn('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=file0,filename=${this.image}`,
      '--blockdev', 'driver=qcow2,node-name=disk0,file=file0',
      '--chardev', `socket,path=${this.qmpSocket},server=on,wait=off,id=qmp0`,
      '--monitor', 'chardev=qmp0',
      ...Array.from({ length: this.silentSockets }, (_, i) => ['--chardev', `socket,path=${path.join(this.dir, `silent${i}.sock`)},server=on,wait=off,id=silent${i}`]).flat(),
      '--nbd-server', `addr.type=unix,addr.path=${this.nbdSocket}`,
      '--export', 'type=nbd,id=exp0,node-name=disk0,name=disk0,writable=on',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = p;
    this.log = '';
    p.stdout!.setEncoding('utf8').on('data', (t: string) => (this.log += t));
    p.stderr!.setEncoding('utf8').on('data', (t: string) => (this.log += t));
    const deadline = Date.now() + 15_000;
    // Both sockets listening (a socket file exists from bind(), a moment before listen()).
    for (const socket of [this.nbdSocket, this.qmpSocket]) {
      while (!(existsSync(socket) && (await connectable(socket)))) {
        if (p.exitCode !== null || p.signalCode !== null) throw new Error(`qemu-storage-daemon exited: ${this.log}`);
        if (Date.now() > deadline) throw new Error(`qemu-storage-daemon did not listen on ${socket} within 15 s: ${this.log}`);
        await sleep(10);
      }
    }
  }

  /** Stops the daemon with `signal` (SIGTERM: QEMU stores its persistent bitmaps) and waits for it to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    if (p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill(signal);
    const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }

  /** The guest writes: one qemu-io run with one -c per command (e.g. `write -P 0x55 4096 4k`). */
  async io(commands: string[]): Promise<void> {
    const args = ['-f', 'raw', this.url];
    for (const c of commands) args.push('-c', c);
    const out = await tool('qemu-io', args);
    // qemu-io reports a failed command on stdout and goes on: a test must not miss one.
    if (/error|invalid|failed|not a valid/i.test(out)) throw new Error(`qemu-io: ${out.split('\n').filter((l) => /error|invalid|failed|not a valid/i.test(l)).slice(0, 3).join('; ')}`);
  }

  /** Copies the disk as the guest sees it now into a raw file (no writes may run meanwhile). */
  async copyTo(rawFile: string): Promise<void> {
    await tool('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'raw', this.url, rawFile]);
  }

  /**
   * Compares an image with the disk as the guest sees it now: null when equal, else what
   * `qemu-img compare` said (the first difference).
   */
  async compare(file: string, format: 'raw' | 'qcow2' = 'raw'): Promise<string | null> {
    return compareImages(file, format, this.url, 'raw');
  }

  /** The disk's data ranges (what reads as zeros left out), from the guest's NBD export. */
  async dataExtents(): Promise<Array<{ start: number; length: number }>> {
    const map = JSON.parse(await tool('qemu-img', ['map', '--output=json', '-f', 'raw', this.url])) as Array<{ start: number; length: number; zero: boolean; data: boolean }>;
    return map.filter((e) => !e.zero).map((e) => ({ start: e.start, length: e.length }));
  }

  /** Runs `fn` on a QMP connection of its own (no Haven may be connected meanwhile: the monitor takes one client). */
  async qmp<T>(fn: (q: QmpClient) => Promise<T>): Promise<T> {
    const q = await QmpClient.connect(this.qmpSocket, { timeoutMs: 20_000 });
    try {
      return await fn(q);
    } finally {
      await q.close();
    }
  }

  async state(): Promise<GuestState> {
    return this.qmp(async (q) => {
      const nodes = await q.execute<NodeInfo[]>('query-named-block-nodes', { flat: true });
      const disk = nodes.find((n) => n['node-name'] === 'disk0');
      if (!disk) throw new Error('no node disk0');
      const exports = await q.execute<Array<{ id: string }>>('query-block-exports');
      const jobs = await q.execute<Array<{ device: string }>>('query-block-jobs');
      return {
        bitmaps: disk['dirty-bitmaps'] ?? [],
        nodes: nodes.map((n) => n['node-name']),
        exports: exports.map((e) => e.id),
        jobs: jobs.map((j) => j.device),
        strayBitmaps: nodes.filter((n) => n !== disk).flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => b.name ?? '')).filter((b) => b.startsWith('haven-')),
      };
    });
  }
}

function connectable(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect({ path: socket });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** null when the two images read the same, else what `qemu-img compare` said. */
export async function compareImages(a: string, aFormat: string, b: string, bFormat: string): Promise<string | null> {
  return await new Promise<string | null>((resolve, reject) => {
    execFile('qemu-img', ['compare', '-U', '-f', aFormat, '-F', bFormat, a, b], { timeout: 60_000 }, (err, stdout, stderr) => {
      if (!err) return resolve(null);
      const code = (err as { code?: unknown }).code;
      if (code === 1) return resolve(`${stdout}${stderr}`.trim() || 'differ');
      reject(new Error(`qemu-img compare ${a} ${b} failed: ${stderr || err.message}`));
    });
  });
}

/** `qemu-img info` of an image file, without taking its lock. */
export async function imageInfo(file: string): Promise<{ 'virtual-size': number; 'format-specific'?: { data?: { bitmaps?: Array<{ name: string; granularity: number; flags: string[] }> } } }> {
  return JSON.parse(await tool('qemu-img', ['info', '-U', '--output=json', file])) as never;
}

interface Hold {
  command: string;
  reached: () => void;
  release: Promise<void>;
}

/**
 * A QMP proxy on a Unix socket of its own, passing a client's commands to the guest's monitor and
 * QEMU's answers back. `holdReply(command)` holds QEMU's answer to the next such command: QEMU has
 * done it, the client does not know yet. Haven must be given `--nbd-socket` behind a proxy (it finds
 * the guest's NBD server through the process that owns the QMP socket, here the test).
 */
export class QmpProxy {
  readonly socketPath: string;
  private readonly server: net.Server;
  private readonly holds: Hold[] = [];
  private readonly conns = new Set<net.Socket>();
  /** Commands clients sent, in order. */
  readonly commands: string[] = [];

  private constructor(socketPath: string, server: net.Server) {
    this.socketPath = socketPath;
    this.server = server;
  }

  static async start(socketPath: string, upstream: string): Promise<QmpProxy> {
    await fs.rm(socketPath, { force: true });
    let proxy: QmpProxy | null = null;
    const server = net.createServer((client) => proxy!.pipe(client, upstream));
    proxy = new QmpProxy(socketPath, server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    return proxy;
  }

  /**
   * Holds QEMU's answer to the next `command`: `reached` resolves once QEMU has answered (the
   * command is done); the answer goes to the client once `release()` is called.
   */
  holdReply(command: string): { reached: Promise<void>; release: () => void } {
    let reached!: () => void;
    let release!: () => void;
    const r = new Promise<void>((resolve) => (reached = resolve));
    const rel = new Promise<void>((resolve) => (release = resolve));
    this.holds.push({ command, reached, release: rel });
    return { reached: r, release };
  }

  private pipe(client: net.Socket, upstream: string): void {
    this.conns.add(client);
    const up = net.connect({ path: upstream });
    this.conns.add(up);
    const ids = new Map<unknown, string>();
    const close = (): void => {
      client.destroy();
      up.destroy();
    };
    client.on('close', close).on('error', close);
    up.on('close', close).on('error', close);
    let fromClient = '';
    client.setEncoding('utf8').on('data', (d: string) => {
      fromClient += d;
      for (let nl = fromClient.indexOf('\n'); nl >= 0; nl = fromClient.indexOf('\n')) {
        const line = fromClient.slice(0, nl);
        fromClient = fromClient.slice(nl + 1);
        try {
          const m = JSON.parse(line) as { execute?: string; id?: unknown };
          if (m.execute) {
            this.commands.push(m.execute);
            if (m.id !== undefined) ids.set(m.id, m.execute);
          }
        } catch {
          // not ours to judge
        }
        up.write(`${line}\n`);
      }
    });
    // QEMU's lines go back in order; a held answer holds everything after it too.
    let fromUp = '';
    let chain: Promise<void> = Promise.resolve();
    up.setEncoding('utf8').on('data', (d: string) => {
      fromUp += d;
      for (let nl = fromUp.indexOf('\n'); nl >= 0; nl = fromUp.indexOf('\n')) {
        const line = fromUp.slice(0, nl);
        fromUp = fromUp.slice(nl + 1);
        let hold: Hold | undefined;
        try {
          const m = JSON.parse(line) as { id?: unknown; return?: unknown; error?: unknown };
          const cmd = m.id !== undefined ? ids.get(m.id) : undefined;
          const at = cmd === undefined ? -1 : this.holds.findIndex((h) => h.command === cmd);
          if (at >= 0) hold = this.holds.splice(at, 1)[0];
        } catch {
          // passed on as it is
        }
        chain = chain.then(async () => {
          if (hold) {
            hold.reached();
            await hold.release;
          }
          if (!client.destroyed) client.write(`${line}\n`);
        });
      }
    });
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * The bytes a changed-block backup of a disk of `sizeBytes` reads for guest writes covering the
 * 4 KiB blocks `blocks`: each dirty block at least; at most, per chunk, its dirty blocks, or the
 * whole chunk where they are half of it or more (then it is read whole, not patched).
 */
export function changedReadBounds(blocks: Iterable<number>, chunkSize: number, sizeBytes: number): { dirtyBytes: number; maxReadBytes: number } {
  const perChunk = new Map<number, number>();
  let n = 0;
  for (const b of new Set(blocks)) {
    n++;
    const c = Math.floor((b * 4096) / chunkSize);
    perChunk.set(c, (perChunk.get(c) ?? 0) + 4096);
  }
  let max = 0;
  for (const [c, d] of perChunk) {
    const len = Math.min(chunkSize, sizeBytes - c * chunkSize);
    max += d * 2 >= len ? len : d;
  }
  // Plus the sample of unchanged chunks a backup with changed-block tracking checks first.
  return { dirtyBytes: n * 4096, maxReadBytes: max + CBT_SAMPLE_CHUNKS * chunkSize };
}
