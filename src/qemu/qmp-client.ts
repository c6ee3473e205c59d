/**
 * A QMP client (the QEMU Machine Protocol: JSON objects over a Unix socket, one per line). Written
 * by hand: the protocol is a greeting, `qmp_capabilities`, then commands answered in order by
 * `return` or `error`, with `event` objects in between; the one npm package for it (qemu-qmp) was
 * last published a decade ago.
 */
import * as net from 'node:net';
import { AppError, ErrorCode } from '../domain/errors.ts';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** A command QEMU refused: its error class (e.g. `GenericError`, `DeviceNotFound`) and description. */
export class QmpError extends AppError {
  readonly qmpClass: string;
  readonly command: string;
  constructor(command: string, qmpClass: string, desc: string) {
    super(ErrorCode.VolumeUnreadable, `QEMU refused ${command}: ${desc}`);
    this.qmpClass = qmpClass;
    this.command = command;
  }
}

interface Waiting {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export class QmpClient {
  /** QEMU's version as its greeting says it. */
  readonly version: { major: number; minor: number; micro: number };
  private readonly sock: net.Socket;
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 1;
  private buf = '';
  private closedWith: AppError | null = null;
  private readonly listeners = new Set<(e: QmpEvent) => void>();

  private constructor(sock: net.Socket, version: { major: number; minor: number; micro: number }, rest: string) {
    this.sock = sock;
    this.version = version;
    this.buf = rest;
    sock.on('data', (d: string) => {
      this.buf += d;
      this.drain();
    });
    const end = (err?: Error): void => this.fail(new AppError(ErrorCode.VolumeUnreadable, err ? `the QMP connection failed: ${err.message}` : 'QEMU closed the QMP connection'));
    sock.on('error', end);
    sock.on('close', () => end());
    this.drain();
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(socketPath: string, opts: { timeoutMs?: number } = {}): Promise<QmpClient> {
    const sock = net.connect({ path: socketPath });
    sock.setEncoding('utf8');
    try {
      let text = '';
      const greeting = await new Promise<{ QMP?: { version?: { qemu?: { major: number; minor: number; micro: number } } } }>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no QMP greeting within ${opts.timeoutMs ?? 10_000} ms`)), opts.timeoutMs ?? 10_000);
        const onData = (d: string): void => {
          text += d;
          const nl = text.indexOf('\n');
          if (nl < 0) return;
          clearTimeout(timer);
          sock.off('data', onData);
          try {
            resolve(JSON.parse(text.slice(0, nl)) as never);
          } catch {
            reject(new Error('it did not greet in QMP'));
          }
          text = text.slice(nl + 1);
        };
        sock.on('data', onData);
        sock.once('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
      const v = greeting.QMP?.version?.qemu;
      if (!v) throw new Error('it did not greet in QMP');
      const client = new QmpClient(sock, v, text);
      await client.execute('qmp_capabilities');
      return client;
    } catch (err) {
      sock.destroy();
      if (err instanceof AppError) throw err;
      throw new AppError(ErrorCode.VolumeUnreadable, `cannot talk QMP over ${socketPath}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Runs a command; resolves to its `return` value, rejects with a QmpError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { command, resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  /** Calls `fn` for every event until the returned function is called. */
  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Resolves with the first event named `name` that `match` accepts, or rejects after `timeoutMs`. */
  waitEvent(name: string, match: (e: QmpEvent) => boolean = () => true, timeoutMs = 30_000): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new AppError(ErrorCode.VolumeUnreadable, `QEMU sent no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.onEvent((e) => {
        if (e.event !== name || !match(e)) return;
        clearTimeout(timer);
        off();
        resolve(e);
      });
    });
  }

  async close(): Promise<void> {
    if (this.sock.destroyed) return;
    await new Promise<void>((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.end();
      setTimeout(() => this.sock.destroy(), 1000).unref();
    });
  }

  private drain(): void {
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl < 0) return;
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: { id?: number; return?: unknown; error?: { class: string; desc: string }; event?: string };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        this.fail(new AppError(ErrorCode.VolumeUnreadable, 'QEMU sent something that is not QMP'));
        return;
      }
      if (msg.event !== undefined) {
        for (const l of [...this.listeners]) l(msg as QmpEvent);
        continue;
      }
      const w = msg.id !== undefined ? this.waiting.get(msg.id) : undefined;
      if (!w) continue;
      this.waiting.delete(msg.id!);
      if (msg.error) w.reject(new QmpError(w.command, msg.error.class, msg.error.desc));
      else w.resolve(msg.return);
    }
  }

  private fail(err: AppError): void {
    this.closedWith ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
  }
}
