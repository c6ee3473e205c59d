/**
 * Where a sparse volume file holds data, so a backup need not read its holes.
 *
 * Node has neither lseek(SEEK_DATA/SEEK_HOLE) nor the FIEMAP ioctl, and Haven uses QEMU's own tools
 * rather than re-implementing what they do: `qemu-img map --output=json -f raw` walks the file with
 * SEEK_DATA/SEEK_HOLE and prints one entry per run of data or zeros. The answer is only ever used to
 * skip reading bytes that read as zeros anyway, so every doubt falls on the side of data: any
 * failure, timeout, unexpected output or output that does not cover the file exactly gives null
 * (read everything, as without a map), and only ranges qemu-img calls zero are holes.
 */
import { spawn } from 'node:child_process';
import { throwIfAborted } from '../domain/errors.ts';

/** A byte range of a volume. */
export interface Extent {
  start: number;
  length: number;
}

export interface QemuImgMapOptions {
  /** The qemu-img to run (default: `qemu-img` on PATH). */
  command?: string;
  /** Give up (null) after this long; a map of a 64 GiB file in 64 Ki pieces takes under a second. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/**
 * qemu-img prints about 125 bytes per entry (data or hole). Past this (some 270,000 entries) the map
 * is dropped and the volume read whole, so the map's text and its parsed form stay within tens of
 * MiB of the backup's memory bound whatever the file (a 64 GiB file written in 64 KiB pieces at
 * random places prints 15 MB).
 */
const MAX_OUTPUT_BYTES = 32 * 1024 * 1024;
const SECTOR = 512;

const warned = new Set<string>();
function warnOnce(key: string, message: string): void {
  if (warned.has(key)) return;
  warned.add(key);
  process.emitWarning(message, { code: 'HAVEN_VOLUME_EXTENTS' });
}

/**
 * The data extents of the regular file open as descriptor `fd`, `sizeBytes` long: sorted, disjoint,
 * adjacent ones merged; every byte outside them reads as zero. Null when qemu-img cannot say.
 *
 * qemu-img gets the descriptor itself, as its fd 3, and opens `/proc/self/fd/3`: the kernel resolves
 * that to the very file behind the descriptor (not a path looked up again), so it maps the file Haven
 * opened and checked (volume-file.ts), whatever the volume's path names by now. Inheriting it, rather
 * than naming `/proc/<Haven's pid>/fd/<fd>`, also keeps it valid if Haven closes its descriptor while
 * qemu-img starts (the number could be reused by another file) and needs no ptrace-level access to
 * Haven's /proc entry. `-U` (force share): a read-only look that neither takes nor waits for the
 * image locks a running VM holds.
 */
export async function qemuImgDataExtents(fd: number, sizeBytes: number, opts: QemuImgMapOptions = {}): Promise<Extent[] | null> {
  const command = opts.command ?? 'qemu-img';
  throwIfAborted(opts.signal);
  const out = await new Promise<{ ok: true; text: string } | { ok: false; why: string; missing?: boolean }>((resolve) => {
    const child = spawn(command, ['map', '-U', '--output=json', '-f', 'raw', '/proc/self/fd/3'], { stdio: ['ignore', 'pipe', 'pipe', fd] });
    const chunks: Buffer[] = [];
    let bytes = 0;
    let stderr = '';
    let stop: string | null = null;
    const kill = (why: string): void => {
      stop ??= why;
      child.kill('SIGKILL');
    };
    const timer = setTimeout(() => kill(`it took longer than ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`), opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const onAbort = (): void => kill('cancelled');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout!.on('data', (d: Buffer) => {
      bytes += d.length;
      if (bytes > MAX_OUTPUT_BYTES) kill(`its map is longer than ${MAX_OUTPUT_BYTES} bytes`);
      else chunks.push(d);
    });
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 2000) stderr += d.toString();
    });
    const done = (r: { ok: true; text: string } | { ok: false; why: string; missing?: boolean }): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve(r);
    };
    child.on('error', (err: NodeJS.ErrnoException) => done({ ok: false, why: err.message, missing: err.code === 'ENOENT' }));
    child.on('close', (code, sig) => {
      if (stop !== null) done({ ok: false, why: stop });
      else if (code !== 0) done({ ok: false, why: stderr.trim() || `it exited with ${code ?? sig}` });
      else done({ ok: true, text: Buffer.concat(chunks).toString('utf8') });
    });
  });
  throwIfAborted(opts.signal);
  if (!out.ok) {
    if (out.missing) warnOnce(`missing:${command}`, `${command} was not found, so sparse volumes are read whole, holes included; install qemu-utils (Debian) to skip their holes`);
    else warnOnce(`failed:${command}`, `${command} map could not list a volume's holes (${out.why}); the volume is read whole`);
    return null;
  }
  const extents = parseQemuImgMap(out.text, sizeBytes);
  if (extents === null) warnOnce(`output:${command}`, `${command} map printed a map Haven does not understand or that does not cover the volume; volumes are read whole`);
  return extents;
}

/**
 * The data extents in `qemu-img map --output=json` output for a raw file of `sizeBytes`, or null
 * unless the entries are well formed, in order, without gaps or overlaps, and cover the file exactly.
 *
 * A hole is an entry with `zero: true` (reads as zeros). `data: false` alone is not taken as one:
 * it means "not allocated in this layer", which reads as zeros only for want of a backing file; for
 * a raw file qemu sets `zero` then as well, so trusting `zero` alone loses nothing.
 *
 * qemu counts a file whose size is not a multiple of 512 in whole sectors: its map may run past
 * the end of the file to the next multiple of 512 (the extra bytes are zeros no one reads), and is
 * cut there.
 */
export function parseQemuImgMap(text: string, sizeBytes: number): Extent[] | null {
  let entries: unknown;
  try {
    entries = JSON.parse(text);
  } catch {
    return null;
  }
  if (!Array.isArray(entries)) return null;
  const extents: Extent[] = [];
  let at = 0;
  for (const e of entries as unknown[]) {
    if (typeof e !== 'object' || e === null) return null;
    const { start, length, zero } = e as { start?: unknown; length?: unknown; zero?: unknown };
    if (typeof start !== 'number' || typeof length !== 'number' || typeof zero !== 'boolean') return null;
    if (!Number.isSafeInteger(length) || length < 0 || start !== at) return null;
    at += length;
    if (zero || length === 0 || start >= sizeBytes) continue;
    const end = Math.min(at, sizeBytes);
    const last = extents[extents.length - 1];
    if (last && last.start + last.length === start) last.length = end - last.start;
    else extents.push({ start, length: end - start });
  }
  if (at < sizeBytes || at > Math.ceil(sizeBytes / SECTOR) * SECTOR) return null;
  return extents;
}

/**
 * Whether the `length` bytes at `start` lie wholly outside `extents` (sorted, disjoint): then they
 * read as zeros and need not be read. A binary search, so a backup asks it once per batch.
 */
export function isHole(extents: readonly Extent[], start: number, length: number): boolean {
  // The first extent that ends after `start`; the range is a hole unless it starts before the range's end.
  let lo = 0;
  let hi = extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const e = extents[mid]!;
    if (e.start + e.length <= start) lo = mid + 1;
    else hi = mid;
  }
  const next = extents[lo];
  return next === undefined || next.start >= start + length;
}
