/**
 * An ObjectStore on a local directory (the embedded default).
 *
 * put() writes a temp file beside the target, fsyncs it, renames it into place and fsyncs the
 * directory (Proxmox Backup Server's insert_chunk), so a crash leaves either the old object, the
 * new one or none, never a torn one. Temp files are named `.tmp-*`; list() never shows them and
 * sweepTempFiles() removes those a crashed writer left behind.
 *
 * Buffers from allocBuffer() (pack buffers) are page-aligned memory from the process's pool
 * (aligned-memory.ts) where the file system takes direct I/O (see direct-io.ts): their aligned bulk
 * goes straight to the device, the unaligned rest of the object through the page cache, and fsync
 * makes both durable. Their owner gives them back with releaseBuffer().
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { alignedMemory } from './aligned-memory.ts';
import { acceptsDirectIo, DIRECT_ALIGN, DIRECT_IO_AVAILABLE } from './direct-io.ts';
import { assertValidKey, bodyParts, type Body, ObjectNotFoundError, type GetOptions, type ObjectInfo, type ObjectStore } from './object-store.ts';
import { writeAll } from './file-io.ts';
import { OpenFiles, type OpenFile } from './open-files.ts';

export class LocalObjectStore implements ObjectStore {
  readonly root: string;
  /** A pread: restores read each batch on its own (ObjectStore.cheapRangeReads). */
  readonly cheapRangeReads = true;
  /** Directories already known to exist, so hot paths skip mkdir. */
  private readonly knownDirs = new Set<string>();
  private direct: 'untried' | 'usable' | 'unusable' = DIRECT_IO_AVAILABLE ? 'untried' : 'unusable';
  /** The one probe of whether this directory's file system takes direct I/O, while it runs. */
  private probing: Promise<void> | null = null;
  /** Bytes written with direct I/O so far (diagnostics and tests). */
  directBytesWritten = 0;
  /** Read handles of immutable objects (packs), kept between ranged reads. */
  readonly openFiles = new OpenFiles();

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  async allocBuffer(length: number): Promise<Uint8Array> {
    if (length < MIN_DIRECT_BYTES) return new Uint8Array(length);
    if (this.direct === 'untried') {
      this.probing ??= this.probeDirect().then((ok) => {
        if (this.direct === 'untried') this.direct = ok ? 'usable' : 'unusable';
      });
      await this.probing;
    }
    if (this.direct !== 'usable') return new Uint8Array(length);
    // Without aligned memory (the pool at its limit), an ordinary buffer, written buffered.
    return alignedMemory.acquire(length)?.bytes ?? new Uint8Array(length);
  }

  /**
   * Gives back a buffer allocBuffer() returned (the buffer itself, not a view into it), exactly once,
   * when nothing uses it any more: aligned memory returns to the pool for the next pack buffer.
   */
  releaseBuffer(buf: Uint8Array): void {
    if (buf.byteOffset === 0 && alignedMemory.owns(buf.buffer)) alignedMemory.release(buf.buffer);
  }

  /** Whether this directory's file system takes direct writes: one block into a scratch temp file. */
  private async probeDirect(): Promise<boolean> {
    await this.ensureDir(this.root);
    const scratch = path.join(this.root, `.tmp-direct-${randomBytes(6).toString('hex')}`);
    try {
      const fh = await fs.open(scratch, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL | fsc.O_DIRECT, 0o600);
      try {
        return await acceptsDirectIo(fh, false);
      } finally {
        await fh.close();
      }
    } catch {
      return false; // a file system without direct I/O
    } finally {
      await fs.rm(scratch, { force: true });
    }
  }

  /** How many leading bytes of `part`, to be written at `pos`, can go with direct I/O. */
  private directLength(part: Uint8Array, pos: number): number {
    if (this.direct !== 'usable' || pos % DIRECT_ALIGN !== 0 || part.length < MIN_DIRECT_BYTES) return 0;
    // Pool memory starts page-aligned, so a page-multiple offset into it is page-aligned too.
    if (!alignedMemory.owns(part.buffer) || part.byteOffset % DIRECT_ALIGN !== 0) return 0;
    return part.length - (part.length % DIRECT_ALIGN);
  }

  private async ensureDir(dir: string): Promise<void> {
    if (!this.knownDirs.has(dir)) {
      await fs.mkdir(dir, { recursive: true });
      this.knownDirs.add(dir);
    }
  }

  private pathOf(key: string): string {
    assertValidKey(key);
    return path.join(this.root, ...key.split('/'));
  }

  async put(key: string, body: Body): Promise<void> {
    const { tmp, target, dir } = await this.writeTemp(key, body);
    await fs.rename(tmp, target);
    this.openFiles.forget(target);
    await fsyncDir(dir);
  }

  async putIfAbsent(key: string, body: Body): Promise<boolean> {
    const { tmp, target, dir } = await this.writeTemp(key, body);
    try {
      // link() fails with EEXIST when the target exists: an atomic create-if-absent.
      await fs.link(tmp, target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    } finally {
      await fs.rm(tmp, { force: true });
    }
    await fsyncDir(dir);
    return true;
  }

  /** Writes `body` to a durable temp file beside the key's path. */
  private async writeTemp(key: string, body: Body): Promise<{ tmp: string; target: string; dir: string }> {
    const target = this.pathOf(key);
    const dir = path.dirname(target);
    await this.ensureDir(dir);
    const tmp = path.join(dir, `.tmp-${randomBytes(8).toString('hex')}`);
    const fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    try {
      await this.writeBody(tmp, fh, bodyParts(body));
      await fh.sync(); // per file: makes the direct writes durable too (device cache, metadata)
    } catch (err) {
      await fh.close();
      await fs.rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    return { tmp, target, dir };
  }

  /**
   * Writes the parts back to back: the aligned bulk of allocBuffer() parts through a second,
   * O_DIRECT handle on the same file, everything else buffered. The ranges never overlap, so no
   * page-cache page shadows a direct write.
   */
  private async writeBody(tmp: string, fh: fs.FileHandle, parts: readonly Uint8Array[]): Promise<void> {
    let pos = 0;
    let run: Uint8Array[] = [];
    let runBytes = 0;
    let directFh: fs.FileHandle | null = null;
    try {
      for (const part of parts) {
        let d = this.directLength(part, pos + runBytes);
        if (d > 0) {
          if (run.length) pos = await writeParts(fh, run, pos);
          run = [];
          runBytes = 0;
          try {
            directFh ??= await fs.open(tmp, fsc.O_WRONLY | fsc.O_DIRECT);
            await writeAll(directFh, part.subarray(0, d), pos);
            this.directBytesWritten += d;
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code;
            if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
            this.direct = 'unusable'; // refused after all: buffered from now on
            d = 0;
          }
          pos += d;
        }
        if (part.length > d) {
          run.push(part.subarray(d));
          runBytes += part.length - d;
        }
      }
      if (run.length) await writeParts(fh, run, pos);
    } finally {
      await directFh?.close();
    }
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const p = this.pathOf(key);
    let file: OpenFile;
    try {
      file = options?.immutable ? await this.openFiles.acquire(p) : await openOnce(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ObjectNotFoundError(key, { cause: err });
      throw err;
    }
    try {
      const fh = file.fh;
      const offset = options?.offset ?? 0;
      let length = options?.length;
      if (length === undefined) length = Math.max(0, (await fh.stat()).size - offset);
      const into = options?.into;
      // never a slice of Node's shared pool (see ObjectStore.get)
      const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got === length ? buf : buf.subarray(0, got);
    } finally {
      file.release();
    }
  }

  /** Closes the read handles kept open (GetOptions.immutable); the store stays usable. */
  close(): void {
    this.openFiles.closeAll();
  }

  async head(key: string): Promise<ObjectInfo | null> {
    try {
      const st = await fs.stat(this.pathOf(key));
      return st.isFile() ? { key, sizeBytes: st.size, modifiedAtMs: st.mtimeMs } : null;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    // Walk only the directory the prefix names (prefixes end at a '/' in practice).
    const slash = prefix.lastIndexOf('/');
    const baseKey = slash >= 0 ? prefix.slice(0, slash) : '';
    const start = baseKey ? path.join(this.root, ...baseKey.split('/')) : this.root;
    yield* this.walk(start, baseKey, prefix);
  }

  private async *walk(dir: string, keyPrefix: string, prefix: string): AsyncIterable<ObjectInfo> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) {
      if (e.name.startsWith('.tmp-')) continue;
      const key = keyPrefix ? `${keyPrefix}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (prefix.startsWith(`${key}/`) || key.startsWith(prefix) || `${key}/`.startsWith(prefix)) {
          yield* this.walk(path.join(dir, e.name), key, prefix);
        }
      } else if (e.isFile() && key.startsWith(prefix)) {
        try {
          const st = await fs.stat(path.join(dir, e.name));
          yield { key, sizeBytes: st.size, modifiedAtMs: st.mtimeMs };
        } catch (err) {
          // Deleted between readdir and stat by a concurrent delete: it is simply gone.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
    }
  }

  async delete(key: string): Promise<void> {
    const p = this.pathOf(key);
    await fs.rm(p, { force: true });
    this.openFiles.forget(p);
  }

  /** Removes temp files older than `olderThanMs` that crashed writers left behind. */
  cleanupIncomplete(olderThanMs: number): Promise<number> {
    return this.sweepTempFiles(olderThanMs);
  }

  async sweepTempFiles(olderThanMs: number, nowMs = Date.now()): Promise<number> {
    let removed = 0;
    const visit = async (dir: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch {
        return; // directory vanished concurrently: nothing to sweep there
      }
      for (const e of entries) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) await visit(p);
        else if (e.name.startsWith('.tmp-')) {
          const st = await fs.stat(p).catch(() => null);
          if (st && nowMs - st.mtimeMs > olderThanMs) {
            await fs.rm(p, { force: true });
            removed++;
          }
        }
      }
    };
    await visit(this.root);
    return removed;
  }
}

/** A handle for one read, closed when it ends. */
async function openOnce(p: string): Promise<OpenFile> {
  const fh = await fs.open(p, 'r');
  return { fh, release: () => void fh.close().catch(() => undefined) };
}

/** Below this, a part is not worth a second file handle (pack buffers are tens of MiB). */
const MIN_DIRECT_BYTES = 1 << 20;

/** writev in groups (IOV_MAX is 1024) from `pos`, resuming after short writes; returns the end. */
async function writeParts(fh: fs.FileHandle, parts: readonly Uint8Array[], start = 0): Promise<number> {
  let pos = start;
  for (let i = 0; i < parts.length; i += 512) {
    let group = parts.slice(i, i + 512).filter((p) => p.length > 0);
    while (group.length) {
      const { bytesWritten } = await fh.writev(group, pos);
      pos += bytesWritten;
      let skip = bytesWritten;
      while (group.length && skip >= group[0]!.length) skip -= group.shift()!.length;
      if (skip > 0 && group.length) group[0] = group[0]!.subarray(skip);
    }
  }
  return pos;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
