/**
 * Test helpers: temp directories, seeded random data, volume files (dense and sparse), file hashes,
 * repository directory snapshots and a runner for the `haven` CLI.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, promises as fs, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const GiB = 1024 * 1024 * 1024;

/** scrypt parameters cheap enough for tests (the default costs ~100 ms per unlock). */
export const TEST_KDF = { N: 1024, r: 8, p: 1 };

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI_MAIN = path.join(REPO_ROOT, 'bin', 'haven.js');

// ---- temp directories ----

/** Temp directories under os.tmpdir(), removed together by cleanup() (call it in after()). */
export class TempDirs {
  private readonly dirs: string[] = [];
  private readonly prefix: string;

  constructor(prefix = 'haven-test-') {
    this.prefix = prefix;
  }

  make(name = ''): string {
    const d = mkdtempSync(path.join(tmpdir(), `${this.prefix}${name ? `${name}-` : ''}`));
    this.dirs.push(d);
    return d;
  }

  cleanup(): void {
    for (const d of this.dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  }
}

// ---- seeded random data ----

/**
 * xorshift128 (Marsaglia): a small, fast, seeded generator. Not cryptographic; the point is that
 * every run produces the same bytes, so a failure can be reproduced.
 */
export class Rng {
  private x: number;
  private y: number;
  private z: number;
  private w: number;

  constructor(seed: number) {
    // splitmix32 spreads the seed over the 128-bit state (which must not be all zero).
    let s = seed >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let t = s;
      t = Math.imul(t ^ (t >>> 16), 0x85ebca6b) >>> 0;
      t = Math.imul(t ^ (t >>> 13), 0xc2b2ae35) >>> 0;
      return (t ^ (t >>> 16)) >>> 0;
    };
    this.x = next();
    this.y = next();
    this.z = next();
    this.w = next() | 1;
  }

  nextU32(): number {
    const t = this.x ^ (this.x << 11);
    this.x = this.y;
    this.y = this.z;
    this.z = this.w;
    this.w = (this.w ^ (this.w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return this.w;
  }

  /** An integer in [0, max). */
  int(max: number): number {
    return Math.floor((this.nextU32() / 0x1_0000_0000) * max);
  }

  /** Fills `buf` with pseudo-random bytes. */
  fill(buf: Uint8Array): Uint8Array {
    const words = buf.length >>> 2;
    if (buf.byteOffset % 4 === 0) {
      const u32 = new Uint32Array(buf.buffer, buf.byteOffset, words);
      let { x, y, z, w } = this;
      for (let i = 0; i < words; i++) {
        const t = x ^ (x << 11);
        x = y;
        y = z;
        z = w;
        w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
        u32[i] = w;
      }
      this.x = x;
      this.y = y;
      this.z = z;
      this.w = w;
    } else {
      for (let i = 0; i < words * 4; i += 4) {
        const v = this.nextU32();
        buf[i] = v & 0xff;
        buf[i + 1] = (v >>> 8) & 0xff;
        buf[i + 2] = (v >>> 16) & 0xff;
        buf[i + 3] = v >>> 24;
      }
    }
    for (let i = words * 4; i < buf.length; i++) buf[i] = this.nextU32() & 0xff;
    return buf;
  }

  /** A new Buffer of `n` pseudo-random bytes. */
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n); // alloc (not allocUnsafe): never from the shared pool, so 4-byte aligned
    this.fill(b);
    return b;
  }
}

/** `n` pseudo-random bytes from `seed`: the same seed always gives the same bytes. */
export function randomBytesSeeded(n: number, seed: number): Buffer {
  return new Rng(seed).bytes(n);
}

// ---- volume files ----

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Writes `size` pseudo-random bytes from `seed` to `file`, in blocks; returns their SHA-256. */
export async function writeRandomFile(file: string, size: number, seed: number): Promise<string> {
  const rng = new Rng(seed);
  const hash = createHash('sha256');
  const block = Buffer.alloc(Math.min(size, 8 * MiB));
  const fh = await fs.open(file, 'w');
  try {
    for (let pos = 0; pos < size; pos += block.length) {
      const b = block.subarray(0, Math.min(block.length, size - pos));
      rng.fill(b);
      hash.update(b);
      await writeFully(fh, b, pos);
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

/** Writes `data` to `file` (created or replaced); returns its SHA-256. */
export async function writeVolume(file: string, data: Uint8Array): Promise<string> {
  await fs.writeFile(file, data);
  return sha256(data);
}

/** Overwrites `data.length` bytes of an existing file at `position`. */
export async function overwrite(file: string, position: number, data: Uint8Array): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    await writeFully(fh, data, position);
  } finally {
    await fh.close();
  }
}

/**
 * A sparse file of `size` bytes (fs.truncate, so nothing is allocated) with `extents` written at
 * their offsets.
 */
export async function makeSparseFile(file: string, size: number, extents: { offset: number; data: Uint8Array }[] = []): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    await fh.truncate(size);
    for (const e of extents) await writeFully(fh, e.data, e.offset);
  } finally {
    await fh.close();
  }
}

async function writeFully(fh: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    off += bytesWritten;
  }
}

/** SHA-256 of a file, read in large blocks (a 10 GiB sparse file hashes at the speed of SHA-256). */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  const bufs = [Buffer.allocUnsafe(8 * MiB), Buffer.allocUnsafe(8 * MiB)];
  const fh = await fs.open(file, 'r');
  try {
    // Double-buffered: the next block is read while the current one is hashed.
    let pos = 0;
    let k = 0;
    let pending = fh.read(bufs[0]!, 0, 8 * MiB, 0);
    for (;;) {
      const { bytesRead, buffer } = await pending;
      if (bytesRead === 0) break;
      pos += bytesRead;
      k ^= 1;
      pending = fh.read(bufs[k]!, 0, 8 * MiB, pos);
      hash.update(buffer.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

/** Bytes the file system has allocated for a file (st_blocks * 512): small for a sparse file. */
export async function allocatedBytes(file: string): Promise<number> {
  return (await fs.stat(file)).blocks * 512;
}

// ---- repository directories ----

/** Every regular file under `dir` (relative path -> size and SHA-256), sorted by path. */
export async function snapshotDir(dir: string): Promise<Map<string, { size: number; sha256: string }>> {
  const out = new Map<string, { size: number; sha256: string }>();
  for (const rel of await listFilesRecursive(dir)) {
    const body = await fs.readFile(path.join(dir, rel));
    out.set(rel, { size: body.length, sha256: sha256(body) });
  }
  return out;
}

/** Relative paths of every regular file under `dir`, sorted. */
export async function listFilesRecursive(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

/** Total apparent size of every file under `dir` (what `du --apparent-size -b` reports), a repository's reports/ aside. */
export async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  // A repository's run reports (engine/run-reports.ts: the last GC and verify) are not its data.
  for (const rel of await listFilesRecursive(dir)) if (!rel.startsWith(`reports${path.sep}`)) n += (await fs.stat(path.join(dir, rel))).size;
  return n;
}

/** Pack files of a repository directory, as relative paths `packs/<ab>/<id>`. */
export async function listPacks(repoDir: string): Promise<string[]> {
  return (await listFilesRecursive(repoDir)).filter((p) => p.startsWith(`packs${path.sep}`) && !path.basename(p).startsWith('.tmp-'));
}

// ---- the CLI ----

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export interface CliOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Kills the process (SIGKILL) after this long; the test then sees signal 'SIGKILL'. */
  timeoutMs?: number;
}

function cliEnv(extra: Record<string, string | undefined> | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, HAVEN_THREADS: '2' };
  // The CLI reads the repository settings the service reads: none leak in from the test's shell.
  for (const k of ['HAVEN_PASSWORD_FILE', 'HAVEN_REPO_PASSWORD_FILE', 'HAVEN_REPOSITORY', 'HAVEN_REPOSITORY_URL']) delete env[k];
  delete env.HAVEN_DEBUG;
  delete env.NODE_TEST_CONTEXT; // the child is a program, not a test file
  for (const [k, v] of Object.entries(extra ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** Starts `haven <args>` with the Node that runs the tests (Node 24). */
export function spawnCli(args: string[], opts: CliOptions = {}): ChildProcess {
  return spawn(process.execPath, [CLI_MAIN, ...args], { cwd: opts.cwd ?? REPO_ROOT, env: cliEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Collects the output and exit status of a started CLI process. */
export function collectCli(child: ChildProcess, timeoutMs?: number): Promise<CliResult> {
  const started = performance.now();
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const timer = timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, durationMs: performance.now() - started });
    });
  });
}

/** Runs `haven <args>` to completion. */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return collectCli(spawnCli(args, opts), opts.timeoutMs ?? 120_000);
}

/** Runs `haven <args> --json`-style commands and parses stdout as JSON; fails loudly on a non-zero exit. */
export async function runCliJson<T>(args: string[], opts: CliOptions = {}): Promise<T> {
  const r = await runCli(args, opts);
  if (r.code !== 0) throw new Error(`haven ${args.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr}`);
  try {
    return JSON.parse(r.stdout) as T;
  } catch (err) {
    throw new Error(`haven ${args.join(' ')} printed no valid JSON: ${JSON.stringify(r.stdout)}`, { cause: err });
  }
}

/**
 * Asserts the CLI's error contract: a non-zero exit, exactly one stderr line starting
 * `haven: error:`, and no stack trace. Returns the message after the prefix.
 */
export function cliErrorMessage(r: CliResult): string {
  if (r.code === 0 || r.code === null) throw new Error(`expected a non-zero exit, got ${r.code ?? r.signal}; stderr: ${r.stderr}`);
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  if (lines.length !== 1) throw new Error(`expected exactly one stderr line, got ${lines.length}: ${JSON.stringify(r.stderr)}`);
  const line = lines[0]!;
  if (!line.startsWith('haven: error: ')) throw new Error(`stderr does not start with "haven: error: ": ${JSON.stringify(line)}`);
  if (/^\s+at /m.test(r.stderr) || /\n\s+at /.test(r.stdout)) throw new Error(`stack trace printed: ${r.stderr}`);
  return line.slice('haven: error: '.length);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Reads each extent back from `file` and asserts it holds exactly the extent's data. */
export async function assertExtents(file: string, extents: { offset: number; data: Uint8Array }[]): Promise<void> {
  const fh = await fs.open(file, 'r');
  try {
    for (const e of extents) {
      const b = Buffer.alloc(e.data.length);
      await fh.read(b, 0, b.length, e.offset);
      assert.equal(Buffer.compare(b, e.data), 0, `data at ${e.offset} differs`);
    }
  } finally {
    await fh.close();
  }
}
