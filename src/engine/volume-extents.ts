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
  /** Give up (null) after this long; a map of a 64 GiB file in 64 KiB pieces takes under a second. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/**
 * The map is parsed as qemu-img prints it, so only its extents are held (some 50 bytes each), never
 * its text (about 125 bytes per entry, data or hole: 15 MB for a 64 GiB file written in 64 KiB
 * pieces at random places, 61,504 extents). Past this many the map is dropped and the volume read
 * whole, which keeps the map within about 25 MiB of the backup's memory bound whatever the file.
 */
const MAX_EXTENTS = 500_000;
/** One entry's text is some 120 characters; far longer is not qemu-img's map. */
const MAX_ENTRY_CHARS = 4096;
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
  const parser = new QemuImgMapParser(sizeBytes);
  const out = await new Promise<{ ok: true } | { ok: false; why: string; missing?: boolean }>((resolve) => {
    const child = spawn(command, ['map', '-U', '--output=json', '-f', 'raw', '/proc/self/fd/3'], { stdio: ['ignore', 'pipe', 'pipe', fd] });
    let stderr = '';
    let stop: string | null = null;
    const kill = (why: string): void => {
      stop ??= why;
      child.kill('SIGKILL');
    };
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const timer = setTimeout(() => kill(`it took longer than ${timeoutMs} ms`), timeoutMs);
    const onAbort = (): void => kill('cancelled');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (text: string) => {
      if (!parser.push(text)) kill(parser.tooMany ? `its map has more than ${MAX_EXTENTS} extents` : 'it printed a map Haven does not understand');
    });
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 2000) stderr += d.toString();
    });
    const done = (r: { ok: true } | { ok: false; why: string; missing?: boolean }): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve(r);
    };
    child.on('error', (err: NodeJS.ErrnoException) => done({ ok: false, why: err.message, missing: err.code === 'ENOENT' }));
    child.on('close', (code, sig) => {
      if (stop !== null) done({ ok: false, why: stop });
      else if (code !== 0) done({ ok: false, why: stderr.trim() || `it exited with ${code ?? sig}` });
      else done({ ok: true });
    });
  });
  throwIfAborted(opts.signal);
  const extents = out.ok ? parser.end() : null;
  if (!out.ok && out.missing) warnOnce(`missing:${command}`, `${command} was not found, so sparse volumes are read whole, holes included; install qemu-utils (Debian) to skip their holes`);
  else if (!out.ok) warnOnce(`failed:${command}`, `${command} map could not list a volume's holes (${out.why}); the volume is read whole`);
  else if (extents === null) warnOnce(`output:${command}`, `${command} map printed a map Haven does not understand or that does not cover the volume; volumes are read whole`);
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
  const parser = new QemuImgMapParser(sizeBytes);
  return parser.push(text) ? parser.end() : null;
}

/**
 * parseQemuImgMap on text that arrives in pieces: the JSON array is split into its entries (each a
 * flat object: from '{' to the next '}'), and each entry is parsed with JSON.parse and checked as it
 * comes. Whitespace and line breaks may fall anywhere between tokens.
 */
export class QemuImgMapParser {
  private readonly sizeBytes: number;
  private readonly extents: Extent[] = [];
  /** Where the next entry must start. */
  private at = 0;
  private state: 'before' | 'inside' | 'after' | 'bad' = 'before';
  /** Inside the array: an entry must come next (after '[' or ','), else ',' or ']'. */
  private wantEntry = true;
  private entries = 0;
  /** The text of an entry begun but not yet closed; null between entries. */
  private entry: string | null = null;
  /** Whether push failed for having more than MAX_EXTENTS extents. */
  tooMany = false;

  constructor(sizeBytes: number) {
    this.sizeBytes = sizeBytes;
  }

  /** Takes the next piece of text; false once the map cannot be vouched for (then it stays false). */
  push(text: string): boolean {
    for (let i = 0; i < text.length && this.state !== 'bad'; i++) {
      if (this.entry !== null) {
        const close = text.indexOf('}', i);
        const piece = text.slice(i, close < 0 ? text.length : close + 1);
        this.entry += piece;
        if (this.entry.length > MAX_ENTRY_CHARS) this.state = 'bad';
        else if (close >= 0) {
          const ok = this.take(this.entry);
          this.entry = null;
          if (!ok) this.state = 'bad';
        }
        i += piece.length - 1;
        continue;
      }
      const c = text[i]!;
      if (c === ' ' || c === '\n' || c === '\r' || c === '\t') continue;
      if (this.state === 'before' && c === '[') this.state = 'inside';
      else if (this.state === 'inside' && this.wantEntry && c === '{') this.entry = c;
      else if (this.state === 'inside' && !this.wantEntry && c === ',') this.wantEntry = true;
      else if (this.state === 'inside' && (!this.wantEntry || this.entries === 0) && c === ']') this.state = 'after';
      else this.state = 'bad';
    }
    return this.state !== 'bad';
  }

  /** The extents, or null unless the array was closed and covers the file exactly. */
  end(): Extent[] | null {
    if (this.state !== 'after' || this.at < this.sizeBytes || this.at > Math.ceil(this.sizeBytes / SECTOR) * SECTOR) return null;
    return this.extents;
  }

  private take(text: string): boolean {
    let e: unknown;
    try {
      e = JSON.parse(text);
    } catch {
      return false;
    }
    this.entries++;
    this.wantEntry = false;
    const { start, length, zero } = e as { start?: unknown; length?: unknown; zero?: unknown };
    if (typeof start !== 'number' || typeof length !== 'number' || typeof zero !== 'boolean') return false;
    if (!Number.isSafeInteger(length) || length < 0 || start !== this.at) return false;
    this.at += length;
    if (zero || length === 0 || start >= this.sizeBytes) return true;
    const end = Math.min(this.at, this.sizeBytes);
    const last = this.extents[this.extents.length - 1];
    if (last && last.start + last.length === start) last.length = end - last.start;
    else if (this.extents.length < MAX_EXTENTS) this.extents.push({ start, length: end - start });
    else {
      this.tooMany = true;
      return false;
    }
    return true;
  }
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
