/**
 * LiveRestore: a restore whose target is usable at once. The volume is served (over NBD) while
 * the backup is copied into it behind the user's back:
 *
 * - Per chunk of the backup, a bit says whether the target already holds its final bytes
 *   ("settled"): copied from the backup, or written by the user.
 * - A read takes settled chunks from the target and the others from the backup (BackupImage: the
 *   same chunk cache, digest checks and read-ahead as an export).
 * - A write into a chunk not yet settled first settles the parts of it the write does not cover
 *   (from the backup), then writes; the chunk is settled from then on, and the background copy
 *   never touches it again. A write and the copy of the same chunk exclude each other (a lock per
 *   range of chunks), so the copy never overwrites a range the user has written.
 * - The background copy (`run`) goes through the chunks in order, in batches, skipping settled
 *   ones; holes are settled without writing on a fresh sparse file (truncated first, it reads as
 *   zeros) and written as zeros on a block device.
 * Every copied chunk is checked against its digest as it is decoded (format-2 manifests). When
 * `run` ends, the target holds the backup plus the user's writes, flushed to stable storage, and
 * I/O goes straight to the target from then on.
 *
 * A volume larger than the backup reads as zeros past the backup's end (settled from the start on
 * a file; written on a device).
 */
import { constants as fsc, promises as fs } from 'node:fs';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { BlockBitmap, type BlockRun } from './block-bitmap.ts';
import { joinReads, layeredExtents, ownedRead, type BackupImage, type ImageExtent, type ImageRead } from './backup-image.ts';
import { blockDeviceSize } from './volume-source.ts';
import { openVolumeFile, reopenSame, type VolumeFileGuard } from './volume-file.ts';
import { acceptsDirectIo, DIRECT_ALIGN } from '../storage/direct-io.ts';
import { readAll, writeAll, writevAll, writeZeros } from '../storage/file-io.ts';

/** Bytes the background copy reads and writes at once (whole chunks, at least one). */
const BATCH_BYTES = 4 * 1024 * 1024;
/** Batches the background copy fetches ahead of the one it writes. */
const AHEAD = 4;

export interface LiveProgress {
  /** Bytes of the volume settled (copied or written by the user). */
  settledBytes: number;
  /** Bytes the user wrote through the live volume. */
  writtenBytes: number;
  totalBytes: number;
}

export class LiveRestore {
  readonly image: BackupImage;
  readonly sizeBytes: number;
  private readonly chunk: number;
  private readonly fh: fs.FileHandle;
  /**
   * The target opened again with O_DIRECT (the same inode, through /proc/self/fd), or null: the
   * copy writes whole chunks from the cache's page-aligned arena past the page cache, which on
   * this project's machines costs a fraction of the CPU of buffered writes (restore-reader.ts).
   * The user's reads and writes stay buffered; the kernel keeps the two coherent.
   */
  private direct: fs.FileHandle | null = null;
  private readonly blockDevice: boolean;
  private readonly settled: BlockBitmap;
  /** Chunks the user wrote into (data, whatever the backup had there); other settled ones are the backup's. */
  private readonly touched: BlockBitmap;
  private readonly chunks: number;
  private readonly batchChunks: number;
  private writtenBytes = 0;
  private readonly locks: { a: number; b: number; done: Promise<void> }[] = [];
  private closed = false;
  onProgress: ((p: LiveProgress) => void) | null = null;

  private constructor(image: BackupImage, fh: fs.FileHandle, sizeBytes: number, blockDevice: boolean) {
    this.image = image;
    this.fh = fh;
    this.sizeBytes = sizeBytes;
    this.blockDevice = blockDevice;
    this.chunk = image.chunkSize;
    this.chunks = Math.ceil(sizeBytes / this.chunk);
    this.settled = new BlockBitmap(this.chunks, this.chunk);
    this.touched = new BlockBitmap(this.chunks, this.chunk);
    this.batchChunks = Math.max(1, Math.floor(BATCH_BYTES / this.chunk));
  }

  /**
   * Opens the target (a service volume's file through its guard: never a link or a swapped file;
   * without a guard, a path the operator named) and empties it: a file is truncated to `sizeBytes`
   * (at least the backup's), a block device must be large enough.
   */
  static async open(image: BackupImage, target: string, opts: { guard?: VolumeFileGuard; sizeBytes?: number } = {}): Promise<LiveRestore> {
    const size = Math.max(image.sizeBytes, opts.sizeBytes ?? 0);
    let fh: fs.FileHandle;
    let blockDevice: boolean;
    let rdev: number;
    if (opts.guard) {
      const opened = await openVolumeFile(target, fsc.O_RDWR, opts.guard);
      fh = opened.fh;
      blockDevice = opened.stat.isBlockDevice();
      rdev = Number(opened.stat.rdev);
    } else {
      try {
        fh = await fs.open(target, fsc.O_RDWR | fsc.O_CREAT, 0o600);
      } catch (err) {
        throw new AppError(ErrorCode.TargetUnwritable, `cannot write restore target ${target}: ${(err as Error).message}`, { cause: err });
      }
      const st = await fh.stat();
      blockDevice = st.isBlockDevice();
      rdev = st.rdev;
    }
    let deviceSize = 0;
    try {
      if (blockDevice) {
        deviceSize = await blockDeviceSize(rdev);
        if (deviceSize < image.sizeBytes) throw new AppError(ErrorCode.TargetUnwritable, `block device ${target} holds ${deviceSize} bytes, the backup needs ${image.sizeBytes}`);
      } else {
        await fh.truncate(0);
        await fh.truncate(size);
      }
    } catch (err) {
      await fh.close();
      throw err;
    }
    // A device as large as the volume (zeros written past the backup's end), a file sized to it.
    const live = new LiveRestore(image, fh, blockDevice ? Math.min(deviceSize, size) : size, blockDevice);
    if (fsc.O_DIRECT && size >= DIRECT_ALIGN) {
      const direct = await reopenSame(fh, fsc.O_RDWR | fsc.O_DIRECT);
      // Asked with one block: a fresh file reads as zeros there, a device is only read.
      if (direct && (await acceptsDirectIo(direct, blockDevice))) live.direct = direct;
      else await direct?.close();
    }
    // A fresh file reads as zeros: past the backup's end it is settled already.
    if (!blockDevice) for (let i = Math.ceil(image.sizeBytes / live.chunk); i < live.chunks; i++) live.settle(i);
    return live;
  }

  private isSettled(i: number): boolean {
    return this.settled.has(i);
  }

  private settle(i: number): void {
    this.settled.set(i);
  }

  progress(): LiveProgress {
    return { settledBytes: Math.min(this.sizeBytes, this.settled.count * this.chunk), writtenBytes: this.writtenBytes, totalBytes: this.sizeBytes };
  }

  /** Holds chunks [a, b) against other writers (the copy, user writes) while `fn` runs. */
  private async locked<T>(a: number, b: number, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      const clash = this.locks.find((l) => l.a < b && a < l.b);
      if (!clash) break;
      await clash.done;
    }
    let release!: () => void;
    const entry = { a, b, done: new Promise<void>((r) => (release = r)) };
    this.locks.push(entry);
    try {
      return await fn();
    } finally {
      this.locks.splice(this.locks.indexOf(entry), 1);
      release();
    }
  }

  /** Runs of settled (own) and unsettled chunks over [offset, end). */
  private runs(offset: number, end: number): BlockRun[] {
    return this.settled.runs(offset, end);
  }

  /** The backup's extents, and a hole past its end. */
  private async belowExtents(offset: number, length: number): Promise<ImageExtent[]> {
    const stop = Math.min(offset + length, this.image.sizeBytes);
    const out = offset < stop ? await this.image.extents(offset, stop - offset) : [];
    if (offset + length > Math.max(offset, stop)) out.push({ offset: Math.max(offset, stop), length: offset + length - Math.max(offset, stop), hole: true });
    return out;
  }

  private checkRange(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.sizeBytes) throw new AppError(ErrorCode.InvalidArgument, `range ${offset}+${length} lies outside the volume (${this.sizeBytes} bytes)`);
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<ImageRead> {
    this.checkRange(offset, length);
    return joinReads(
      this.runs(offset, offset + length).map(async (r): Promise<ImageRead> => {
        if (r.own) {
          const data = Buffer.allocUnsafe(r.length);
          await readAll(this.fh, data, r.offset);
          return ownedRead([{ offset: r.offset, length: r.length, data }]);
        }
        return this.image.read(r.offset, r.length, signal);
      }),
    );
  }

  async extents(offset: number, length: number): Promise<ImageExtent[]> {
    this.checkRange(offset, length);
    // Holes where the backup has them and the user wrote nothing (copied or not), so clients that
    // follow block status (qemu-img, nbdcopy) skip them; past the backup's end, zeros.
    return layeredExtents(this.touched.runs(offset, offset + length), (o, l) => this.belowExtents(o, l));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkRange(offset, data.length);
    if (this.closed) throw new AppError(ErrorCode.Cancelled, 'the live volume is closed');
    if (data.length === 0) return;
    const end = offset + data.length;
    const a = Math.floor(offset / this.chunk);
    const b = Math.ceil(end / this.chunk);
    await this.locked(a, b, async () => {
      // Settle first the parts of the edge chunks this write leaves: the rest of them is the backup's.
      for (const i of new Set([a, b - 1])) {
        if (this.isSettled(i)) continue;
        const s = i * this.chunk;
        const e = Math.min(this.sizeBytes, s + this.chunk);
        if (s >= offset && e <= end) continue;
        await this.copyRange(s, e);
      }
      await writeAll(this.fh, data, offset);
      for (let i = a; i < b; i++) {
        this.settle(i);
        this.touched.set(i);
      }
      this.writtenBytes += data.length;
    });
    this.report();
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const piece = 1024 * 1024;
    const z = new Uint8Array(Math.min(piece, length));
    for (let at = 0; at < length; at += piece) await this.write(offset + at, z.subarray(0, Math.min(piece, length - at)));
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  /** Writes [s, e) of the backup into the target (zeros for holes on a device; a fresh file has them). */
  private async copyRange(s: number, e: number, signal?: AbortSignal): Promise<void> {
    const stop = Math.min(e, this.image.sizeBytes);
    if (s < stop) {
      const r = await this.image.read(s, stop - s, signal);
      try {
        for (const p of r.pieces) {
          if (p.data) await writeAll(this.fh, p.data, p.offset);
          else if (this.blockDevice) await writeZeros(this.fh, p.offset, p.length);
        }
      } finally {
        r.release();
      }
    }
    if (e > stop && this.blockDevice) await writeZeros(this.fh, Math.max(s, stop), e - Math.max(s, stop));
  }

  /**
   * The background copy: every chunk not yet settled, in order, then a flush. Resolves once the
   * target holds the whole backup (and the user's writes).
   */
  async run(signal?: AbortSignal): Promise<LiveProgress> {
    // Batches are fetched AHEAD at a time (decoded in parallel on the workers) and written in order.
    const queue: { a: number; b: number; pieces: Promise<ImageRead> }[] = [];
    let next = 0;
    const fill = (): void => {
      while (queue.length < AHEAD && next < this.chunks) {
        const a = next;
        const b = Math.min(this.chunks, a + this.batchChunks);
        next = b;
        let any = false;
        for (let i = a; i < b && !any; i++) any = !this.isSettled(i);
        if (!any) continue;
        const s = a * this.chunk;
        const e = Math.min(this.sizeBytes, b * this.chunk);
        // Fetched outside the lock (user writes go on meanwhile), written under it.
        const pieces = s < this.image.sizeBytes ? this.image.read(s, Math.min(e, this.image.sizeBytes) - s, signal) : Promise.resolve(ownedRead([]));
        pieces.catch(() => undefined);
        queue.push({ a, b, pieces });
      }
    };
    fill();
    try {
      await this.copyQueued(queue, fill, signal);
    } finally {
      // Reads fetched ahead and not written (a failure, a cancel) give their chunks back.
      for (const q of queue.splice(0)) void q.pieces.then((r) => r.release(), () => undefined);
    }
    await Promise.all([this.fh.sync(), this.direct?.sync()]);
    this.report();
    return this.progress();
  }

  private async copyQueued(queue: { a: number; b: number; pieces: Promise<ImageRead> }[], fill: () => void, signal: AbortSignal | undefined): Promise<void> {
    while (queue.length) {
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new AppError(ErrorCode.Cancelled, 'live restore cancelled');
      const { a, b, pieces: pending } = queue.shift()!;
      const got = await pending;
      const pieces = got.pieces;
      fill();
      const s = a * this.chunk;
      const e = Math.min(this.sizeBytes, b * this.chunk);
      await this.locked(a, b, async () => {
        // Only where no chunk was settled meanwhile (by the user's writes); neighbours in one writev.
        const runs: { offset: number; parts: Uint8Array[] }[] = [];
        for (const p of pieces) {
          for (const r of this.runs(p.offset, p.offset + p.length)) {
            if (r.own) continue;
            if (!p.data) {
              if (this.blockDevice) await writeZeros(this.fh, r.offset, r.length);
              continue;
            }
            const part = p.data.subarray(r.offset - p.offset, r.offset - p.offset + r.length);
            const last = runs[runs.length - 1];
            const lastEnd = last ? last.offset + last.parts.reduce((n, x) => n + x.length, 0) : -1;
            if (last && lastEnd === r.offset) last.parts.push(part);
            else runs.push({ offset: r.offset, parts: [part] });
          }
        }
        for (const r of runs) await this.writeRun(r.parts, r.offset);
        if (this.blockDevice && e > this.image.sizeBytes) {
          for (const r of this.runs(Math.max(s, this.image.sizeBytes), e)) if (!r.own) await writeZeros(this.fh, r.offset, r.length);
        }
        for (let i = a; i < b; i++) this.settle(i);
      }).finally(() => got.release());
      this.report();
    }
  }

  /** Writes chunks back to back: directly when they and the range suit it, else through the page cache. */
  private async writeRun(parts: Uint8Array[], offset: number): Promise<void> {
    const direct = this.direct;
    const length = parts.reduce((n, p) => n + p.length, 0);
    if (direct && offset % DIRECT_ALIGN === 0 && length % DIRECT_ALIGN === 0 && parts.every((p) => this.image.directWritable(p) && p.length % DIRECT_ALIGN === 0)) {
      try {
        return await writevAll(direct, parts, offset);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        this.direct = null; // refused after all: buffered from now on
        await direct.close().catch(() => undefined);
      }
    }
    await writevAll(this.fh, parts, offset);
  }

  private report(): void {
    this.onProgress?.(this.progress());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const l of [...this.locks]) await l.done;
    await this.direct?.close();
    await this.fh.close();
  }
}
