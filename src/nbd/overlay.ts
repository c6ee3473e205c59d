/**
 * CowOverlay: a writable disk over a read-only one (a backup): writes go to a local sparse file,
 * block by block (BLOCK bytes), and a bitmap says which blocks the overlay holds; reads take those
 * blocks from the overlay and everything else from the base. The base is never written.
 *
 * A write covering part of a block the overlay does not hold yet is merged with the base's bytes of
 * that block first (a guest with 512-byte sectors writes less than a block).
 *
 * Two kinds:
 * - temporary (`dir`): the file is created and unlinked at once, so it is gone when the process
 *   ends, however it ends; it belongs to one connection;
 * - kept (`file`): the file stays, and its bitmap beside it (`FILE.map`, written on every flush and
 *   at close, temporary file and rename): reopening it with the same backup carries on with the
 *   writes made so far. Writes not flushed before a crash may be lost, as on any disk with a write
 *   cache; a flush makes them durable.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { copyPieces, joinReads, layeredExtents, ownedRead, type ImageExtent, type ImageRead } from '../engine/backup-image.ts';
import type { NbdDevice } from './nbd-server.ts';
import { BlockBitmap, type BlockRun } from '../engine/block-bitmap.ts';
import { readAll, writeAll } from '../storage/file-io.ts';

/** The overlay's block: what one bit of the bitmap stands for. */
export const OVERLAY_BLOCK = 4096;
const MAP_MAGIC = 'HAVEN-OVERLAY-1\n';

/** What an overlay reads through to. */
export interface OverlayBase {
  readonly sizeBytes: number;
  read(offset: number, length: number, signal?: AbortSignal): Promise<ImageRead>;
  extents(offset: number, length: number): Promise<ImageExtent[]>;
}

export interface OverlayOptions {
  /** The backup the overlay is over (recorded in a kept overlay's map, checked on reopening). */
  baseId: string;
  /** A kept overlay's file. */
  file?: string;
  /** Where a temporary overlay's file goes (default: the system's temporary folder). */
  dir?: string;
}

export class CowOverlay implements NbdDevice {
  readonly sizeBytes: number;
  private readonly base: OverlayBase;
  private readonly fh: fs.FileHandle;
  private readonly held: BlockBitmap;
  private readonly mapFile: string | null;
  private readonly baseId: string;
  private writing: Promise<unknown> = Promise.resolve();
  private flushing: Promise<unknown> = Promise.resolve();
  private mapDirty = false;
  private closed = false;

  private constructor(base: OverlayBase, fh: fs.FileHandle, held: BlockBitmap, mapFile: string | null, baseId: string) {
    this.base = base;
    this.sizeBytes = base.sizeBytes;
    this.fh = fh;
    this.held = held;
    this.mapFile = mapFile;
    this.baseId = baseId;
  }

  static async open(base: OverlayBase, opts: OverlayOptions): Promise<CowOverlay> {
    const blocks = Math.ceil(base.sizeBytes / OVERLAY_BLOCK);
    const bitsLength = Math.ceil(blocks / 8);
    if (!opts.file) {
      const dir = opts.dir ?? tmpdir();
      if (opts.dir) await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      const file = path.join(dir, `haven-overlay-${randomBytes(8).toString('hex')}.img`);
      let fh: fs.FileHandle;
      try {
        fh = await fs.open(file, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      } catch (err) {
        throw new AppError(ErrorCode.TargetUnwritable, `cannot create an overlay in ${dir}: ${(err as Error).message}`, { cause: err });
      }
      await fs.unlink(file); // gone with the process, however it ends
      await fh.truncate(base.sizeBytes);
      return new CowOverlay(base, fh, new BlockBitmap(blocks, OVERLAY_BLOCK), null, opts.baseId);
    }
    const file = path.resolve(opts.file);
    const mapFile = `${file}.map`;
    const existing = await fs.readFile(mapFile).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw new AppError(ErrorCode.TargetUnwritable, `cannot read overlay map ${mapFile}: ${err.message}`, { cause: err });
    });
    let fh: fs.FileHandle;
    try {
      // A map without its file is an overlay whose data is lost: never taken for an empty one.
      fh = await fs.open(file, fsc.O_RDWR | fsc.O_NOFOLLOW | (existing ? 0 : fsc.O_CREAT), 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new AppError(ErrorCode.InvalidArgument, `overlay ${file} is missing but its map ${path.basename(mapFile)} is there: the overlay's data is lost (remove the map to start a new one)`, { cause: err });
      throw new AppError(ErrorCode.TargetUnwritable, `cannot open overlay ${file}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new AppError(ErrorCode.InvalidArgument, `overlay ${file} is not a regular file`);
      const head = existing ? parseMap(existing, mapFile) : null;
      if (head) {
        if (head.baseId !== opts.baseId) throw new AppError(ErrorCode.InvalidArgument, `overlay ${file} was made over backup ${head.baseId}, not ${opts.baseId}`);
        if (head.sizeBytes !== base.sizeBytes || head.blockBytes !== OVERLAY_BLOCK || head.bits.length !== bitsLength || st.size !== base.sizeBytes) throw new AppError(ErrorCode.InvalidArgument, `overlay ${file} or its map does not fit backup ${opts.baseId} (a different size)`);
      } else if (st.size > 0) {
        throw new AppError(ErrorCode.InvalidArgument, `${file} exists and is not an overlay (no ${path.basename(mapFile)} beside it): choose a new file`);
      }
      if (st.size !== base.sizeBytes) await fh.truncate(base.sizeBytes);
      const o = new CowOverlay(base, fh, new BlockBitmap(blocks, OVERLAY_BLOCK, head?.bits), mapFile, opts.baseId);
      if (!head) await o.saveMap(new Uint8Array(o.held.bits));
      return o;
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  private has(block: number): boolean {
    return this.held.has(block);
  }

  private mark(a: number, b: number): void {
    this.held.set(a, b);
    this.mapDirty = true;
  }

  /** Blocks written so far (for reports and tests). */
  writtenBlocks(): number {
    return this.held.count;
  }

  /** Runs of blocks the overlay holds (own) or not, clipped to [offset, end). */
  private runs(offset: number, end: number): BlockRun[] {
    return this.held.runs(offset, end);
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<ImageRead> {
    return joinReads(
      this.runs(offset, offset + length).map(async (r): Promise<ImageRead> => {
        if (!r.own) return this.base.read(r.offset, r.length, signal);
        const data = Buffer.allocUnsafe(r.length);
        await readAll(this.fh, data, r.offset);
        return ownedRead([{ offset: r.offset, length: r.length, data }]);
      }),
    );
  }

  extents(offset: number, length: number): Promise<ImageExtent[]> {
    return layeredExtents(this.runs(offset, offset + length), (o, l) => this.base.extents(o, l));
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    // One write at a time: a partial block's merge reads the block as it is before writing it whole.
    const p = this.writing.then(() => this.writeNow(offset, data));
    this.writing = p.catch(() => undefined);
    return p;
  }

  /**
   * Zeros: in a temporary overlay, whole blocks it does not hold yet are only marked (their part of
   * the file was never written: a hole, zeros, no disk used); the rest is written. A kept overlay
   * writes them all (after a crash its unmarked blocks may hold data of writes never flushed).
   */
  writeZeroes(offset: number, length: number): Promise<void> {
    // In order with the writes: which blocks are held is decided once those before it have landed.
    const p = this.writing.then(() => this.zeroNow(offset, length));
    this.writing = p.catch(() => undefined);
    return p;
  }

  private async zeroNow(offset: number, length: number): Promise<void> {
    const piece = 1024 * 1024;
    const z = new Uint8Array(Math.min(piece, length));
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const k = Math.floor(at / OVERLAY_BLOCK);
      const blockEnd = Math.min(this.sizeBytes, (k + 1) * OVERLAY_BLOCK);
      if (!this.mapFile && at === k * OVERLAY_BLOCK && blockEnd <= end && !this.has(k)) {
        // A run of whole blocks not held: marked only.
        let j = k;
        while ((j + 1) * OVERLAY_BLOCK <= end && !this.has(j)) j++;
        if (j > k) {
          this.mark(k, j);
          at = j * OVERLAY_BLOCK;
          continue;
        }
      }
      const n = Math.min(piece, end - at, at % OVERLAY_BLOCK === 0 ? piece : OVERLAY_BLOCK - (at % OVERLAY_BLOCK));
      await this.writeNow(at, z.subarray(0, n));
      at += n;
    }
  }

  private async writeNow(offset: number, data: Uint8Array): Promise<void> {
    if (this.closed) throw new AppError(ErrorCode.Cancelled, 'the overlay is closed');
    if (data.length === 0) return;
    const end = offset + data.length;
    const a = Math.floor(offset / OVERLAY_BLOCK);
    const b = Math.ceil(end / OVERLAY_BLOCK);
    const start = a * OVERLAY_BLOCK;
    const stop = Math.min(this.sizeBytes, b * OVERLAY_BLOCK);
    let buf: Uint8Array = data;
    if (start !== offset || stop !== end) {
      // Merge with the current bytes of the partly written first and last blocks.
      buf = new Uint8Array(stop - start);
      const edges = new Set<number>([a, b - 1]);
      for (const k of edges) {
        const s = k * OVERLAY_BLOCK;
        const e = Math.min(this.sizeBytes, s + OVERLAY_BLOCK);
        if (s >= offset && e <= end) continue; // covered whole by the write
        const r = await this.read(s, e - s);
        try {
          copyPieces(r.pieces, buf.subarray(s - start, e - start), s);
        } finally {
          r.release();
        }
      }
      buf.set(data, offset - start);
    }
    await writeAll(this.fh, buf, start);
    this.mark(a, b);
  }

  /**
   * Makes the writes done so far durable: the data first, then (a kept overlay) a map naming no
   * block whose data was not synced. Flushes run one after another, so one never answers before
   * the map holding its writes is on disk.
   */
  flush(): Promise<void> {
    const p = this.flushing.then(async () => {
      await this.writing;
      const dirty = this.mapDirty;
      this.mapDirty = false;
      const bits = this.mapFile && dirty ? new Uint8Array(this.held.bits) : null; // what is written up to now
      try {
        await this.fh.datasync();
        if (bits) await this.saveMap(bits);
      } catch (err) {
        if (dirty) this.mapDirty = true;
        throw err;
      }
    });
    this.flushing = p.catch(() => undefined);
    return p;
  }

  private async saveMap(bits: Uint8Array): Promise<void> {
    if (!this.mapFile) return;
    const head = Buffer.from(`${MAP_MAGIC}${JSON.stringify({ baseId: this.baseId, sizeBytes: this.sizeBytes, blockBytes: OVERLAY_BLOCK })}\n`, 'utf8');
    const tmp = `${this.mapFile}.${randomBytes(4).toString('hex')}.tmp`;
    const fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    try {
      await fh.writeFile(Buffer.concat([head, bits]));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, this.mapFile);
    // The rename itself durable: the folder's entry.
    const dir = await fs.open(path.dirname(this.mapFile), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.writing;
    try {
      if (this.mapFile) await this.flush();
    } finally {
      this.closed = true;
      await this.fh.close();
    }
  }
}

function parseMap(buf: Buffer, mapFile: string): { baseId: string; sizeBytes: number; blockBytes: number; bits: Buffer } {
  const bad = (): AppError => new AppError(ErrorCode.InvalidArgument, `${mapFile} is not an overlay map`);
  if (buf.subarray(0, MAP_MAGIC.length).toString('utf8') !== MAP_MAGIC) throw bad();
  const nl = buf.indexOf(10, MAP_MAGIC.length);
  if (nl < 0) throw bad();
  let head: { baseId?: unknown; sizeBytes?: unknown; blockBytes?: unknown };
  try {
    head = JSON.parse(buf.subarray(MAP_MAGIC.length, nl).toString('utf8')) as typeof head;
  } catch {
    throw bad();
  }
  if (typeof head.baseId !== 'string' || typeof head.sizeBytes !== 'number' || typeof head.blockBytes !== 'number') throw bad();
  return { baseId: head.baseId, sizeBytes: head.sizeBytes, blockBytes: head.blockBytes, bits: buf.subarray(nl + 1) };
}
