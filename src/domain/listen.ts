/** Listen addresses as settings and the CLI write them. */
import { AppError, ErrorCode } from './errors.ts';

export type ListenSpec = { host: string; port: number } | { path: string };

/** Parses `HOST:PORT`, `[V6]:PORT`, `PORT` or `unix:PATH` (a listen address of the CLI and settings). */
export function parseListen(spec: string): ListenSpec {
  if (spec.startsWith('unix:')) {
    const path = spec.slice(5);
    if (!path) throw new AppError(ErrorCode.InvalidArgument, `listen address ${JSON.stringify(spec)} names no socket path`);
    return { path };
  }
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]*)):(\d{1,5})$/.exec(spec) ?? /^()()(\d{1,5})$/.exec(spec);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new AppError(ErrorCode.InvalidArgument, `listen address ${JSON.stringify(spec)} is not HOST:PORT, PORT or unix:PATH`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

/** An NBD URI for an export (what nbdinfo, nbdcopy and qemu-img take); `host` overrides the listen address. */
export function nbdUri(at: ListenSpec, name: string, opts: { tls?: boolean; host?: string } = {}): string {
  const s = opts.tls ? 's' : '';
  if ('path' in at) return `nbd${s}+unix:///${encodeURIComponent(name)}?socket=${encodeURIComponent(at.path)}`;
  const h = opts.host || at.host;
  return `nbd${s}://${h.includes(':') ? `[${h}]` : h}:${at.port}/${encodeURIComponent(name)}`;
}
