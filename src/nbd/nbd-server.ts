/**
 * An NBD server (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md): how Haven
 * serves a backup as a disk (`haven nbd`, the service's exports, a live restore's volume).
 *
 * Written by hand, like the client (src/qemu/nbd-client.ts): npm has no maintained NBD server, and
 * the usual servers (qemu-nbd, nbdkit) would need the backup as a file or a plugin in C, Python or
 * OCaml; serving from the engine itself keeps one cache, one read lock and one digest check per
 * chunk. What is implemented:
 *
 * - the fixed-newstyle handshake: NBD_OPT_GO and NBD_OPT_INFO (export size, flags, block sizes),
 *   NBD_OPT_EXPORT_NAME, NBD_OPT_LIST (or refused by policy where export names are secrets),
 *   NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT with
 *   `base:allocation`, NBD_OPT_STARTTLS (required when the server has TLS), NBD_OPT_ABORT;
 * - transmission: READ (structured replies with OFFSET_HOLE for holes, so a client never receives
 *   a hole's zeros; DF honoured; simple replies for clients without structured replies), WRITE,
 *   WRITE_ZEROES (EPERM on read-only exports), FLUSH, BLOCK_STATUS, CACHE, DISC (requests still
 *   running are answered first); requests run concurrently (up to MAX_IN_FLIGHT and
 *   MAX_BYTES_IN_FLIGHT per connection), replies go out as each is ready. A client that does not
 *   read its replies stops being read from (handshake and transmission alike).
 *
 * A device is opened per connection (a writable export's copy-on-write overlay is the connection's
 * own) and closed when the connection ends.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import { AppError, ErrorCode, isAppError } from '../domain/errors.ts';
import type { ImageExtent, ImagePiece, ImageRead } from '../engine/backup-image.ts';
import type { ListenSpec } from '../domain/listen.ts';
import {
  BASE_ALLOCATION,
  Cmd,
  CmdFlag,
  Errno,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  MAX_REQUEST_BYTES,
  NBDMAGIC,
  Opt,
  OPT_REPLY_MAGIC,
  Rep,
  ReplyFlagDone,
  ReplyType,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STATE_HOLE,
  STATE_ZERO,
  STRUCTURED_REPLY_MAGIC,
  TFlag,
} from './protocol.ts';

/** A disk as one connection sees it. */
export interface NbdDevice {
  readonly sizeBytes: number;
  /** The pieces of [offset, offset + length): data, or holes (zeros) without data; released once sent. */
  read(offset: number, length: number, signal?: AbortSignal): Promise<ImageRead>;
  /** Data and holes over [offset, offset + length). */
  extents(offset: number, length: number): Promise<ImageExtent[]>;
  /** Present on writable devices only. */
  write?(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes?(offset: number, length: number): Promise<void>;
  flush?(): Promise<void>;
  /** The connection has ended. */
  close(): Promise<void>;
}

/**
 * A device shared by every connection to one export (a kept overlay, a live restore): each
 * connection gets its methods, and its end runs `onClose` (default: nothing), never the device's close.
 */
export function sharedDevice(d: NbdDevice, onClose: () => Promise<void> = async () => undefined): NbdDevice {
  return {
    sizeBytes: d.sizeBytes,
    read: (o, l, s) => d.read(o, l, s),
    extents: (o, l) => d.extents(o, l),
    ...(d.write ? { write: (o: number, data: Uint8Array) => d.write!(o, data) } : {}),
    ...(d.writeZeroes ? { writeZeroes: (o: number, l: number) => d.writeZeroes!(o, l) } : {}),
    ...(d.flush ? { flush: () => d.flush!() } : {}),
    close: onClose,
  };
}

/** One export, as the handshake describes it before a connection opens its device. */
export interface NbdExport {
  readonly name: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Every connection sees the others' writes at once (always true of a read-only export). */
  readonly multiConn: boolean;
  open(): Promise<NbdDevice>;
}

export interface NbdExports {
  /** The export of that name, or null (unknown, expired, or not to be told apart from unknown). */
  find(name: string): Promise<NbdExport | null>;
  /** The names NBD_OPT_LIST shows, or null to refuse listing (export names that are secrets). */
  list(): Promise<string[] | null>;
}

export interface NbdServerOptions {
  /** With TLS, every client must NBD_OPT_STARTTLS before anything else (nothing is served in clear); a function is asked at each handshake (certificates reloaded). */
  tls?: tls.SecureContext | (() => tls.SecureContext);
  /** Called with what went wrong on a connection (never with data). */
  onError?: (err: unknown, remote: string) => void;
  /** Called as devices open and close (for progress, metrics). */
  onConnection?: (event: 'open' | 'close', exportName: string, remote: string) => void;
}

export { parseListen, type ListenSpec } from '../domain/listen.ts';

/** Requests handled at once per connection; more wait in the socket. */
const MAX_IN_FLIGHT = 64;
/** Unanswered reply bytes queued on a socket before the connection stops taking requests. */
const WRITE_HIGH_WATER = 16 * 1024 * 1024;
/** Bytes the requests running on one connection read or write, at most (a request may take MAX_REQUEST_BYTES). */
const MAX_BYTES_IN_FLIGHT = 32 * 1024 * 1024;
/** Option replies queued before the server waits for the client to read them. */
const OPTION_REPLY_HIGH_WATER = 256 * 1024;
/** Options one handshake may send. */
const MAX_OPTIONS = 1000;
/** Connections one server holds at once; more are refused. */
const MAX_CONNECTIONS = 512;
/** Extents one BLOCK_STATUS reply describes at most. */
const MAX_EXTENTS = 16384;
/** Longest option payload taken (export names are short; a longer one is refused). */
const MAX_OPTION_BYTES = 64 * 1024;
/** The handshake must end within this. */
const HANDSHAKE_TIMEOUT_MS = 30_000;
const META_ID_BASE_ALLOCATION = 1;

class ProtocolError extends Error {}
class Closed extends Error {}

/** Reads exact byte counts from a socket that may be swapped (STARTTLS). */
class Reader {
  private bufs: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: unknown) => void } | null = null;
  private ended: unknown = null;
  private sock: net.Socket;
  private readonly onData = (b: Buffer): void => {
    this.bufs.push(b);
    this.have += b.length;
    if (this.have > 2 * MAX_REQUEST_BYTES) this.sock.pause();
    this.wake();
  };
  private readonly onEnd = (err?: unknown): void => {
    this.ended ??= err instanceof Error ? err : new Closed('connection closed');
    this.wake();
  };

  constructor(sock: net.Socket) {
    this.sock = sock;
    this.attach(sock);
  }

  private attach(sock: net.Socket): void {
    this.sock = sock;
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onEnd);
  }

  /** Moves to another socket (the TLS one over the same connection). */
  swap(sock: net.Socket): void {
    const old = this.sock;
    old.off('data', this.onData);
    old.off('end', this.onEnd);
    old.off('close', this.onEnd);
    old.off('error', this.onEnd);
    this.attach(sock);
  }

  get buffered(): number {
    return this.have;
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('concurrent reads'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.have >= w.n) {
      this.waiter = null;
      const all = this.bufs.length === 1 ? this.bufs[0]! : Buffer.concat(this.bufs, this.have);
      const out = all.subarray(0, w.n);
      const rest = all.subarray(w.n);
      this.bufs = rest.length ? [rest] : [];
      this.have = rest.length;
      if (this.have <= MAX_REQUEST_BYTES && this.sock.isPaused()) this.sock.resume();
      w.resolve(out);
    } else if (this.ended) {
      this.waiter = null;
      w.reject(this.ended);
    }
  }
}

export class NbdServer {
  private readonly exports: NbdExports;
  private readonly opts: NbdServerOptions;
  private readonly servers: net.Server[] = [];
  private readonly conns = new Set<Connection>();

  constructor(exports: NbdExports, opts: NbdServerOptions = {}) {
    this.exports = exports;
    this.opts = opts;
  }

  /** Starts listening; resolves to the bound address (the real port when 0 was asked for). */
  async listen(spec: ListenSpec): Promise<ListenSpec> {
    const server = net.createServer({ noDelay: true }, (sock) => {
      if (this.conns.size >= MAX_CONNECTIONS) {
        sock.destroy();
        return;
      }
      const conn = new Connection(sock, this.exports, this.opts);
      this.conns.add(conn);
      void conn.run().finally(() => this.conns.delete(conn));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in spec) server.listen(spec.path, resolve);
      else server.listen(spec.port, spec.host, resolve);
    });
    server.on('error', (err) => this.opts.onError?.(err, 'listener'));
    this.servers.push(server);
    const addr = server.address();
    if (addr && typeof addr === 'object') return { host: addr.address, port: addr.port };
    return spec;
  }

  /** Connections open now, with their export's name. */
  connections(): { exportName: string; remote: string }[] {
    return [...this.conns].filter((c) => c.exportName !== null).map((c) => ({ exportName: c.exportName!, remote: c.remote }));
  }

  /** Ends the connections to the exports `which` selects (an export that ended or expired). */
  async disconnect(which: (exportName: string) => boolean): Promise<void> {
    await Promise.all([...this.conns].filter((c) => c.exportName !== null && which(c.exportName)).map((c) => c.end()));
  }

  /** Stops listening and ends every connection (a listener's close alone would wait for the clients to leave). */
  async close(): Promise<void> {
    const closed = Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    await Promise.all([...this.conns].map((c) => c.end()));
    await closed;
  }
}

class Connection {
  private sock: net.Socket;
  private readonly reader: Reader;
  readonly remote: string;
  exportName: string | null = null;
  private structured = false;
  private baseAllocation = false;
  private device: NbdDevice | null = null;
  private readonly abort = new AbortController();
  private inFlight = 0;
  private bytesInFlight = 0;
  private slotWaiters: (() => void)[] = [];
  private closing = false;
  private done: Promise<void> | null = null;
  private readonly exports: NbdExports;
  private readonly opts: NbdServerOptions;
  private isTls = false;

  constructor(sock: net.Socket, exports: NbdExports, opts: NbdServerOptions) {
    this.sock = sock;
    this.exports = exports;
    this.opts = opts;
    this.remote = `${sock.remoteAddress ?? 'unix'}:${sock.remotePort ?? ''}`;
    this.reader = new Reader(sock);
    sock.setNoDelay?.(true);
  }

  run(): Promise<void> {
    this.done ??= this.serve();
    return this.done;
  }

  async end(): Promise<void> {
    this.closing = true;
    this.abort.abort(new Closed('export ended'));
    this.sock.destroy();
    await this.done?.catch(() => undefined);
  }

  private async serve(): Promise<void> {
    const timer = setTimeout(() => this.sock.destroy(), HANDSHAKE_TIMEOUT_MS);
    let graceful = false;
    try {
      const chosen = await this.handshake().finally(() => clearTimeout(timer));
      if (!chosen) return;
      this.exportName = chosen.exp.name;
      this.device = chosen.device;
      this.opts.onConnection?.('open', chosen.exp.name, this.remote);
      graceful = await this.transmit(this.device, chosen.exp);
    } catch (err) {
      if (!(err instanceof Closed) && !this.closing && (err as NodeJS.ErrnoException).code !== 'ECONNRESET') this.opts.onError?.(err, this.remote);
    } finally {
      // NBD_CMD_DISC: every request still running is answered first; otherwise they are abandoned.
      if (!graceful) this.abort.abort(new Closed('connection ended'));
      // Requests still running finish before the device closes (a write must not land after).
      while (this.inFlight > 0) await new Promise<void>((r) => this.slotWaiters.push(r));
      if (this.device) {
        await this.device.close().catch((err: unknown) => this.opts.onError?.(err, this.remote));
        this.opts.onConnection?.('close', this.exportName!, this.remote);
      }
      if (graceful && !this.sock.destroyed) {
        // The replies queued go out, then the connection ends (TLS shut down cleanly).
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 10_000);
          this.sock.end(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
      this.abort.abort(new Closed('connection ended'));
      this.sock.destroy();
    }
  }

  /** Waits until the socket has sent what is queued down to `bytes`, or is gone. */
  private async drained(bytes: number): Promise<void> {
    while (this.sock.writableLength > bytes && !this.sock.destroyed) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.sock.off('drain', done);
          this.sock.off('close', done);
          resolve();
        };
        this.sock.once('drain', done);
        this.sock.once('close', done);
      });
    }
    if (this.sock.destroyed) throw new Closed('connection closed');
  }

  // ---- handshake ----

  private write(...parts: Uint8Array[]): void {
    this.writeThen(parts);
  }

  /** Writes `parts` together; `done` runs once the socket no longer needs them (sent, or failed). */
  private writeThen(parts: Uint8Array[], done?: () => void): void {
    if (this.sock.destroyed) {
      done?.();
      return;
    }
    // Corked until this turn of the event loop ends: the replies that become ready together (a
    // decode task lands several chunks) leave in one writev, so the kernel and the client are woken
    // once per batch, not once per reply.
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      setImmediate(() => this.flushWrites());
    }
    for (let i = 0; i < parts.length; i++) {
      if (i === parts.length - 1 && done) this.sock.write(parts[i]!, () => done());
      else this.sock.write(parts[i]!);
    }
  }

  private corked = false;

  /** Sends what writeThen() has queued now. */
  private flushWrites(): void {
    if (!this.corked) return;
    this.corked = false;
    this.sock.uncork();
  }

  private optReply(opt: number, type: number, data: Uint8Array = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    this.write(h, data);
  }

  private optError(opt: number, type: number, message: string): void {
    this.optReply(opt, type, Buffer.from(message, 'utf8'));
  }

  /**
   * Runs the option haggling; resolves to the export chosen (GO or EXPORT_NAME) with its device
   * opened for this connection, or null (aborted).
   */
  private async handshake(): Promise<{ exp: NbdExport; device: NbdDevice } | null> {
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    this.write(hello);
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    if (!(clientFlags & FLAG_FIXED_NEWSTYLE)) throw new ProtocolError('client does not speak fixed newstyle');
    const noZeroes = (clientFlags & FLAG_NO_ZEROES) !== 0;
    for (let options = 0; ; options++) {
      // A client that sends options without reading the replies is not let to pile them up here.
      await this.drained(OPTION_REPLY_HIGH_WATER);
      if (options >= MAX_OPTIONS) throw new ProtocolError('too many options');
      const h = await this.reader.read(16);
      if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError('bad option magic');
      const opt = h.readUInt32BE(8);
      const len = h.readUInt32BE(12);
      if (len > MAX_OPTION_BYTES) {
        if (opt === Opt.ExportName) throw new ProtocolError('export name too long');
        // Skip what the client sends, in pieces, and refuse.
        let left = len;
        while (left > 0) {
          const n = Math.min(left, 1 << 20);
          await this.reader.read(n);
          left -= n;
        }
        this.optError(opt, Rep.ErrTooBig, 'option too long');
        continue;
      }
      const data = len ? await this.reader.read(len) : Buffer.alloc(0);
      const tlsWanted = this.opts.tls !== undefined && !this.isTls;
      if (opt === Opt.Abort) {
        this.optReply(opt, Rep.Ack);
        return null;
      }
      if (opt === Opt.StartTls) {
        if (this.opts.tls === undefined) this.optError(opt, Rep.ErrPolicy, 'this server has no TLS');
        else if (this.isTls) this.optError(opt, Rep.ErrInvalid, 'TLS is already on');
        else if (len !== 0) this.optError(opt, Rep.ErrInvalid, 'STARTTLS takes no data');
        else {
          this.optReply(opt, Rep.Ack);
          await this.startTls();
        }
        continue;
      }
      if (tlsWanted) {
        if (opt === Opt.ExportName) throw new ProtocolError('client asked for an export without TLS');
        this.optError(opt, Rep.ErrTlsReqd, 'this server requires TLS (NBD_OPT_STARTTLS) first');
        continue;
      }
      switch (opt) {
        case Opt.ExportName: {
          const exp = await this.exports.find(data.toString('utf8'));
          if (!exp) throw new ProtocolError('unknown export'); // the protocol has no other answer here
          const device = await exp.open();
          const r = Buffer.alloc(noZeroes ? 10 : 134);
          r.writeBigUInt64BE(BigInt(exp.sizeBytes), 0);
          r.writeUInt16BE(this.transmissionFlags(exp), 8);
          this.write(r);
          return { exp, device };
        }
        case Opt.List: {
          if (len !== 0) {
            this.optError(opt, Rep.ErrInvalid, 'LIST takes no data');
            break;
          }
          const names = await this.exports.list();
          if (names === null) {
            this.optError(opt, Rep.ErrPolicy, 'export names are not listed here');
            break;
          }
          for (const name of names) {
            const n = Buffer.from(name, 'utf8');
            const d = Buffer.alloc(4 + n.length);
            d.writeUInt32BE(n.length, 0);
            n.copy(d, 4);
            this.optReply(opt, Rep.Server, d);
          }
          this.optReply(opt, Rep.Ack);
          break;
        }
        case Opt.StructuredReply:
          if (len !== 0) this.optError(opt, Rep.ErrInvalid, 'STRUCTURED_REPLY takes no data');
          else {
            this.structured = true;
            this.optReply(opt, Rep.Ack);
          }
          break;
        case Opt.ListMetaContext:
        case Opt.SetMetaContext:
          await this.metaContext(opt, data);
          break;
        case Opt.Info:
        case Opt.Go: {
          const parsed = parseNameAndInfos(data);
          if (!parsed) {
            this.optError(opt, Rep.ErrInvalid, 'malformed request');
            break;
          }
          const exp = await this.exports.find(parsed.name);
          if (!exp) {
            this.optError(opt, Rep.ErrUnknown, `no export ${JSON.stringify(parsed.name)}`);
            break;
          }
          const info = Buffer.alloc(12);
          info.writeUInt16BE(Info.Export, 0);
          info.writeBigUInt64BE(BigInt(exp.sizeBytes), 2);
          info.writeUInt16BE(this.transmissionFlags(exp), 10);
          this.optReply(opt, Rep.Info, info);
          // Any alignment is served (a write of part of a block is merged in): minimum 1.
          const bs = Buffer.alloc(14);
          bs.writeUInt16BE(Info.BlockSize, 0);
          bs.writeUInt32BE(1, 2);
          bs.writeUInt32BE(4096, 6);
          bs.writeUInt32BE(MAX_REQUEST_BYTES, 10);
          this.optReply(opt, Rep.Info, bs);
          if (parsed.infos.includes(Info.Name)) {
            const n = Buffer.from(exp.name, 'utf8');
            this.optReply(opt, Rep.Info, Buffer.concat([Buffer.from([0, Info.Name]), n]));
          }
          if (opt === Opt.Go) {
            // Opened before the ACK: a device that cannot open (no space for an overlay) is an error reply, not a hang-up.
            let device: NbdDevice;
            try {
              device = await exp.open();
            } catch (err) {
              this.opts.onError?.(err, this.remote);
              this.optError(opt, Rep.ErrPlatform, 'the export cannot be opened now');
              break;
            }
            this.optReply(opt, Rep.Ack);
            return { exp, device };
          }
          this.optReply(opt, Rep.Ack);
          break;
        }
        default:
          this.optError(opt, Rep.ErrUnsup, `option ${opt} is not supported`);
      }
    }
  }

  private async startTls(): Promise<void> {
    // Everything after the ACK must come through TLS: bytes the client sent in clear behind the
    // option would otherwise be taken as if they had.
    if (this.reader.buffered > 0) throw new ProtocolError('data sent in clear after STARTTLS');
    const raw = this.sock;
    this.flushWrites(); // the ACK, in clear, before TLS takes over the socket
    const ctx = this.opts.tls!;
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: typeof ctx === 'function' ? ctx() : ctx, requestCert: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secure', resolve);
      secure.once('error', reject);
      raw.once('close', () => reject(new Closed('connection closed during TLS')));
    });
    this.reader.swap(secure);
    this.sock = secure;
    this.isTls = true;
  }

  private async metaContext(opt: number, data: Buffer): Promise<void> {
    // A SET replaces the contexts chosen before, also when it fails.
    if (opt === Opt.SetMetaContext) this.baseAllocation = false;
    let at = 0;
    const u32 = (): number | null => (at + 4 <= data.length ? ((at += 4), data.readUInt32BE(at - 4)) : null);
    const nameLen = u32();
    if (nameLen === null || at + nameLen > data.length) return this.optError(opt, Rep.ErrInvalid, 'malformed request');
    const name = data.subarray(at, at + nameLen).toString('utf8');
    at += nameLen;
    const n = u32();
    if (n === null) return this.optError(opt, Rep.ErrInvalid, 'malformed request');
    const queries: string[] = [];
    for (let i = 0; i < n; i++) {
      const l = u32();
      if (l === null || at + l > data.length) return this.optError(opt, Rep.ErrInvalid, 'malformed request');
      queries.push(data.subarray(at, at + l).toString('utf8'));
      at += l;
    }
    if (opt === Opt.SetMetaContext && !this.structured) return this.optError(opt, Rep.ErrInvalid, 'metadata contexts need structured replies');
    if (!(await this.exports.find(name))) return this.optError(opt, Rep.ErrUnknown, `no export ${JSON.stringify(name)}`);
    const wanted = opt === Opt.ListMetaContext && queries.length === 0 ? true : queries.some((q) => q === BASE_ALLOCATION || (opt === Opt.ListMetaContext && q === 'base:'));
    if (opt === Opt.SetMetaContext) this.baseAllocation = wanted;
    if (wanted) {
      const c = Buffer.from(BASE_ALLOCATION, 'utf8');
      const d = Buffer.alloc(4 + c.length);
      d.writeUInt32BE(opt === Opt.SetMetaContext ? META_ID_BASE_ALLOCATION : 0, 0);
      c.copy(d, 4);
      this.optReply(opt, Rep.MetaContext, d);
    }
    this.optReply(opt, Rep.Ack);
  }

  private transmissionFlags(exp: NbdExport): number {
    let f = TFlag.HasFlags | TFlag.SendCache;
    if (exp.readOnly) f |= TFlag.ReadOnly;
    else f |= TFlag.SendFlush | TFlag.SendFua | TFlag.SendWriteZeroes;
    if (this.structured) f |= TFlag.SendDf;
    if (exp.readOnly || exp.multiConn) f |= TFlag.CanMultiConn;
    return f;
  }

  // ---- transmission ----

  /** Serves requests until the client disconnects; true when it said so (NBD_CMD_DISC). */
  private async transmit(dev: NbdDevice, exp: NbdExport): Promise<boolean> {
    for (;;) {
      // Bounded: requests running, the bytes they will send, and replies not yet taken by the client.
      while (this.inFlight >= MAX_IN_FLIGHT || this.bytesInFlight >= MAX_BYTES_IN_FLIGHT || this.sock.writableLength > WRITE_HIGH_WATER) {
        if (this.inFlight === 0) await this.drained(WRITE_HIGH_WATER);
        else await new Promise<void>((r) => this.slotWaiters.push(r));
      }
      const h = await this.reader.read(28);
      if (h.readUInt32BE(0) !== REQUEST_MAGIC) throw new ProtocolError('bad request magic');
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const cookie = h.subarray(8, 16);
      const offset = Number(h.readBigUInt64BE(16));
      const length = h.readUInt32BE(24);
      if (type === Cmd.Disc) return true;
      let payload: Buffer | null = null;
      if (type === Cmd.Write) {
        if (length > MAX_REQUEST_BYTES) throw new ProtocolError('write larger than the maximum request');
        payload = await this.reader.read(length);
      }
      const cost = type === Cmd.Read || type === Cmd.Write ? Math.min(length, MAX_REQUEST_BYTES) : 0;
      this.inFlight++;
      this.bytesInFlight += cost;
      void this.handle(dev, exp, type, flags, Buffer.from(cookie), offset, length, payload).finally(() => {
        this.inFlight--;
        this.bytesInFlight -= cost;
        const w = this.slotWaiters.shift();
        w?.();
      });
    }
  }

  private async handle(dev: NbdDevice, exp: NbdExport, type: number, flags: number, cookie: Buffer, offset: number, length: number, payload: Buffer | null): Promise<void> {
    const inRange = offset + length <= dev.sizeBytes;
    try {
      switch (type) {
        case Cmd.Read:
        case Cmd.Cache: {
          if (!inRange || length > MAX_REQUEST_BYTES) return this.replyError(type, cookie, Errno.EINVAL, 'request outside the export or too long');
          const r = await dev.read(offset, length, this.abort.signal);
          if (type === Cmd.Cache) {
            r.release();
            return this.simple(cookie, 0);
          }
          // The pieces' bytes are the cache's: released once the socket has taken them.
          return this.replyRead(cookie, offset, length, r.pieces, (flags & CmdFlag.Df) !== 0, () => r.release());
        }
        case Cmd.Write:
        case Cmd.WriteZeroes: {
          if (exp.readOnly || !dev.write || !dev.writeZeroes) return this.replyError(type, cookie, Errno.EPERM, 'the export is read-only');
          if (!inRange) return this.replyError(type, cookie, Errno.ENOSPC, 'write past the end of the export');
          if (type === Cmd.Write) await dev.write(offset, payload!);
          else await dev.writeZeroes(offset, length);
          if (flags & CmdFlag.Fua) await dev.flush?.();
          return this.simple(cookie, 0);
        }
        case Cmd.Flush:
          if (dev.flush) await dev.flush();
          return this.simple(cookie, 0);
        case Cmd.BlockStatus: {
          if (!this.baseAllocation) return this.replyError(type, cookie, Errno.EINVAL, 'no metadata context was negotiated');
          if (!inRange || length === 0) return this.replyError(type, cookie, Errno.EINVAL, 'request outside the export');
          let extents = await dev.extents(offset, length);
          if (flags & CmdFlag.ReqOne) extents = extents.slice(0, 1);
          else if (extents.length > MAX_EXTENTS) extents = extents.slice(0, MAX_EXTENTS);
          const d = Buffer.alloc(4 + extents.length * 8);
          d.writeUInt32BE(META_ID_BASE_ALLOCATION, 0);
          extents.forEach((e, i) => {
            d.writeUInt32BE(e.length, 4 + i * 8);
            d.writeUInt32BE(e.hole ? STATE_HOLE | STATE_ZERO : 0, 8 + i * 8);
          });
          this.write(this.chunkHeader(ReplyFlagDone, ReplyType.BlockStatus, cookie, d.length), d);
          return;
        }
        case Cmd.Trim:
          // Not advertised: contents after a trim would be undefined, and the overlay keeps data instead.
          return this.replyError(type, cookie, Errno.EINVAL, 'trim is not supported');
        default:
          return this.replyError(type, cookie, Errno.EINVAL, `command ${type} is not supported`);
      }
    } catch (err) {
      if (err instanceof Closed || this.abort.signal.aborted) return;
      this.opts.onError?.(err, this.remote);
      const errno = isAppError(err, ErrorCode.InvalidArgument) ? Errno.EINVAL : (err as NodeJS.ErrnoException).code === 'ENOSPC' ? Errno.ENOSPC : Errno.EIO;
      // The client learns that the read failed, not why in detail (no paths or internals).
      this.replyError(type, cookie, errno, errno === Errno.EIO ? 'input/output error reading the backup' : (err as Error).message);
    }
  }

  private simple(cookie: Buffer, error: number, data?: Uint8Array): void {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(error, 4);
    cookie.copy(h, 8);
    if (data) this.write(h, data);
    else this.write(h);
  }

  private chunkHeader(flags: number, type: number, cookie: Buffer, length: number): Buffer {
    const h = Buffer.alloc(20);
    h.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    cookie.copy(h, 8);
    h.writeUInt32BE(length, 16);
    return h;
  }

  private replyError(type: number, cookie: Buffer, errno: number, message: string): void {
    if (!this.structured || (type !== Cmd.Read && type !== Cmd.BlockStatus)) return this.simple(cookie, errno);
    const msg = Buffer.from(message, 'utf8').subarray(0, 1024);
    const d = Buffer.alloc(6 + msg.length);
    d.writeUInt32BE(errno, 0);
    d.writeUInt16BE(msg.length, 4);
    msg.copy(d, 6);
    this.write(this.chunkHeader(ReplyFlagDone, ReplyType.Error, cookie, d.length), d);
  }

  /**
   * A read's reply: structured, one OFFSET_DATA chunk per run of data and one OFFSET_HOLE per hole
   * (DF: one OFFSET_DATA with the holes' zeros); simple (no structured replies): all the bytes.
   */
  private replyRead(cookie: Buffer, offset: number, length: number, pieces: ImagePiece[], df: boolean, done: () => void): void {
    // Nothing to send (a zero-length read): NONE ends it (an OFFSET_DATA chunk must carry data).
    if (this.structured && length === 0) return this.writeThen([this.chunkHeader(ReplyFlagDone, ReplyType.None, cookie, 0)], done);
    if (!this.structured || df) {
      const parts: Uint8Array[] = [];
      for (const p of pieces) parts.push(p.data ?? zeros(p.length));
      if (!this.structured) {
        const h = Buffer.alloc(16);
        h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
        cookie.copy(h, 8);
        return this.writeThen([h, ...parts], done);
      }
      const off = Buffer.alloc(8);
      off.writeBigUInt64BE(BigInt(offset));
      return this.writeThen([this.chunkHeader(ReplyFlagDone, ReplyType.OffsetData, cookie, 8 + length), off, ...parts], done);
    }
    const out: Uint8Array[] = [];
    // Neighbouring data pieces go in one chunk.
    let i = 0;
    while (i < pieces.length) {
      const p = pieces[i]!;
      const last = (j: number): number => (j === pieces.length ? ReplyFlagDone : 0);
      if (!p.data) {
        const d = Buffer.alloc(12);
        d.writeBigUInt64BE(BigInt(p.offset), 0);
        d.writeUInt32BE(p.length, 8);
        out.push(this.chunkHeader(last(i + 1), ReplyType.OffsetHole, cookie, 12), d);
        i++;
        continue;
      }
      let j = i;
      let len = 0;
      while (j < pieces.length && pieces[j]!.data) len += pieces[j++]!.length;
      const off = Buffer.alloc(8);
      off.writeBigUInt64BE(BigInt(p.offset));
      out.push(this.chunkHeader(last(j), ReplyType.OffsetData, cookie, 8 + len), off);
      for (let k = i; k < j; k++) out.push(pieces[k]!.data!);
      i = j;
    }
    this.writeThen(out, done);
  }
}

let zeroBuf = new Uint8Array(0);
function zeros(n: number): Uint8Array {
  if (zeroBuf.length < n) zeroBuf = new Uint8Array(Math.max(n, 1 << 20));
  return zeroBuf.subarray(0, n);
}

function parseNameAndInfos(data: Buffer): { name: string; infos: number[] } | null {
  if (data.length < 6) return null;
  const nameLen = data.readUInt32BE(0);
  if (4 + nameLen + 2 > data.length) return null;
  const name = data.subarray(4, 4 + nameLen).toString('utf8');
  const n = data.readUInt16BE(4 + nameLen);
  if (4 + nameLen + 2 + n * 2 !== data.length) return null;
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(6 + nameLen + i * 2));
  return { name, infos };
}
