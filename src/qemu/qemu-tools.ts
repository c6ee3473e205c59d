/**
 * QEMU's own tools, run as child processes: `qemu-img info` (what an image is), `qemu-img create`,
 * and `qemu-nbd` (serves an image's guest-visible disk over NBD on a private Unix socket). Haven
 * reads and writes image formats only through them, never by parsing qcow2 itself.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AppError, ErrorCode, throwIfAborted } from '../domain/errors.ts';
import { NbdClient } from './nbd-client.ts';

export interface ToolResult {
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion; a missing tool and a failure are AppErrors naming it and what it said. */
export async function runTool(command: string, args: string[], opts: { signal?: AbortSignal; timeoutMs?: number; code?: (typeof ErrorCode)[keyof typeof ErrorCode]; fd?: number } = {}): Promise<ToolResult> {
  throwIfAborted(opts.signal);
  const code = opts.code ?? ErrorCode.VolumeUnreadable;
  return await new Promise<ToolResult>((resolve, reject) => {
    const child = spawn(command, args, { stdio: opts.fd === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe', opts.fd] });
    let stdout = '';
    let stderr = '';
    let stop: string | null = null;
    const timer = setTimeout(() => {
      stop = `it took longer than ${opts.timeoutMs} ms`;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 120_000);
    const onAbort = (): void => {
      stop = 'cancelled';
      child.kill('SIGKILL');
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout!.setEncoding('utf8').on('data', (t: string) => (stdout += t));
    child.stderr!.setEncoding('utf8').on('data', (t: string) => {
      if (stderr.length < 4000) stderr += t;
    });
    const finish = (): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    };
    child.on('error', (err: NodeJS.ErrnoException) => {
      finish();
      reject(new AppError(code, err.code === 'ENOENT' ? `${command} was not found: install QEMU's tools (Debian: qemu-utils)` : `${command} could not run: ${err.message}`, { cause: err }));
    });
    child.on('close', (exit, sig) => {
      finish();
      if (stop === 'cancelled') return reject(new AppError(ErrorCode.Cancelled, 'cancelled', { cause: opts.signal?.reason }));
      if (stop !== null || exit !== 0) return reject(new AppError(code, `${command} ${args[0] ?? ''} failed: ${stop ?? (firstLines(stderr) || `exit ${exit ?? sig}`)}`));
      resolve({ stdout, stderr });
    });
  });
}

function firstLines(text: string): string {
  return text.trim().split('\n').slice(0, 3).join('; ').replace(/^qemu-\w+: /, '');
}

export interface ImageInfo {
  /** `raw`, `qcow2`, ... as qemu-img detects it. */
  format: string;
  /** The guest-visible size in bytes. */
  virtualSize: number;
  /** Bytes the image file takes on its file system. */
  actualSize: number;
  backingFilename: string | null;
  clusterSize: number | null;
  /** Persistent dirty bitmaps stored in a qcow2 image. */
  bitmaps: Array<{ name: string; granularity: number; flags: string[] }>;
  /** A qcow2 image's external data file, if it has one. */
  dataFile: string | null;
}

/**
 * Refuses a qcow2 image that names another file: an external data file or a backing file. Such a
 * name in a header could point at any file of the host, which QEMU would then read and write.
 */
export async function checkStandAlone(file: string, fd: number | undefined, signal?: AbortSignal, opts: { backing?: boolean } = {}): Promise<void> {
  const info = await imageInfo(file, { format: 'qcow2', ...(fd === undefined ? {} : { fd }), ...(signal ? { signal } : {}) });
  if (info.dataFile !== null) throw new AppError(ErrorCode.VolumePathRefused, `qcow2 image ${file} now keeps its data in another file (${info.dataFile}); Haven uses stand-alone images only`);
  if (opts.backing !== false && info.backingFilename !== null) throw new AppError(ErrorCode.VolumePathRefused, `qcow2 image ${file} now names a backing file (${info.backingFilename}); Haven uses stand-alone images only`);
}

/** Resizes a qcow2 image's virtual size (growing only). */
export async function growQcow2(file: string, sizeBytes: number, opts: { signal?: AbortSignal } = {}): Promise<void> {
  await checkStandAlone(file, undefined, opts.signal);
  await runTool('qemu-img', ['resize', '-q', '-f', 'qcow2', file, String(sizeBytes)], { ...(opts.signal ? { signal: opts.signal } : {}), code: ErrorCode.TargetUnwritable, timeoutMs: 60_000 });
}

/**
 * What an image is (`qemu-img info`). `-U` (force share): a look that neither takes nor waits for
 * the locks of a VM running on it. Format probing is how qemu-img itself tells raw from qcow2: a raw
 * file that starts with qcow2's magic is taken for qcow2, which only the operator can rule out
 * (`--format raw`).
 */
export async function imageInfo(file: string, opts: { format?: string; signal?: AbortSignal; fd?: number } = {}): Promise<ImageInfo> {
  // With a descriptor: the very file Haven opened and checked, as qemu-img's fd 3 (volume-extents.ts).
  const args = ['info', '-U', '--output=json', ...(opts.format ? ['-f', opts.format] : []), opts.fd === undefined ? file : '/proc/self/fd/3'];
  const { stdout } = await runTool('qemu-img', args, { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.fd === undefined ? {} : { fd: opts.fd }), timeoutMs: 60_000 });
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(stdout) as Record<string, unknown>;
  } catch {
    throw new AppError(ErrorCode.VolumeUnreadable, `qemu-img info printed something Haven does not understand for ${file}`);
  }
  const spec = (j['format-specific'] as { data?: { bitmaps?: Array<{ name: string; granularity: number; flags: string[] }>; 'data-file'?: string } } | undefined)?.data;
  return {
    format: String(j.format),
    virtualSize: Number(j['virtual-size']),
    actualSize: Number(j['actual-size'] ?? 0),
    backingFilename: typeof j['backing-filename'] === 'string' ? (j['backing-filename'] as string) : null,
    clusterSize: typeof j['cluster-size'] === 'number' ? (j['cluster-size'] as number) : null,
    bitmaps: spec?.bitmaps ?? [],
    dataFile: typeof spec?.['data-file'] === 'string' ? spec['data-file'] : null,
  };
}

/** Creates (or replaces) a qcow2 image of `sizeBytes`. */
export async function createQcow2(file: string, sizeBytes: number, opts: { signal?: AbortSignal } = {}): Promise<void> {
  await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(sizeBytes)], { ...(opts.signal ? { signal: opts.signal } : {}), code: ErrorCode.TargetUnwritable, timeoutMs: 60_000 });
}

/**
 * glibc tunables for qemu-nbd: its request buffers (up to 32 MiB) come from the heap and are kept
 * for reuse, instead of a fresh mmap per request. A fresh page's first touch is costly on VMs
 * (~25 us here): with glibc's defaults qemu-nbd served 4 MiB requests at 260 MB/s from the page
 * cache, with these at 1.1 GB/s. The operator's own tunables are kept.
 */
function withMallocReuse(existing: string | undefined): string {
  const ours = 'glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456';
  if (!existing) return ours;
  if (/glibc\.malloc\.(mmap|trim)_threshold/.test(existing)) return existing;
  return `${existing}:${ours}`;
}

export interface NbdServerOptions {
  format: string;
  readOnly: boolean;
  /**
   * Serve the file open as this descriptor (the very file Haven checked, volume-file.ts) instead of
   * opening `file` by name: qemu-nbd gets it as its fd 3. A qcow2 image is then opened without a
   * backing file (Haven adopts none: a backing file named in the image could be any host file).
   */
  fd?: number;
  /** Connections the server takes at once (qemu-nbd --shared). */
  connections?: number;
  signal?: AbortSignal;
}

/**
 * An image served by `qemu-nbd` on a Unix socket in a private folder (0700), for as long as Haven
 * uses it. qemu-nbd runs without --persistent, so it also ends when Haven's last connection closes:
 * a Haven killed mid-backup leaves no server (and no image lock) behind. An image another process
 * holds for writing (a running VM) is refused by qemu-nbd's own locking, with its message.
 */
export class QemuNbdServer {
  readonly socketPath: string;
  readonly exportName = 'haven';
  private readonly dir: string;
  private readonly child: ReturnType<typeof spawn>;
  private readonly exited: Promise<void>;

  private readonly file: string;
  private readonly state: { exitedWith: string | null };
  private readonly code: (typeof ErrorCode)[keyof typeof ErrorCode];

  private constructor(dir: string, child: ReturnType<typeof spawn>, exited: Promise<void>, file: string, state: { exitedWith: string | null }, code: (typeof ErrorCode)[keyof typeof ErrorCode]) {
    this.dir = dir;
    this.file = file;
    this.state = state;
    this.code = code;
    this.socketPath = path.join(dir, 'nbd.sock');
    this.child = child;
    this.exited = exited;
  }

  static async start(file: string, opts: NbdServerOptions): Promise<QemuNbdServer> {
    throwIfAborted(opts.signal);
    // A service volume's header is read again before each use: one rewritten since adoption to name
    // an external data file is refused (QEMU opens it whatever the options say; a backing file it
    // does not, with "backing": null below).
    if (opts.fd !== undefined && opts.format === 'qcow2') await checkStandAlone(file, opts.fd, opts.signal, { backing: false });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'haven-nbd-'));
    const sock = path.join(dir, 'nbd.sock');
    const image =
      opts.fd === undefined
        ? [`--format=${opts.format}`, file]
        : [`json:${JSON.stringify({ driver: opts.format, file: { driver: 'file', filename: '/proc/self/fd/3' }, ...(opts.format === 'qcow2' ? { backing: null } : {}) })}`];
    const args = [
      ...(opts.readOnly ? ['--read-only'] : ['--discard=unmap']),
      `--shared=${opts.connections ?? 4}`,
      `--socket=${sock}`,
      '--export-name=haven',
      '--cache=writeback',
      ...image,
    ];
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'ignore', 'pipe', ...(opts.fd === undefined ? [] : [opts.fd])];
    const child = spawn('qemu-nbd', args, { stdio, env: { ...process.env, GLIBC_TUNABLES: withMallocReuse(process.env.GLIBC_TUNABLES) } });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (t: string) => {
      if (stderr.length < 4000) stderr += t;
    });
    const state: { exitedWith: string | null } = { exitedWith: null };
    const exited = new Promise<void>((resolve) => {
      child.on('error', (err: NodeJS.ErrnoException) => {
        state.exitedWith = err.code === 'ENOENT' ? 'qemu-nbd was not found: install QEMU\'s tools (Debian: qemu-utils)' : err.message;
        resolve();
      });
      child.on('close', (code, sig) => {
        state.exitedWith ??= firstLines(stderr) || `qemu-nbd exited with ${code ?? sig}`;
        resolve();
      });
    });
    const server = new QemuNbdServer(dir, child, exited, file, state, opts.readOnly ? ErrorCode.VolumeUnreadable : ErrorCode.TargetUnwritable);
    const code = server.code;
    // Ready once the socket is there (qemu-nbd binds it just before it listens: connect() retries).
    // Not probed with a connection: without --persistent, qemu-nbd ends when its first client leaves.
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (state.exitedWith !== null) {
        await server.close();
        throw new AppError(code, `cannot serve ${file} over NBD: ${state.exitedWith}`);
      }
      if (opts.signal?.aborted) {
        await server.close();
        throw new AppError(ErrorCode.Cancelled, 'cancelled', { cause: opts.signal.reason });
      }
      if (await exists(sock)) return server;
      if (Date.now() > deadline) {
        await server.close();
        throw new AppError(code, `qemu-nbd did not start serving ${file} within 30 s`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Connects to the served image (retrying while the socket is bound but not yet listening). */
  async connect(opts: { metaContexts?: string[]; signal?: AbortSignal } = {}): Promise<NbdClient> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        return await NbdClient.connect({ socketPath: this.socketPath, exportName: this.exportName, ...opts });
      } catch (err) {
        // qemu-nbd listens before it opens the image: a connection refused, reset or ended may be
        // a server that is giving up on the image. Its own message says why, and names the file.
        const refused = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED';
        await Promise.race([this.exited, new Promise((r) => setTimeout(r, refused ? 20 : 500))]);
        if (this.state.exitedWith !== null) throw new AppError(this.code, `cannot serve ${this.file} over NBD: ${this.state.exitedWith}`, { cause: err });
        if (!refused || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** Stops the server (if it has not ended by itself) and removes its folder. */
  async close(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(t);
    }
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}
