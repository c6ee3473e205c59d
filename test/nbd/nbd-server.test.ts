/**
 * NbdServer (src/nbd/nbd-server.ts) at the protocol level, with a raw client written here that does
 * what real clients never do: a zero-length read, DISC pipelined behind reads, replies never read,
 * a flood of options during the handshake, plaintext behind STARTTLS, GO on an export that cannot
 * open, a SET_META_CONTEXT that fails after one that succeeded, writes to a read-only export.
 *
 * Every server listens on 127.0.0.1:0 and serves a small in-memory NbdExports whose devices read
 * from a Buffer (with counters of reads, releases and closes).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { after, describe, it } from 'node:test';
import type { ImageExtent, ImageRead } from '../../src/engine/backup-image.ts';
import { NbdServer, type NbdDevice, type NbdExport, type NbdExports, type NbdServerOptions } from '../../src/nbd/nbd-server.ts';
import { Cmd, CmdFlag, Errno, Opt, Rep, ReplyFlagDone, ReplyType, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, TFlag } from '../../src/nbd/protocol.ts';
import { makeLoopbackCert } from '../helpers/tls.ts';

const MiB = 1024 * 1024;
/** The in-memory disk: not a multiple of 4 KiB, so the end is exercised too. */
const SIZE = 64 * MiB + 1000;
const DISK = Buffer.alloc(SIZE);
for (let i = 0; i + 4 <= SIZE; i += 4) DISK.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `p`'s value, or `fallback` after `ms` (the timer cleared either way: no pending timer keeps the run alive). */
async function within<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<F>((r) => (t = setTimeout(() => r(fallback), ms)))]);
  } finally {
    clearTimeout(t);
  }
}

/** Fails unless server.close() resolves within `ms`. */
async function closesWithin(server: NbdServer, ms: number): Promise<void> {
  const r = await within(server.close().then(() => 'closed' as const), ms, 'pending' as const);
  assert.equal(r, 'closed', `server.close() did not resolve within ${ms} ms`);
}

// ---- the exports ----

interface Counters {
  opened: number;
  closed: number;
  reads: number;
  released: number;
}

/** A read-only (or writable, in memory) device over DISK; reads may be delayed (abortable). */
function memDevice(c: Counters, opts: { delayMs?: number; writable?: boolean } = {}): NbdDevice {
  const data = opts.writable ? Buffer.from(DISK) : DISK;
  const dev: NbdDevice = {
    sizeBytes: SIZE,
    async read(offset: number, length: number, signal?: AbortSignal): Promise<ImageRead> {
      c.reads++;
      if (opts.delayMs) {
        await new Promise<void>((resolve, reject) => {
          const onAbort = (): void => {
            clearTimeout(t);
            c.released++; // nothing pinned: the read never completes
            reject(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'));
          };
          const t = setTimeout(() => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
          }, opts.delayMs);
          signal?.addEventListener('abort', onAbort, { once: true });
        });
      }
      let released = false;
      // As BackupImage does: a zero-length read has no pieces.
      return {
        pieces: length ? [{ offset, length, data: data.subarray(offset, offset + length) }] : [],
        release: () => {
          if (released) return;
          released = true;
          c.released++;
        },
      };
    },
    async extents(offset: number, length: number): Promise<ImageExtent[]> {
      return [{ offset, length, hole: false }];
    },
    async close(): Promise<void> {
      c.closed++;
    },
  };
  if (opts.writable) {
    dev.write = async (offset: number, d: Uint8Array): Promise<void> => void data.set(d, offset);
    dev.writeZeroes = async (offset: number, length: number): Promise<void> => void data.fill(0, offset, offset + length);
    dev.flush = async (): Promise<void> => undefined;
  }
  return dev;
}

interface TestExports extends NbdExports {
  counters: Counters;
  listCalls: number;
}

/**
 * Exports: 'x' (read-only over DISK), 'w' (writable, in memory), 'broken' (open() throws), and
 * `listNames` for NBD_OPT_LIST.
 */
function testExports(opts: { delayMs?: number; listNames?: string[] } = {}): TestExports {
  const counters: Counters = { opened: 0, closed: 0, reads: 0, released: 0 };
  const exp = (name: string, readOnly: boolean, open: () => Promise<NbdDevice>): NbdExport => ({ name, sizeBytes: SIZE, readOnly, multiConn: readOnly, open });
  const ex: TestExports = {
    counters,
    listCalls: 0,
    async find(name: string): Promise<NbdExport | null> {
      if (name === 'x') return exp('x', true, async () => (counters.opened++, memDevice(counters, opts.delayMs ? { delayMs: opts.delayMs } : {})));
      if (name === 'w') return exp('w', false, async () => (counters.opened++, memDevice(counters, { writable: true })));
      if (name === 'broken') return exp('broken', false, async () => { throw new Error('no space for an overlay'); });
      return null;
    },
    async list(): Promise<string[]> {
      ex.listCalls++;
      return opts.listNames ?? ['x', 'w'];
    },
  };
  return ex;
}

const servers: NbdServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

async function serve(exports: NbdExports, opts: NbdServerOptions = {}): Promise<{ server: NbdServer; port: number; errors: unknown[] }> {
  const errors: unknown[] = [];
  const server = new NbdServer(exports, { onError: (e) => errors.push(e), ...opts });
  const at = await server.listen({ host: '127.0.0.1', port: 0 });
  servers.push(server);
  assert.ok('port' in at);
  return { server, port: at.port, errors };
}

// ---- a raw client ----

interface OptReply {
  opt: number;
  type: number;
  data: Buffer;
}

interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  data: Buffer;
}

/** Bytes from a socket taken in exact counts; knows when the server has closed. */
class Wire {
  sock: net.Socket;
  private bufs: Buffer[] = [];
  private have = 0;
  private waiter: (() => void) | null = null;
  closedAt = 0;
  readonly closed: Promise<void>;

  constructor(sock: net.Socket) {
    this.sock = sock;
    let onClose!: () => void;
    this.closed = new Promise<void>((r) => (onClose = r));
    this.listen(sock, onClose);
  }

  private listen(sock: net.Socket, onClose: () => void): void {
    sock.on('data', (b: Buffer) => {
      this.bufs.push(b);
      this.have += b.length;
      this.waiter?.();
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      this.closedAt ||= Date.now();
      onClose();
      this.waiter?.();
    });
  }

  static async connect(port: number): Promise<Wire> {
    const sock = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    return new Wire(sock);
  }

  /** Moves to a TLS socket over the same connection (after STARTTLS). */
  async startTls(): Promise<void> {
    this.sock.removeAllListeners('data');
    const secure = tls.connect({ socket: this.sock, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    secure.on('data', (b: Buffer) => {
      this.bufs.push(b);
      this.have += b.length;
      this.waiter?.();
    });
    secure.on('error', () => undefined);
    this.sock = secure;
  }

  get buffered(): number {
    return this.have;
  }

  /** Exactly n bytes; rejects when the server closes first or after `ms`. */
  async take(n: number, ms = 5000): Promise<Buffer> {
    const deadline = Date.now() + ms;
    while (this.have < n) {
      if (this.closedAt) throw new Error(`connection closed with ${this.have} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${this.have} of ${n} bytes`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
      this.waiter = null;
    }
    const all = Buffer.concat(this.bufs, this.have);
    this.bufs = [all.subarray(n)];
    this.have -= n;
    return all.subarray(0, n);
  }

  /** Everything received until the server closes (or `ms`). */
  async rest(ms = 5000): Promise<{ bytes: Buffer; closed: boolean }> {
    const closed = await within(this.closed.then(() => true), ms, false);
    const bytes = Buffer.concat(this.bufs, this.have);
    this.bufs = [];
    this.have = 0;
    return { bytes, closed };
  }

  write(b: Uint8Array): void {
    this.sock.write(b);
  }

  destroy(): void {
    this.sock.destroy();
  }
}

function optBytes(opt: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(0x49484156454f5054n, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** GO/INFO data: the name and no information requests. */
function nameData(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.alloc(4 + n.length + 2);
  d.writeUInt32BE(n.length, 0);
  n.copy(d, 4);
  return d;
}

/** SET/LIST_META_CONTEXT data: an export name and queries. */
function metaData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  const n = Buffer.from(name, 'utf8');
  parts.push(u32(n.length), n, u32(queries.length));
  for (const q of queries) {
    const b = Buffer.from(q, 'utf8');
    parts.push(u32(b.length), b);
  }
  return Buffer.concat(parts);
}

async function readOptReply(c: Wire): Promise<OptReply> {
  const h = await c.take(20);
  assert.equal(h.readBigUInt64BE(0), 0x0003e889045565a9n, 'option reply magic');
  return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await c.take(h.readUInt32BE(16)) };
}

/** Reads the hello and answers with fixed newstyle, no zeroes. */
async function hello(c: Wire): Promise<void> {
  const h = await c.take(18);
  assert.equal(h.readBigUInt64BE(0), 0x4e42444d41474943n, 'NBDMAGIC');
  c.write(Buffer.from([0, 0, 0, 3]));
}

async function option(c: Wire, opt: number, data?: Uint8Array): Promise<OptReply[]> {
  c.write(optBytes(opt, data));
  const out: OptReply[] = [];
  for (;;) {
    const r = await readOptReply(c);
    assert.equal(r.opt, opt, 'the reply names the option');
    out.push(r);
    if (r.type === Rep.Ack || r.type >= 2 ** 31) return out;
  }
}

/** GO: the transmission flags on success, or the error reply's type. */
async function go(c: Wire, name: string): Promise<{ ok: true; flags: number } | { ok: false; type: number; message: string }> {
  const replies = await option(c, Opt.Go, nameData(name));
  const last = replies[replies.length - 1]!;
  if (last.type !== Rep.Ack) return { ok: false, type: last.type, message: last.data.toString('utf8') };
  const info = replies.find((r) => r.type === Rep.Info && r.data.readUInt16BE(0) === 0);
  assert.ok(info, 'GO sends NBD_INFO_EXPORT before its ACK');
  assert.equal(Number(info.data.readBigUInt64BE(2)), SIZE);
  return { ok: true, flags: info.data.readUInt16BE(10) };
}

async function open(port: number, name: string, structured: boolean): Promise<{ c: Wire; flags: number }> {
  const c = await Wire.connect(port);
  await hello(c);
  if (structured) assert.equal((await option(c, Opt.StructuredReply))[0]!.type, Rep.Ack);
  const g = await go(c, name);
  assert.ok(g.ok, `GO ${name}: ${JSON.stringify(g)}`);
  return { c, flags: g.flags };
}

function request(type: number, cookie: number, offset: number, length: number, flags = 0): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(BigInt(cookie), 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

async function simpleReply(c: Wire, dataLength = 0): Promise<{ errno: number; cookie: bigint; data: Buffer }> {
  const h = await c.take(16);
  assert.equal(h.readUInt32BE(0), SIMPLE_REPLY_MAGIC, 'a simple reply');
  const errno = h.readUInt32BE(4);
  return { errno, cookie: h.readBigUInt64BE(8), data: errno === 0 && dataLength ? await c.take(dataLength) : Buffer.alloc(0) };
}

async function chunk(c: Wire): Promise<Chunk> {
  const h = await c.take(20);
  assert.equal(h.readUInt32BE(0), STRUCTURED_REPLY_MAGIC, 'a structured reply chunk');
  return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), data: await c.take(h.readUInt32BE(16)) };
}

/** A structured read's chunks until DONE, with the bytes put together (holes as zeros). */
async function structuredRead(c: Wire, offset: number, length: number): Promise<{ cookie: bigint; bytes: Buffer; errno: number }> {
  const bytes = Buffer.alloc(length);
  let cookie = -1n;
  for (;;) {
    const ch = await chunk(c);
    cookie = ch.cookie;
    if (ch.type === ReplyType.Error) return { cookie, bytes, errno: ch.data.readUInt32BE(0) };
    if (ch.type === ReplyType.OffsetData) ch.data.copy(bytes, Number(ch.data.readBigUInt64BE(0)) - offset, 8);
    if (ch.flags & ReplyFlagDone) return { cookie, bytes, errno: 0 };
  }
}

// ---- the tests ----

describe('NbdServer: transmission edges', () => {
  it('answers a zero-length READ (structured: NONE with DONE; simple: an empty reply) and goes on serving', async () => {
    const ex = testExports();
    const { port } = await serve(ex);
    const s = await open(port, 'x', true);
    s.c.write(request(Cmd.Read, 41, 4096, 0));
    const ch = await chunk(s.c);
    assert.deepEqual({ flags: ch.flags, type: ch.type, cookie: ch.cookie, length: ch.data.length }, { flags: ReplyFlagDone, type: ReplyType.None, cookie: 41n, length: 0 });
    s.c.write(request(Cmd.Read, 42, 8192, 4096));
    const r = await structuredRead(s.c, 8192, 4096);
    assert.equal(r.cookie, 42n);
    assert.ok(r.bytes.equals(DISK.subarray(8192, 12288)), 'the read after the empty one');
    s.c.destroy();

    const p = await open(port, 'x', false);
    p.c.write(request(Cmd.Read, 43, SIZE, 0)); // at the very end: still in range
    const e = await simpleReply(p.c);
    assert.deepEqual({ errno: e.errno, cookie: e.cookie }, { errno: 0, cookie: 43n });
    p.c.write(request(Cmd.Read, 44, 0, 512));
    const d = await simpleReply(p.c, 512);
    assert.equal(d.cookie, 44n);
    assert.ok(d.data.equals(DISK.subarray(0, 512)));
    p.c.destroy();
  });

  it('answers a zero-length READ with DF (don\'t fragment) without an empty OFFSET_DATA chunk', async () => {
    const { port } = await serve(testExports());
    const s = await open(port, 'x', true);
    s.c.write(request(Cmd.Read, 51, 4096, 0, CmdFlag.Df));
    const ch = await chunk(s.c);
    assert.equal(ch.cookie, 51n);
    assert.ok(ch.flags & ReplyFlagDone);
    assert.ok(ch.type === ReplyType.None || (ch.type === ReplyType.OffsetData && ch.data.length >= 9), `chunk type ${ch.type} with ${ch.data.length} bytes of payload`);
    s.c.destroy();
  });

  it('answers the reads sent before NBD_CMD_DISC, in full, before it closes the connection', async () => {
    const ex = testExports({ delayMs: 200 });
    const { port } = await serve(ex);
    const s = await open(port, 'x', true);
    // Two reads that take 200 ms each, and DISC right behind them in the same packet.
    s.c.write(Buffer.concat([request(Cmd.Read, 1, 0, 65536), request(Cmd.Read, 2, 1 * MiB + 3, 100_000), request(Cmd.Disc, 3, 0, 0)]));
    const { bytes, closed } = await s.c.rest(5000);
    assert.ok(closed, 'the server closes the connection after DISC');
    // Parse what came: the two reads' chunks, complete.
    const got = new Map<bigint, Buffer>();
    let at = 0;
    while (at < bytes.length) {
      assert.ok(bytes.length - at >= 20, `a truncated chunk header at ${at} of ${bytes.length}`);
      assert.equal(bytes.readUInt32BE(at), STRUCTURED_REPLY_MAGIC);
      const type = bytes.readUInt16BE(at + 6);
      const cookie = bytes.readBigUInt64BE(at + 8);
      const len = bytes.readUInt32BE(at + 16);
      assert.equal(type, ReplyType.OffsetData, `chunk type ${type} for cookie ${cookie}`);
      assert.ok(at + 20 + len <= bytes.length, `the reply to cookie ${cookie} was cut short: ${bytes.length - at - 20} of ${len} bytes`);
      got.set(cookie, bytes.subarray(at + 28, at + 20 + len));
      at += 20 + len;
    }
    assert.deepEqual([...got.keys()].sort(), [1n, 2n], 'both reads are answered, nothing else');
    assert.ok(got.get(1n)!.equals(DISK.subarray(0, 65536)));
    assert.ok(got.get(2n)!.equals(DISK.subarray(MiB + 3, MiB + 3 + 100_000)));
    assert.equal(ex.counters.closed, ex.counters.opened, 'the device is closed');
    assert.equal(ex.counters.released, ex.counters.reads, 'every read released');
  });

  it('a client that never reads its replies and then leaves: the device closes, every read is released, server.close() resolves', async () => {
    const ex = testExports();
    const { server, port } = await serve(ex);
    const s = await open(port, 'x', true);
    s.c.sock.pause(); // never reads replies
    const reqs: Buffer[] = [];
    for (let i = 0; i < 16; i++) reqs.push(request(Cmd.Read, i, (i % 2) * MiB, 32 * MiB));
    s.c.write(Buffer.concat(reqs));
    await sleep(800);
    assert.equal(server.connections().length, 1);
    s.c.destroy();
    const t0 = Date.now();
    while (ex.counters.closed < ex.counters.opened && Date.now() - t0 < 5000) await sleep(20);
    assert.equal(ex.counters.closed, 1, 'the device is closed once the client is gone');
    assert.ok(ex.counters.reads >= 1, 'reads were made');
    assert.equal(ex.counters.released, ex.counters.reads, 'every read was released');
    await closesWithin(server, 3000);
  });

  it('server.close() resolves within seconds while a connected client does not read its replies', async () => {
    const ex = testExports();
    const { server, port } = await serve(ex);
    const s = await open(port, 'x', false);
    s.c.sock.pause();
    const reqs: Buffer[] = [];
    for (let i = 0; i < 16; i++) reqs.push(request(Cmd.Read, i, 0, 32 * MiB));
    s.c.write(Buffer.concat(reqs));
    await sleep(800);
    await closesWithin(server, 3000);
    assert.equal(ex.counters.closed, 1);
    assert.equal(ex.counters.released, ex.counters.reads);
    s.c.destroy();
  });

  it('a read-only export refuses WRITE and WRITE_ZEROES with EPERM and a read past the end with EINVAL, and goes on', async () => {
    const ex = testExports();
    const { port } = await serve(ex);
    const { c, flags } = await open(port, 'x', false);
    assert.ok(flags & TFlag.ReadOnly, 'advertised read-only');
    const payload = Buffer.alloc(4096, 0x5a);
    c.write(Buffer.concat([request(Cmd.Write, 1, 0, payload.length), payload]));
    assert.deepEqual(await simpleReply(c), { errno: Errno.EPERM, cookie: 1n, data: Buffer.alloc(0) });
    c.write(request(Cmd.WriteZeroes, 2, 0, 4096));
    assert.deepEqual(await simpleReply(c), { errno: Errno.EPERM, cookie: 2n, data: Buffer.alloc(0) });
    c.write(request(Cmd.Read, 3, SIZE - 100, 101)); // one byte past the end
    assert.deepEqual(await simpleReply(c), { errno: Errno.EINVAL, cookie: 3n, data: Buffer.alloc(0) });
    c.write(request(Cmd.Read, 4, SIZE, 1));
    assert.equal((await simpleReply(c)).errno, Errno.EINVAL);
    // Nothing was written; the connection still serves.
    c.write(request(Cmd.Read, 5, 0, 4096));
    const r = await simpleReply(c, 4096);
    assert.equal(r.errno, 0);
    assert.ok(r.data.equals(DISK.subarray(0, 4096)));
    c.destroy();

    // With structured replies the read error is an error chunk.
    const s = await open(port, 'x', true);
    s.c.write(request(Cmd.Read, 6, SIZE - 10, 4096));
    const e = await structuredRead(s.c, SIZE - 10, 4096);
    assert.deepEqual({ cookie: e.cookie, errno: e.errno }, { cookie: 6n, errno: Errno.EINVAL });
    s.c.write(Buffer.concat([request(Cmd.Write, 7, 0, 16), Buffer.alloc(16)]));
    assert.equal((await simpleReply(s.c)).errno, Errno.EPERM);
    s.c.write(request(Cmd.Read, 8, SIZE - 10, 10));
    const ok = await structuredRead(s.c, SIZE - 10, 10);
    assert.equal(ok.errno, 0);
    assert.ok(ok.bytes.equals(DISK.subarray(SIZE - 10)));
    s.c.destroy();
  });

  it('a writable export takes writes and refuses one past the end (ENOSPC)', async () => {
    const { port } = await serve(testExports());
    const { c, flags } = await open(port, 'w', false);
    assert.equal(flags & TFlag.ReadOnly, 0);
    const payload = Buffer.alloc(1000, 0x77);
    c.write(Buffer.concat([request(Cmd.Write, 1, 5000, payload.length, CmdFlag.Fua), payload]));
    assert.equal((await simpleReply(c)).errno, 0);
    c.write(request(Cmd.Read, 2, 4999, 1002));
    const r = await simpleReply(c, 1002);
    assert.ok(r.data.equals(Buffer.concat([DISK.subarray(4999, 5000), payload, DISK.subarray(6000, 6001)])));
    c.write(Buffer.concat([request(Cmd.Write, 3, SIZE - 10, 20), Buffer.alloc(20)]));
    assert.equal((await simpleReply(c)).errno, Errno.ENOSPC);
    c.write(request(Cmd.WriteZeroes, 4, SIZE, 1));
    assert.equal((await simpleReply(c)).errno, Errno.ENOSPC);
    c.destroy();
  });
});

describe('NbdServer: handshake edges', () => {
  it('GO on an export whose open() fails gets an error reply, not an ACK, and the client may choose another export', async () => {
    const ex = testExports();
    const { port, errors } = await serve(ex);
    const c = await Wire.connect(port);
    await hello(c);
    const g = await go(c, 'broken');
    assert.equal(g.ok, false, 'no ACK for an export that cannot open');
    if (!g.ok) {
      assert.ok(g.type >= 2 ** 31, `an error reply (type ${g.type})`);
      assert.equal(g.type, Rep.ErrPlatform);
      assert.doesNotMatch(g.message, /overlay/, 'the reason stays in the server log');
    }
    assert.ok(errors.some((e) => /no space for an overlay/.test(String(e))), 'the failure is reported to onError');
    // The connection goes on: an unknown export, then one that opens.
    const u = await go(c, 'nope');
    assert.ok(!u.ok && u.type === Rep.ErrUnknown);
    const x = await go(c, 'x');
    assert.ok(x.ok);
    c.write(request(Cmd.Read, 9, 123, 456));
    const r = await simpleReply(c, 456);
    assert.equal(r.cookie, 9n);
    assert.ok(r.data.equals(DISK.subarray(123, 579)));
    c.destroy();
  });

  it('SET_META_CONTEXT that fails after one that succeeded leaves no context: BLOCK_STATUS answers EINVAL', async () => {
    const { port } = await serve(testExports());
    const blockStatus = async (setups: { name: string; queries: string[] | Buffer; ok: boolean }[]): Promise<Chunk> => {
      const c = await Wire.connect(port);
      await hello(c);
      assert.equal((await option(c, Opt.StructuredReply))[0]!.type, Rep.Ack);
      for (const s of setups) {
        const replies = await option(c, Opt.SetMetaContext, Buffer.isBuffer(s.queries) ? s.queries : metaData(s.name, s.queries));
        const last = replies[replies.length - 1]!;
        if (s.ok) {
          assert.equal(last.type, Rep.Ack);
          assert.ok(replies.some((r) => r.type === Rep.MetaContext && r.data.subarray(4).toString() === 'base:allocation'));
        } else {
          assert.ok(last.type >= 2 ** 31, `SET_META_CONTEXT ${JSON.stringify(s)} fails (${last.type})`);
        }
      }
      assert.ok((await go(c, 'x')).ok);
      c.write(request(Cmd.BlockStatus, 77, 0, MiB));
      const ch = await chunk(c);
      assert.equal(ch.cookie, 77n);
      assert.ok(ch.flags & ReplyFlagDone);
      // The connection goes on after the answer.
      c.write(request(Cmd.Read, 78, 0, 10));
      assert.equal((await structuredRead(c, 0, 10)).errno, 0);
      c.destroy();
      return ch;
    };
    // Control: one successful SET, BLOCK_STATUS works.
    const ok = await blockStatus([{ name: 'x', queries: ['base:allocation'], ok: true }]);
    assert.equal(ok.type, ReplyType.BlockStatus);
    assert.equal(ok.data.readUInt32BE(0), 1, 'the context id the SET gave');
    // A later SET for an unknown export fails: no context any more.
    const unknown = await blockStatus([{ name: 'x', queries: ['base:allocation'], ok: true }, { name: 'nope', queries: ['base:allocation'], ok: false }]);
    assert.equal(unknown.type, ReplyType.Error);
    assert.equal(unknown.data.readUInt32BE(0), Errno.EINVAL);
    // A later malformed SET fails: no context any more.
    const malformed = await blockStatus([{ name: 'x', queries: ['base:allocation'], ok: true }, { name: 'x', queries: Buffer.from([0, 0, 0, 9, 0x78]), ok: false }]);
    assert.equal(malformed.type, ReplyType.Error);
    assert.equal(malformed.data.readUInt32BE(0), Errno.EINVAL);
  });

  it('a client flooding the handshake without reading replies is not buffered without bound; others are still served', async () => {
    // NBD_OPT_LIST of 1024 names of 4000 bytes: each reply is about 4 MiB. Unbounded, 1000 of
    // them would queue 4 GiB in the server.
    const names = Array.from({ length: 1024 }, (_, i) => `${String(i).padStart(4, '0')}${'n'.repeat(3996)}`);
    const ex = testExports({ listNames: names });
    const { server, port } = await serve(ex);
    const rss0 = process.memoryUsage().rss;
    const flood = await Wire.connect(port);
    flood.sock.pause();
    await sleep(50);
    flood.write(Buffer.from([0, 0, 0, 3]));
    flood.write(Buffer.concat(Array.from({ length: 999 }, () => optBytes(Opt.List))));
    await sleep(1500);
    const rss1 = process.memoryUsage().rss;
    assert.ok(ex.listCalls < 40, `the server went on answering LIST for a client that reads nothing: ${ex.listCalls} replies (~${ex.listCalls * 4} MiB)`);
    assert.ok(rss1 - rss0 < 200 * MiB, `rss grew by ${((rss1 - rss0) / MiB).toFixed(0)} MiB`);
    // Another client is served meanwhile.
    const other = await open(port, 'x', true);
    other.c.write(request(Cmd.Read, 1, 0, 4096));
    assert.ok((await structuredRead(other.c, 0, 4096)).bytes.equals(DISK.subarray(0, 4096)));
    other.c.destroy();
    flood.destroy();
    await closesWithin(server, 3000);
  });

  it('a client sending unsupported options without end is cut off; memory stays bounded', async () => {
    const ex = testExports();
    const { port } = await serve(ex);
    const rss0 = process.memoryUsage().rss;
    const flood = await Wire.connect(port);
    flood.sock.pause();
    flood.write(Buffer.from([0, 0, 0, 1]));
    const batch = Buffer.concat(Array.from({ length: 65536 }, () => optBytes(99))); // 1 MiB of options
    const t0 = Date.now();
    let sent = 0;
    while (!flood.closedAt && !flood.sock.destroyed && Date.now() - t0 < 3000 && sent < 256 * MiB) {
      const more = flood.sock.write(batch);
      sent += batch.length;
      if (!more) await within(Promise.race([new Promise((r) => flood.sock.once('drain', r)), flood.closed]), 200, null);
    }
    const closed = await within(flood.closed.then(() => true), 3000, false);
    assert.ok(closed, `the server still holds a connection that sent ${(sent / MiB).toFixed(0)} MiB of options`);
    const rss1 = process.memoryUsage().rss;
    assert.ok(rss1 - rss0 < 200 * MiB, `rss grew by ${((rss1 - rss0) / MiB).toFixed(0)} MiB`);
    const other = await open(port, 'x', false);
    other.c.write(request(Cmd.Read, 1, 0, 16));
    assert.equal((await simpleReply(other.c, 16)).errno, 0);
    other.c.destroy();
  });
});

describe('NbdServer with TLS', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'haven-nbd-server-tls-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const cert = makeLoopbackCert(dir);
  const ctx = tls.createSecureContext({ cert: readFileSync(cert.certFile), key: readFileSync(cert.keyFile) });

  it('serves after STARTTLS (the control), and refuses everything before it', async () => {
    const { port } = await serve(testExports(), { tls: ctx });
    const c = await Wire.connect(port);
    await hello(c);
    const refused = await option(c, Opt.List);
    assert.equal(refused[0]!.type, Rep.ErrTlsReqd);
    assert.equal((await option(c, Opt.StartTls))[0]!.type, Rep.Ack);
    await c.startTls();
    const list = await option(c, Opt.List);
    assert.equal(list[list.length - 1]!.type, Rep.Ack);
    assert.ok((await go(c, 'x')).ok);
    c.write(request(Cmd.Read, 1, 100, 100));
    assert.ok((await simpleReply(c, 100)).data.equals(DISK.subarray(100, 200)));
    c.destroy();
  });

  it('STARTTLS with plaintext right behind it in the same packet: the plaintext is never answered, the connection is dropped', async () => {
    const { port } = await serve(testExports(), { tls: ctx });
    const c = await Wire.connect(port);
    const h = await c.take(18);
    assert.equal(h.readBigUInt64BE(0), 0x4e42444d41474943n);
    // STARTTLS, and in the same segment an NBD_OPT_LIST and a GO (what a man in the middle could append).
    c.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), optBytes(Opt.StartTls), optBytes(Opt.List), optBytes(Opt.Go, nameData('x'))]));
    const { bytes, closed } = await c.rest(3000);
    assert.ok(closed, 'the server drops the connection');
    // At most the STARTTLS ACK came (in clear, before the server saw what followed); nothing else.
    assert.ok(bytes.length === 0 || bytes.length === 20, `the server sent ${bytes.length} bytes: ${bytes.toString('hex')}`);
    if (bytes.length === 20) {
      assert.equal(bytes.readUInt32BE(8), Opt.StartTls);
      assert.equal(bytes.readUInt32BE(12), Rep.Ack);
    }
  });
});
