/**
 * Test helpers for QEMU's tools: qemu-img and qemu-io run to completion, a qemu-nbd of the test's
 * own (so a test holds its PID and may stop or kill it), and the qemu-nbd processes still running
 * for a folder (read from /proc, never by a broad name match that could touch others' processes).
 */
import { processAlive } from '../../src/engine/locks.ts';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { skipOutsideCi } from './skip.ts';

/** False when qemu-img, qemu-io and qemu-nbd all run; else why the test is skipped (a failure under CI). */
export function qemuToolsMissing(): string | false {
  const ok = ['qemu-img', 'qemu-io', 'qemu-nbd'].every((t) => spawnSync(t, ['--version'], { stdio: 'ignore' }).status === 0);
  return skipOutsideCi(ok ? false : 'QEMU tools (Debian qemu-utils: qemu-img, qemu-io, qemu-nbd) are not installed');
}

export interface ToolRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion (never throws for a non-zero exit: the caller looks at `code`). */
export function runTool(command: string, args: string[], timeoutMs = 60_000): Promise<ToolRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** qemu-img with `args`; asserts it succeeded and returns its stdout. */
export async function qemuImg(args: string[]): Promise<string> {
  const r = await runTool('qemu-img', args);
  assert.equal(r.code, 0, `qemu-img ${args.join(' ')} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** `qemu-img compare`: 0 identical, 1 different, 2 an error (with what it printed). */
export async function qemuImgCompare(args: string[]): Promise<ToolRun> {
  return await runTool('qemu-img', ['compare', ...args]);
}

/**
 * Runs qemu-io commands (`-c`) on an image; asserts every one succeeded (qemu-io exits 1 when one
 * fails, e.g. a `read -P` whose pattern does not match).
 */
export async function qemuIo(file: string, commands: string[], opts: { format?: string; readOnly?: boolean } = {}): Promise<string> {
  const args = ['-f', opts.format ?? 'qcow2', ...(opts.readOnly ? ['-r'] : []), ...commands.flatMap((c) => ['-c', c]), file];
  const r = await runTool('qemu-io', args);
  assert.equal(r.code, 0, `qemu-io ${args.join(' ')} failed: ${r.stderr}${r.stdout}`);
  assert.doesNotMatch(r.stdout + r.stderr, /failed|error/i, `qemu-io ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** The qemu-nbd processes alive whose command line mentions `needle` (a path of the test's own). */
export function qemuNbdProcesses(needle: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // ended meanwhile
    }
    if (path.basename(argv[0] ?? '') !== 'qemu-nbd') continue;
    if (!argv.some((a) => a.includes(needle))) continue;
    // A zombie (exited, not yet reaped) has an empty cmdline, so it is not counted here.
    pids.push(Number(name));
  }
  return pids;
}

/** Whether a process with this PID still exists (a zombie counts until its parent reaps it). */
export const processExists = processAlive;

/** A qemu-nbd the test started itself, on a Unix socket in `dir`. */
export interface OwnQemuNbd {
  child: ChildProcess;
  socketPath: string;
  exportName: string;
  exited: Promise<void>;
  /** Kills it (SIGKILL, also when stopped) and waits for its exit. */
  kill(): Promise<void>;
}

/**
 * Starts `qemu-nbd` on `file` (--persistent: it stays for further connections until killed) and
 * resolves once its socket is there (clients connect with retries: see connectWithRetry).
 */
export async function startOwnQemuNbd(file: string, dir: string, opts: { format?: string; readOnly?: boolean; bitmap?: string; name?: string } = {}): Promise<OwnQemuNbd> {
  const socketPath = path.join(dir, `${opts.name ?? 'own'}.sock`);
  const args = [
    `--format=${opts.format ?? 'qcow2'}`,
    ...(opts.readOnly === false ? [] : ['--read-only']),
    ...(opts.bitmap ? [`--bitmap=${opts.bitmap}`] : []),
    '--persistent',
    '--shared=8',
    `--socket=${socketPath}`,
    '--export-name=haven',
    file,
  ];
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 20_000;
  while (!existsSync(socketPath)) {
    if (gone) throw new Error(`qemu-nbd ${args.join(' ')} ended: ${stderr}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error('qemu-nbd did not create its socket within 20 s');
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return {
    child,
    socketPath,
    exportName: 'haven',
    exited,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      await fs.rm(socketPath, { force: true });
    },
  };
}

/** Calls `connect` until it stops failing with ECONNREFUSED (a socket bound but not yet listening). */
export async function connectWithRetry<T>(connect: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await connect();
    } catch (err) {
      const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
      if (code !== 'ECONNREFUSED' || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Rejects with `what` if `p` has not settled within `ms` (a hang becomes a failure, not a stuck run). */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
