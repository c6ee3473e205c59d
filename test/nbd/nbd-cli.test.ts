/**
 * `haven nbd` through the real CLI and real NBD clients (nbdinfo, nbdcopy from libnbd; qemu-img,
 * qemu-io from QEMU): backups served read-only are byte-identical to their volumes and to `haven
 * restore`, holes are reported chunk by chunk, several clients read at once, unknown exports are
 * refused, an incremental and its parent are both served, writable exports keep writes in a
 * per-connection or kept overlay and never change the repository, an encrypted repository serves
 * plain bytes, and a read lock is held while the server runs.
 *
 * Every server listens on 127.0.0.1:0 (the port the OS picked is in its JSON line) and is stopped
 * with a signal; its exit status is asserted. A small NBD client written here (RawNbd) does what the
 * real clients never do: a write to a read-only export, a disconnect without a flush, a connection
 * held open while the server is told to stop.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { skipOutsideCi } from '../helpers/skip.ts';
import { cliErrorMessage, collectCli, KiB, MiB, Rng, runCli, runCliJson, sha256File, sleep, spawnCli, TempDirs, type CliResult } from '../helpers/volumes.ts';

const execFileP = promisify(execFile);

const TOOLS = ['nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io'];
const skip = skipOutsideCi(TOOLS.every((t) => spawnSync(t, ['--version'], { stdio: 'ignore' }).status === 0) ? false : `NBD clients (${TOOLS.join(', ')}: Debian libnbd-bin, qemu-utils) are not installed`);

const temp = new TempDirs('haven-nbd-cli-');

/** The repository's chunk size (the default): holes are whole chunks. */
const CHUNK = 64 * KiB;
/** Not a multiple of the chunk size: the last chunk is partial (12 KiB). */
const SIZE = 40 * MiB + 12 * KiB;

// ---- images ----

/**
 * The test image: random data regions (one aligned chunk, a chunk with a single byte at its very
 * end, an unaligned run over four chunks, 4 MiB, 4 KiB in the middle of a chunk, an unaligned run
 * before the end, the last 4 KiB of the partial last chunk) and large holes between them.
 */
function makeImage(seed: number): Buffer {
  const rng = new Rng(seed);
  const img = Buffer.alloc(SIZE);
  const fill = (offset: number, length: number): void => void rng.fill(img.subarray(offset, offset + length));
  fill(0, CHUNK);
  img[2 * CHUNK - 1] = 0x5a;
  fill(10 * CHUNK + 1000, 3 * CHUNK + 4000);
  fill(8 * MiB, 4 * MiB);
  fill(20 * MiB + 8 * KiB, 4 * KiB);
  fill(39 * MiB + 100, 512 * KiB - 100);
  fill(SIZE - 4 * KiB, 4 * KiB);
  return img;
}

interface Extent {
  offset: number;
  length: number;
  hole: boolean;
}

const ZEROS = Buffer.alloc(CHUNK);

/** What base:allocation must say of an image: per chunk (the last one partial), runs merged. */
function expectedMap(img: Buffer): Extent[] {
  const out: Extent[] = [];
  for (let offset = 0; offset < img.length; offset += CHUNK) {
    const length = Math.min(CHUNK, img.length - offset);
    const hole = img.subarray(offset, offset + length).equals(ZEROS.subarray(0, length));
    const last = out[out.length - 1];
    if (last && last.hole === hole) last.length += length;
    else out.push({ offset, length, hole });
  }
  return out;
}

/** The map of a backup seen through an overlay holding the 4 KiB blocks `writes` touched. */
function overlayMap(base: Buffer, writes: { offset: number; length: number }[]): Extent[] {
  const block = 4 * KiB;
  const baseMap = expectedMap(base);
  const out: Extent[] = [];
  for (let offset = 0; offset < base.length; offset += block) {
    const length = Math.min(block, base.length - offset);
    const written = writes.some((w) => w.offset < offset + length && offset < w.offset + w.length);
    const hole = !written && baseMap.find((e) => e.offset <= offset && offset < e.offset + e.length)!.hole;
    const last = out[out.length - 1];
    if (last && last.hole === hole) last.length += length;
    else out.push({ offset, length, hole });
  }
  return out;
}

/** `img` with `length` bytes of `byte` at `offset` (a copy). */
function patched(img: Buffer, ...writes: { offset: number; length: number; byte: number }[]): Buffer {
  const out = Buffer.from(img);
  for (const w of writes) out.fill(w.byte, w.offset, w.offset + w.length);
  return out;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

function assertBytes(got: Uint8Array, expected: Uint8Array, what: string): void {
  if (got.length === expected.length && Buffer.from(got.buffer, got.byteOffset, got.length).equals(expected)) return;
  const at = firstDifference(got, expected);
  assert.fail(`${what}: ${got.length} bytes, expected ${expected.length}; first difference at offset ${at} (chunk ${Math.floor(at / CHUNK)})`);
}

async function assertFileBytes(file: string, expected: Buffer, what: string): Promise<void> {
  assertBytes(await fs.readFile(file), expected, what);
}

// ---- tools ----

interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion; a non-zero exit is a result, not an exception (a timeout is). */
async function tool(cmd: string, args: string[], timeoutMs = 30_000): Promise<ToolResult> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * MiB, encoding: 'utf8' });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string; signal?: string | null };
    if (typeof e.code !== 'number') throw new Error(`${cmd} ${args.join(' ')} did not complete (${e.signal ?? String(e.code)}): ${e.stderr ?? ''}`, { cause: err });
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

async function mustRun(cmd: string, args: string[]): Promise<string> {
  const r = await tool(cmd, args);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** qemu-io on a raw NBD URI; every command must succeed (a `read -P` mismatch prints "failed"). */
async function qemuIo(uri: string, commands: string[]): Promise<string> {
  const args = ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri];
  const r = await tool('qemu-io', args);
  assert.equal(r.code, 0, `qemu-io ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  assert.doesNotMatch(r.stdout + r.stderr, /fail|error/i, `qemu-io ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** The bytes of a `read -v OFFSET LENGTH` hex dump (addresses are absolute). */
function parseHexDump(out: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let seen = 0;
  for (const line of out.split('\n')) {
    const m = /^([0-9a-f]{8,}):  ((?:[0-9a-f]{2} ?)+)/.exec(line);
    if (!m) continue;
    const at = parseInt(m[1]!, 16) - offset;
    const bytes = m[2]!.trim().split(' ').map((h) => parseInt(h, 16));
    buf.set(bytes, at);
    seen += bytes.length;
  }
  assert.equal(seen, length, `qemu-io dumped ${seen} of ${length} bytes`);
  return buf;
}

interface NbdinfoMapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

/** `nbdinfo --map --json`: contiguous over the whole export, type 3 (hole,zero) or 0 (data); runs merged. */
async function servedMap(uri: string): Promise<Extent[]> {
  const entries = JSON.parse(await mustRun('nbdinfo', ['--map', '--json', uri])) as NbdinfoMapEntry[];
  const out: Extent[] = [];
  let at = 0;
  for (const e of entries) {
    assert.equal(e.offset, at, `map entries are contiguous: ${JSON.stringify(entries)}`);
    assert.ok(e.type === 3 || e.type === 0, `type ${e.type} (${e.description}): holes are hole,zero and data is 0`);
    at += e.length;
    const hole = e.type === 3;
    const last = out[out.length - 1];
    if (last && last.hole === hole) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length, hole });
  }
  return out;
}

interface NbdinfoJson {
  exports: { 'export-name': string; 'export-size'?: number; is_read_only?: boolean; can_multi_conn?: boolean; can_flush?: boolean }[];
}

// ---- haven nbd ----

interface NbdReady {
  listen: string;
  writable: boolean;
  exports: { name: string; uri: string; sizeBytes: number; volumeName: string }[];
}

interface NbdServerProcess {
  child: ChildProcess;
  info: NbdReady;
  port: number;
  uri(exportName: string): string;
  stderr(): string;
  /** Signals the server and waits for its exit (SIGKILL and a failure after 15 s). */
  stop(signal?: NodeJS.Signals): Promise<CliResult>;
  exited: Promise<CliResult>;
}

const running = new Set<ChildProcess>();

function timeout<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)))]).finally(() => clearTimeout(timer));
}

/** Starts `haven nbd ... --json` and waits for its JSON line, or for its exit (a refused start). */
async function launchNbd(args: string[]): Promise<{ ready: NbdServerProcess } | { exited: CliResult }> {
  const child = spawnCli(['nbd', '--listen', '127.0.0.1:0', '--json', ...args]);
  running.add(child);
  const exited = collectCli(child);
  void exited.finally(() => running.delete(child)).catch(() => undefined);
  let stderr = '';
  child.stderr!.on('data', (s: string) => (stderr += s));
  const line = new Promise<string>((resolve) => {
    let out = '';
    child.stdout!.on('data', (s: string) => {
      out += s;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
  });
  const first = await timeout(Promise.race([line.then((l) => ({ line: l })), exited.then((r) => ({ result: r }))]), 30_000);
  if (first === 'timeout') {
    child.kill('SIGKILL');
    await exited;
    throw new Error(`haven nbd ${args.join(' ')} printed nothing within 30 s: ${stderr}`);
  }
  if ('result' in first) return { exited: first.result };
  let info: NbdReady;
  try {
    info = JSON.parse(first.line) as NbdReady;
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`haven nbd printed no JSON line: ${JSON.stringify(first.line)}`, { cause: err });
  }
  const port = Number(/^127\.0\.0\.1:(\d+)$/.exec(info.listen)?.[1]);
  assert.ok(port > 0, `listen ${info.listen} names the port the OS picked`);
  return {
    ready: {
      child,
      info,
      port,
      exited,
      uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
      stderr: () => stderr,
      async stop(signal = 'SIGTERM') {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        const r = await timeout(exited, 15_000);
        if (r !== 'timeout') return r;
        child.kill('SIGKILL');
        await exited;
        throw new Error(`haven nbd did not exit within 15 s of ${signal}`);
      },
    },
  };
}

async function startNbd(args: string[]): Promise<NbdServerProcess> {
  const r = await launchNbd(args);
  if ('exited' in r) throw new Error(`haven nbd ${args.join(' ')} exited ${r.exited.code ?? r.exited.signal}: ${r.exited.stderr}`);
  return r.ready;
}

/**
 * Runs `fn` with a server, then stops it (SIGTERM unless said otherwise) and asserts it exited 0;
 * with `quiet`, that it wrote nothing to stderr either.
 */
async function withNbd<T>(args: string[], fn: (s: NbdServerProcess) => Promise<T>, opts: { signal?: NodeJS.Signals; quiet?: boolean } = {}): Promise<T> {
  const s = await startNbd(args);
  let result: T;
  try {
    result = await fn(s);
  } catch (err) {
    await s.stop().catch(() => undefined);
    throw err;
  }
  const r = await s.stop(opts.signal);
  assert.equal(r.code, 0, `haven nbd exited ${r.code ?? r.signal} after ${opts.signal ?? 'SIGTERM'}: ${r.stderr}`);
  if (opts.quiet !== false) assert.equal(r.stderr, '', 'haven nbd reported no errors');
  return result;
}

// ---- a minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies) ----

class RawNbd {
  private readonly sock: net.Socket;
  private bufs: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended: Error | null = null;
  private cookie = 0n;
  sizeBytes = 0;
  flags = 0;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (b: Buffer) => {
      this.bufs.push(b);
      this.have += b.length;
      this.wake();
    });
    const end = (): void => {
      this.ended ??= new Error('connection closed');
      this.wake();
    };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', end);
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.have >= w.n) {
      const all = Buffer.concat(this.bufs, this.have);
      this.bufs = [all.subarray(w.n)];
      this.have -= w.n;
      this.waiter = null;
      w.resolve(all.subarray(0, w.n));
    } else if (this.ended) {
      this.waiter = null;
      w.reject(this.ended);
    }
  }

  private take(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  static async open(port: number, name: string): Promise<RawNbd> {
    const sock = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    const c = new RawNbd(sock);
    const hello = await c.take(18);
    assert.equal(hello.readBigUInt64BE(0), 0x4e42444d41474943n, 'NBDMAGIC');
    sock.write(Buffer.from([0, 0, 0, 3])); // fixed newstyle, no zeroes
    const n = Buffer.from(name, 'utf8');
    const opt = Buffer.alloc(16 + 4 + n.length + 2);
    opt.writeBigUInt64BE(0x49484156454f5054n, 0);
    opt.writeUInt32BE(7, 8); // NBD_OPT_GO
    opt.writeUInt32BE(4 + n.length + 2, 12);
    opt.writeUInt32BE(n.length, 16);
    n.copy(opt, 20);
    sock.write(opt);
    for (;;) {
      const h = await c.take(20);
      const type = h.readUInt32BE(12);
      const data = await c.take(h.readUInt32BE(16));
      if (type >= 0x80000000) {
        sock.destroy();
        throw new Error(`NBD_OPT_GO refused (${type - 0x80000000}): ${data.toString('utf8')}`);
      }
      if (type === 3 && data.readUInt16BE(0) === 0) {
        c.sizeBytes = Number(data.readBigUInt64BE(2));
        c.flags = data.readUInt16BE(10);
      }
      if (type === 1) return c;
    }
  }

  private async request(type: number, offset: number, length: number, payload?: Uint8Array): Promise<{ errno: number; data: Buffer }> {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(++this.cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.sock.write(payload ? Buffer.concat([h, payload]) : h);
    const r = await this.take(16);
    assert.equal(r.readUInt32BE(0), 0x67446698, 'a simple reply (no structured replies were asked for)');
    const errno = r.readUInt32BE(4);
    return { errno, data: errno === 0 && type === 0 ? await this.take(length) : Buffer.alloc(0) };
  }

  read(offset: number, length: number): Promise<{ errno: number; data: Buffer }> {
    return this.request(0, offset, length);
  }

  write(offset: number, data: Uint8Array): Promise<{ errno: number; data: Buffer }> {
    return this.request(1, offset, data.length, data);
  }

  flush(): Promise<{ errno: number; data: Buffer }> {
    return this.request(3, 0, 0);
  }

  /** NBD_CMD_DISC (no flush before it) and the socket closed. */
  async disconnect(): Promise<void> {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(2, 6);
    this.sock.end(h);
    if (!this.sock.closed) await new Promise<void>((r) => this.sock.once('close', () => r()));
  }

  destroy(): void {
    this.sock.destroy();
  }
}

// ---- the repository ----

let dir: string;
let repo: string;
let origFile: string;
let orig: Buffer;
let fullId: string;
/** A backup of another (small) volume. */
let otherId: string;

async function backup(repoDir: string, volume: string, extra: string[] = []): Promise<{ id: string; kind: string; parentId: string | null; sizeBytes: number }> {
  return await runCliJson(['backup', '--repo', repoDir, '--volume', volume, '--json', ...extra]);
}

async function verifyClean(repoDir: string, extra: string[] = []): Promise<void> {
  const v = await runCliJson<{ ok: boolean; damagedChunks: number; missingChunks: number }>(['verify', '--repo', repoDir, '--json', ...extra]);
  assert.equal(v.ok, true, `verify: ${JSON.stringify(v)}`);
  assert.equal(v.damagedChunks, 0);
  assert.equal(v.missingChunks, 0);
}

async function restoreBytes(repoDir: string, id: string, extra: string[] = []): Promise<Buffer> {
  const target = path.join(dir, `restore-${id}-${randomUUID().slice(0, 8)}.raw`);
  await runCliJson(['restore', '--repo', repoDir, '--backup', id, '--target', target, '--json', ...extra]);
  const b = await fs.readFile(target);
  await fs.rm(target);
  return b;
}

async function readLocks(repoDir: string): Promise<string[]> {
  return (await fs.readdir(path.join(repoDir, 'locks')).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
}

after(async () => {
  for (const c of running) c.kill('SIGKILL');
  await Promise.all([...running].map((c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('close', () => r())))));
  temp.cleanup();
});

before(async () => {
  if (skip) return;
  dir = temp.make();
  repo = path.join(dir, 'repo');
  origFile = path.join(dir, 'orig.raw');
  orig = makeImage(1);
  await fs.writeFile(origFile, orig);
  const map = expectedMap(orig);
  // The image is what the tests mean it to be: holes and data alternating, a partial data chunk last.
  assert.ok(map.length >= 9, JSON.stringify(map));
  assert.deepEqual(map[map.length - 1], { offset: 40 * MiB, length: 12 * KiB, hole: false });
  assert.equal((await runCli(['init', '--repo', repo])).code, 0);
  const b = await backup(repo, origFile);
  assert.equal(b.sizeBytes, SIZE);
  fullId = b.id;
  const small = path.join(dir, 'small.raw');
  await fs.writeFile(small, new Rng(7).bytes(MiB + 3 * KiB));
  otherId = (await backup(repo, small)).id;
});

describe('haven nbd', { skip, concurrency: false }, () => {
  it('serves a backup read-only: size, bytes, holes, list; writes are refused and the repository stays intact', async () => {
    await withNbd(['--repo', repo, '--backup', fullId], async (s) => {
      const uri = s.uri(fullId);
      assert.deepEqual(s.info, { listen: `127.0.0.1:${s.port}`, writable: false, exports: [{ name: fullId, uri, sizeBytes: SIZE, volumeName: 'orig.raw' }] });

      const info = JSON.parse(await mustRun('nbdinfo', ['--json', uri])) as NbdinfoJson;
      assert.equal(info.exports.length, 1);
      assert.equal(info.exports[0]!['export-name'], fullId);
      assert.equal(info.exports[0]!['export-size'], SIZE);
      assert.equal(info.exports[0]!.is_read_only, true);
      assert.equal(info.exports[0]!.can_multi_conn, true);

      const copied = path.join(dir, 'nbdcopy.raw');
      await mustRun('nbdcopy', [uri, copied]);
      await assertFileBytes(copied, orig, 'nbdcopy of the export');
      assertBytes(await restoreBytes(repo, fullId), orig, 'haven restore');
      assert.equal(await sha256File(copied), await sha256File(origFile));
      await fs.rm(copied);

      const same = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', origFile, uri]);
      assert.equal(same.code, 0, `qemu-img compare: ${same.stdout}${same.stderr}`);
      assert.match(same.stdout, /identical/i);
      // qemu-img compare reads the export for real: one byte changed in a hole is found.
      const flipped = path.join(dir, 'flipped.raw');
      await fs.writeFile(flipped, patched(orig, { offset: 30 * MiB + 7, length: 1, byte: 1 }));
      const diff = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', flipped, uri]);
      assert.equal(diff.code, 1, `qemu-img compare: ${diff.stdout}${diff.stderr}`);
      assert.match(diff.stdout, new RegExp(`offset ${30 * MiB}\\b`)); // the 512-byte sector holding it
      await fs.rm(flipped);

      assert.deepEqual(await servedMap(uri), expectedMap(orig));

      const list = JSON.parse(await mustRun('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${s.port}`])) as NbdinfoJson;
      assert.deepEqual(list.exports.map((e) => e['export-name']), [fullId]);

      // qemu-io refuses to open a read-only export for writing...
      const w = await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 4096', uri]);
      assert.notEqual(w.code, 0, `qemu-io write succeeded: ${w.stdout}`);
      assert.match(w.stderr + w.stdout, /read-only|permission denied/i);
      // ...and the server itself answers a write with EPERM; reads without structured replies
      // (holes sent as zeros) are the image's bytes.
      const raw = await RawNbd.open(s.port, fullId);
      try {
        assert.equal(raw.sizeBytes, SIZE);
        assert.equal((await raw.write(4096, Buffer.alloc(4096, 0xab))).errno, 1, 'EPERM');
        for (const [offset, length] of [[0, 3 * CHUNK], [12 * MiB - 5000, 10_000], [SIZE - 100 * KiB, 100 * KiB]] as const) {
          const r = await raw.read(offset, length);
          assert.equal(r.errno, 0);
          assertBytes(r.data, orig.subarray(offset, offset + length), `raw read ${offset}+${length}`);
        }
        assert.notEqual((await raw.read(SIZE - 10, 11)).errno, 0, 'a read past the end is an error');
      } finally {
        await raw.disconnect();
      }
      const again = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', origFile, uri]);
      assert.equal(again.code, 0, `after the refused writes: ${again.stdout}${again.stderr}`);
    });
    await verifyClean(repo);
    assertBytes(await restoreBytes(repo, fullId), orig, 'haven restore after the server stopped');
  });

  it('serves several clients at once; unknown exports are refused and the server goes on', async () => {
    await withNbd(['--repo', repo], async (s) => {
      assert.deepEqual(s.info.exports, [], 'without --backup, no export is listed in the JSON line');
      const uri = s.uri(fullId);
      const outs = ['a', 'b', 'c', 'd'].map((n) => path.join(dir, `concurrent-${n}.raw`));
      await Promise.all([
        mustRun('nbdcopy', [uri, outs[0]!]),
        mustRun('nbdcopy', ['--connections=1', '--requests=16', '--request-size=65536', uri, outs[1]!]),
        mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, outs[2]!]),
        mustRun('nbdcopy', ['--no-extents', uri, outs[3]!]),
      ]);
      for (const o of outs) {
        await assertFileBytes(o, orig, path.basename(o));
        await fs.rm(o);
      }

      for (const name of [randomUUID(), 'not-a-backup', fullId.toUpperCase(), '']) {
        const r = await tool('nbdinfo', [s.uri(encodeURIComponent(name))]);
        assert.notEqual(r.code, 0, `export ${JSON.stringify(name)} was served: ${r.stdout}`);
        assert.match(r.stderr, /export|no such/i);
      }
      await assert.rejects(RawNbd.open(s.port, randomUUID()), /NBD_OPT_GO refused \(6\)/); // NBD_REP_ERR_UNKNOWN

      const size = await mustRun('nbdinfo', ['--size', uri]);
      assert.equal(Number(size.trim()), SIZE);
      const last = path.join(dir, 'after-refusals.raw');
      await mustRun('nbdcopy', [uri, last]);
      await assertFileBytes(last, orig, 'nbdcopy after the refusals');
      await fs.rm(last);
      const other = path.join(dir, 'other.raw');
      await mustRun('nbdcopy', [s.uri(otherId), other]);
      await assertFileBytes(other, new Rng(7).bytes(MiB + 3 * KiB), 'the other backup');
      await fs.rm(other);
    });
  });

  it('serves an incremental and its parent side by side, by id', async () => {
    const vol = path.join(dir, 'vol.raw');
    await fs.writeFile(vol, orig);
    const first = await backup(repo, vol);
    const changed = Buffer.from(orig);
    const rng = new Rng(99);
    changed.fill(0, 0, CHUNK); // data -> hole
    changed[2 * CHUNK - 1] = 0xa5; // one byte of a data chunk
    rng.fill(changed.subarray(8 * MiB + 100 * KiB, 8 * MiB + 104 * KiB)); // inside the 4 MiB run
    rng.fill(changed.subarray(30 * MiB + 3 * KiB, 30 * MiB + 5 * KiB)); // hole -> data
    changed.fill(0, 40 * MiB); // the partial last chunk: data -> hole
    await fs.writeFile(vol, changed);
    const inc = await backup(repo, vol);
    assert.equal(inc.kind, 'incremental');
    assert.equal(inc.parentId, first.id);
    assert.deepEqual(expectedMap(changed).at(-1), { offset: 39 * MiB + 512 * KiB, length: SIZE - 39 * MiB - 512 * KiB, hole: true }, 'the changed image ends in a (partial) hole');

    const ids = (await runCliJson<{ id: string }[]>(['list', '--repo', repo, '--json'])).map((b) => b.id);
    assert.ok(ids.includes(first.id) && ids.includes(inc.id) && ids.includes(fullId));
    await withNbd(['--repo', repo], async (s) => {
      const list = JSON.parse(await mustRun('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${s.port}`])) as NbdinfoJson;
      assert.deepEqual(list.exports.map((e) => e['export-name']).sort(), [...ids].sort());
      const outInc = path.join(dir, 'inc.raw');
      const outFirst = path.join(dir, 'first.raw');
      await Promise.all([mustRun('nbdcopy', [s.uri(inc.id), outInc]), mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.uri(first.id), outFirst])]);
      await assertFileBytes(outInc, changed, 'the incremental');
      await assertFileBytes(outFirst, orig, 'its parent');
      await fs.rm(outInc);
      await fs.rm(outFirst);
      assert.deepEqual(await servedMap(s.uri(inc.id)), expectedMap(changed));
      assert.deepEqual(await servedMap(s.uri(first.id)), expectedMap(orig));
      const cmp = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', vol, s.uri(inc.id)]);
      assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    });
  });

  it('--writable: each connection writes into its own temporary overlay; the repository is never changed', async () => {
    const overlayDir = path.join(temp.make('overlays'), 'sub'); // not there yet: made on first use
    const H = 5 * MiB + 1536; // in a hole
    const E = 12 * MiB - 3000; // over the end of a data run, into a hole
    await withNbd(['--repo', repo, '--backup', fullId, '--writable', '--overlay-dir', overlayDir], async (s) => {
      assert.equal(s.info.writable, true);
      const uri = s.uri(fullId);
      const info = JSON.parse(await mustRun('nbdinfo', ['--json', uri])) as NbdinfoJson;
      assert.equal(info.exports[0]!.is_read_only, false);
      assert.equal(info.exports[0]!.can_flush, true);
      assert.equal(info.exports[0]!.can_multi_conn, false, 'connections do not see each other\'s writes');

      const out = await qemuIo(uri, [
        'write -P 0xab 1000 5000',
        'read -P 0xab 1000 5000',
        'read -v 0 8192',
        `write -P 0xcd ${H} 512`,
        `read -P 0xcd ${H} 512`,
        `read -P 0 ${H - 1536} 1536`,
        `read -P 0 ${H + 512} ${CHUNK}`,
        `write -P 0x77 ${E} 6000`,
        `read -v ${12 * MiB - 8192} 16384`,
        `write -P 0xef ${SIZE - 700} 700`,
        `read -v ${SIZE - 8192} 8192`,
        'flush',
      ]);
      const sections = out.split(/^read \d+\/\d+ bytes at offset \d+$/m);
      const view = patched(orig, { offset: 1000, length: 5000, byte: 0xab }, { offset: H, length: 512, byte: 0xcd }, { offset: E, length: 6000, byte: 0x77 }, { offset: SIZE - 700, length: 700, byte: 0xef });
      const dumps = [
        [0, 8192],
        [12 * MiB - 8192, 16384],
        [SIZE - 8192, 8192],
      ] as const;
      const dumped = sections.filter((sec) => /^[0-9a-f]{8}:  /m.test(sec));
      assert.equal(dumped.length, dumps.length);
      dumps.forEach(([o, l], i) => assertBytes(parseHexDump(dumped[i]!, o, l), view.subarray(o, o + l), `the writing connection's view of ${o}+${l}`));

      // A later connection has an overlay of its own: it sees the backup as it is.
      const cmp = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', origFile, uri]);
      assert.equal(cmp.code, 0, `a second connection sees the writes of the first: ${cmp.stdout}${cmp.stderr}`);
      assert.deepEqual(await fs.readdir(overlayDir), [], 'temporary overlays are unlinked at once');
    });
    assert.deepEqual(await fs.readdir(overlayDir), []);
    await verifyClean(repo);
    assertBytes(await restoreBytes(repo, fullId), orig, 'haven restore after writes through the export');
  });

  it('--writable --overlay FILE keeps the writes across restarts; FILE.map is written', async () => {
    const ovl = path.join(dir, 'kept.ovl');
    const W = { offset: 12 * MiB - 3000, length: 6000, byte: 0x5a };
    const T = { offset: SIZE - 5000, length: 4321, byte: 0x6b };
    const args = ['--repo', repo, '--backup', fullId, '--writable', '--overlay', ovl];
    await withNbd(args, async (s) => {
      const info = JSON.parse(await mustRun('nbdinfo', ['--json', s.uri(fullId)])) as NbdinfoJson;
      assert.equal(info.exports[0]!.is_read_only, false);
      assert.equal(info.exports[0]!.can_multi_conn, true, 'one overlay shared by every connection');
      await qemuIo(s.uri(fullId), [`write -P ${W.byte} ${W.offset} ${W.length}`, 'flush']);
      // A second connection shares the kept overlay.
      await qemuIo(s.uri(fullId), [`read -P ${W.byte} ${W.offset} ${W.length}`, `write -P ${T.byte} ${T.offset} ${T.length}`, 'flush']);
    });
    assert.ok(existsSync(ovl), 'the overlay file is kept');
    assert.ok(existsSync(`${ovl}.map`), 'its map is kept beside it');
    assert.equal((await fs.stat(ovl)).size, SIZE);

    const expected = patched(orig, W, T);
    await withNbd(args, async (s) => {
      await qemuIo(s.uri(fullId), [`read -P ${W.byte} ${W.offset} ${W.length}`, `read -P ${T.byte} ${T.offset} ${T.length}`]);
      const out = path.join(dir, 'kept-view.raw');
      await mustRun('nbdcopy', [s.uri(fullId), out]);
      await assertFileBytes(out, expected, 'the export over the kept overlay after a restart');
      await fs.rm(out);
      // Blocks the overlay holds are data, whatever the backup has there.
      assert.deepEqual(await servedMap(s.uri(fullId)), overlayMap(orig, [W, T]));
    });
    await verifyClean(repo);
    assertBytes(await restoreBytes(repo, fullId), orig, 'haven restore: the backup itself is unchanged');
  });

  it('refuses --overlay for a different backup at startup', async () => {
    const ovl = path.join(dir, 'kept.ovl');
    const r = await launchNbd(['--repo', repo, '--backup', otherId, '--writable', '--overlay', ovl]);
    if ('ready' in r) {
      const exit = await r.ready.stop();
      assert.fail(`haven nbd started (and exited ${exit.code}) with an overlay made over backup ${fullId} for backup ${otherId}`);
    }
    assert.match(cliErrorMessage(r.exited), /overlay/);
  });

  it('refuses --overlay without --writable, and without exactly one --backup', async () => {
    const ovl = path.join(dir, 'never.ovl');
    const a = await runCli(['nbd', '--repo', repo, '--listen', '127.0.0.1:0', '--backup', fullId, '--overlay', ovl], { timeoutMs: 20_000 });
    assert.match(cliErrorMessage(a), /--overlay needs --writable/);
    const b = await runCli(['nbd', '--repo', repo, '--listen', '127.0.0.1:0', '--writable', '--overlay', ovl], { timeoutMs: 20_000 });
    assert.match(cliErrorMessage(b), /--overlay needs exactly one --backup/);
    assert.equal(existsSync(ovl), false);
  });

  it('serves an encrypted repository\'s backups as plain bytes', async () => {
    const encRepo = path.join(dir, 'enc-repo');
    const pw = path.join(dir, 'password');
    await fs.writeFile(pw, 'correct horse battery staple\n', { mode: 0o600 });
    const init = await runCliJson<{ encrypted: boolean }>(['init', '--repo', encRepo, '--password-file', pw, '--json']);
    assert.equal(init.encrypted, true);
    const id = (await backup(encRepo, origFile, ['--password-file', pw])).id;
    const noPw = await launchNbd(['--repo', encRepo, '--backup', id]);
    if ('ready' in noPw) {
      await noPw.ready.stop();
      assert.fail('haven nbd started on an encrypted repository without its password');
    }
    assert.match(cliErrorMessage(noPw.exited), /password/i);

    await withNbd(['--repo', encRepo, '--password-file', pw, '--backup', id], async (s) => {
      const out = path.join(dir, 'enc.raw');
      await mustRun('nbdcopy', [s.uri(id), out]);
      await assertFileBytes(out, orig, 'nbdcopy from the encrypted repository');
      await fs.rm(out);
      assert.deepEqual(await servedMap(s.uri(id)), expectedMap(orig));
      const cmp = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', origFile, s.uri(id)]);
      assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    }, { signal: 'SIGINT' });
    await verifyClean(encRepo, ['--password-file', pw]);
  });

  it('holds a read lock while it serves (GC defers its sweep), released when it stops', async () => {
    assert.deepEqual((await readLocks(repo)).filter((n) => n.startsWith('read-')), []);
    let pid = 0;
    await withNbd(['--repo', repo, '--backup', fullId], async (s) => {
      pid = s.child.pid!;
      const locks = (await readLocks(repo)).filter((n) => n.startsWith('read-'));
      assert.equal(locks.length, 1, `locks: ${locks.join(', ')}`);
      const rec = JSON.parse(await fs.readFile(path.join(repo, 'locks', locks[0]!), 'utf8')) as { kind: string; pid: number };
      assert.equal(rec.kind, 'read');
      assert.equal(rec.pid, pid);
      const gc = await runCliJson<{ deferred: boolean; deferredReason?: string | null }>(['gc', '--repo', repo, '--json']);
      assert.equal(gc.deferred, true, `gc while haven nbd runs: ${JSON.stringify(gc)}`);
      const out = path.join(dir, 'locked.raw');
      await mustRun('nbdcopy', [s.uri(fullId), out]);
      await assertFileBytes(out, orig, 'nbdcopy after a gc');
      await fs.rm(out);
    });
    assert.deepEqual((await readLocks(repo)).filter((n) => n.startsWith('read-')), [], 'the read lock is released');
    const gc = await runCliJson<{ deferred: boolean }>(['gc', '--repo', repo, '--json']);
    assert.equal(gc.deferred, false);
    await verifyClean(repo);
  });

  it('stops on SIGTERM while a client is still connected', async () => {
    const s = await startNbd(['--repo', repo, '--backup', fullId]);
    const c = await RawNbd.open(s.port, fullId);
    try {
      assert.equal((await c.read(0, 4096)).errno, 0);
      s.child.kill('SIGTERM');
      const r = await timeout(s.exited, 3000);
      if (r === 'timeout') assert.fail('haven nbd was still running 3 s after SIGTERM, waiting for its client to disconnect');
      assert.equal(r.code, 0, r.stderr);
    } finally {
      c.destroy();
      const r = (await timeout(s.exited, 10_000)) === 'timeout' ? await s.stop() : await s.exited;
      assert.equal(r.code, 0, r.stderr);
    }
    assert.deepEqual((await readLocks(repo)).filter((n) => n.startsWith('read-')), []);
  });

  it('a kept overlay keeps writes of a connection that ended without a flush', async () => {
    const ovl = path.join(dir, 'race.ovl');
    const args = ['--repo', repo, '--backup', fullId, '--writable', '--overlay', ovl];
    const writes = [1, 2, 3, 4, 5].map((i) => ({ offset: 16 * MiB + i * 64 * KiB, length: 4096, byte: 0x10 + i }));
    const seen: string[] = [];
    await withNbd(args, async (s) => {
      for (const w of writes) {
        const a = await RawNbd.open(s.port, fullId);
        assert.equal((await a.write(w.offset, Buffer.alloc(w.length, w.byte))).errno, 0);
        await a.disconnect(); // no flush: the server saves the map when the connection ends
        const b = await RawNbd.open(s.port, fullId); // right away
        const r = await b.read(w.offset, w.length);
        if (!r.data.equals(Buffer.alloc(w.length, w.byte))) seen.push(`the next connection did not see the write at ${w.offset}`);
        // b writes elsewhere and flushes: its map replaces the one a's close saved.
        assert.equal((await b.write(w.offset + 8192, Buffer.alloc(4096, 0xee))).errno, 0);
        assert.equal((await b.flush()).errno, 0);
        await b.disconnect();
      }
    });
    await withNbd(args, async (s) => {
      for (const w of writes) {
        const r = await tool('qemu-io', ['-f', 'raw', '-c', `read -P ${w.byte} ${w.offset} ${w.length}`, s.uri(fullId)]);
        if (r.code !== 0 || /fail/i.test(r.stdout + r.stderr)) seen.push(`the write at ${w.offset} is lost after a restart`);
      }
    });
    assert.deepEqual(seen, []);
  });

  it('says where it listens and how to name each export, in plain text without --json', async () => {
    const child = spawnCli(['nbd', '--repo', repo, '--listen', '127.0.0.1:0']);
    running.add(child);
    const exited = collectCli(child);
    let out = '';
    child.stdout!.on('data', (s: string) => (out += s));
    for (let i = 0; i < 300 && !out.includes('by id:'); i++) await sleep(100);
    child.kill('SIGTERM');
    const r = await exited;
    running.delete(child);
    const port = /listening on 127\.0\.0\.1:(\d+) \(read-only\)/.exec(out)?.[1];
    assert.ok(port, out);
    // The placeholder as the README writes it (not percent-encoded).
    assert.ok(out.includes(`every backup of the repository, by id: nbd://127.0.0.1:${port}/<backup id>\n`), out);
    assert.equal(r.code, 0, r.stderr);
  });

  it('exits cleanly on a SIGTERM sent right after its JSON line', async () => {
    const sigRepo = path.join(dir, 'sig-repo');
    assert.equal((await runCli(['init', '--repo', sigRepo])).code, 0);
    const outcomes: string[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await launchNbd(['--repo', sigRepo]);
      assert.ok('ready' in r, 'started');
      r.ready.child.kill('SIGTERM'); // what a supervisor does once the service says it is ready
      const exit = await r.ready.exited;
      if (exit.code !== 0) outcomes.push(`exit ${exit.code ?? exit.signal}`);
    }
    const left = (await readLocks(sigRepo)).filter((n) => n.startsWith('read-'));
    assert.deepEqual({ outcomes, left }, { outcomes: [], left: [] });
  });
});
