/**
 * NbdEndpoint: a process's one NBD listener (HAVEN_NBD_LISTEN), started when first needed, serving
 * the exports of every source registered with it: the service's exports of backups and this
 * host's live restores. Export names are secrets, unique across sources; listing is refused.
 */
import type { SecureContext } from 'node:tls';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { nbdUri, parseListen, type ListenSpec } from '../domain/listen.ts';
import { NbdServer, type NbdExport, type NbdExports } from './nbd-server.ts';
import { errnoText } from '../domain/errno.ts';
import { detached } from '../domain/request-context.ts';

export interface NbdEndpointOptions {
  /** HOST:PORT or unix:PATH, or 'off'. */
  listen: string;
  /** The host name URIs give clients (default: the listen address). */
  publicHost: string;
  /** TLS (asked at each handshake: certificates reload); clients must then STARTTLS. */
  tls: (() => SecureContext) | null;
  onError?: (err: unknown, where: string) => void;
}

export class NbdEndpoint implements NbdExports {
  private readonly opts: NbdEndpointOptions;
  private readonly sources: NbdExports[] = [];
  private server: NbdServer | null = null;
  private listening: Promise<ListenSpec> | null = null;

  constructor(opts: NbdEndpointOptions) {
    this.opts = opts;
  }

  get tls(): boolean {
    return this.opts.tls !== null;
  }

  add(source: NbdExports): void {
    this.sources.push(source);
  }

  /** The listener's address, started at the first call. */
  async listener(): Promise<ListenSpec> {
    if (this.opts.listen === 'off') throw new AppError(ErrorCode.ExportUnavailable, 'Exports are switched off here (HAVEN_NBD_LISTEN=off).');
    if (!this.listening) {
      const server = new NbdServer(this, { ...(this.opts.tls ? { tls: this.opts.tls } : {}), ...(this.opts.onError ? { onError: (e, r) => this.opts.onError!(e, r) } : {}) });
      // Started by the first export's request or live restore's job, but serves every later one.
      this.listening = detached(() => server.listen(parseListen(this.opts.listen))).then((at) => {
        this.server = server;
        return at;
      });
      this.listening.catch(() => (this.listening = null));
    }
    try {
      return await this.listening;
    } catch (err) {
      throw new AppError(ErrorCode.ExportUnavailable, `The NBD listener cannot start on ${this.opts.listen}: ${errnoText(err)}.`, { cause: err });
    }
  }

  /** Whether exports are switched off here. */
  get off(): boolean {
    return this.opts.listen === 'off';
  }

  /** The URI of an export of this listener. */
  async uri(name: string): Promise<string> {
    return nbdUri(await this.listener(), name, { tls: this.tls, host: this.opts.publicHost });
  }

  async find(name: string): Promise<NbdExport | null> {
    for (const s of this.sources) {
      const e = await s.find(name);
      if (e) return e;
    }
    return null;
  }

  /** NBD_OPT_LIST: refused (export names are secrets). */
  async list(): Promise<null> {
    return null;
  }

  async disconnect(which: (exportName: string) => boolean): Promise<void> {
    await this.server?.disconnect(which);
  }

  async close(): Promise<void> {
    await this.server?.close();
  }
}
