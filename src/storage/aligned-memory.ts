/**
 * Page-aligned memory for direct I/O (O_DIRECT), aligned by construction.
 *
 * Why: the kernel takes a direct transfer from any buffer aligned to the device's logical block
 * size, but on a 512e disk (512-byte logical, 4096-byte physical blocks, as most disks in the field)
 * a buffer that is 512- but not page-aligned makes every 32 MiB pack write take about a second
 * instead of 40 ms (measured: issue 12). JavaScript cannot see a buffer's address, and asking the
 * kernel which start it accepts (the probe this replaces) cannot tell 512 from 4096 alignment on
 * such a disk: both are accepted. So the alignment must come from how the memory is made. A
 * WebAssembly.Memory's buffer is reserved by V8 through the operating system's page allocator: it
 * starts at a page-aligned address, on every platform. A shared one is a SharedArrayBuffer, so chunk
 * workers can decode straight into it (restore slots); pack buffers, which only this thread fills,
 * are unshared (an ordinary ArrayBuffer: copying and filling shared memory is slower, since V8
 * must treat every store as one other threads may see). No npm package offers aligned allocation (or
 * O_DIRECT) to Node; the native add-ons that touch fs (fs-ext, posix) have neither.
 *
 * Cost: each memory reserves address space far beyond its size (guard regions, about 8 GiB on x64;
 * committed memory is only what is touched). A server runs thousands of backups and restores, so
 * memories are pooled: acquire() reuses a released one of the same size class, release() gives it
 * back, explicitly, when its owner is done (nothing depends on when the garbage collector runs).
 * The pool keeps at most `maxFreeBytes` of released memory for reuse (beyond that a released memory
 * is dropped, and V8 returns its reservation once it is collected), and refuses (null) beyond
 * `maxMemories` memories at once, counting dropped ones until collected: callers then write through
 * the page cache, never with a misaligned buffer. A memory its owner never released (a caller that
 * just drops it) is collected like any object and stops counting then; it is never reused.
 */

// The one piece of the WebAssembly API used here (the project's TypeScript libs do not include the DOM's).
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => { readonly buffer: ArrayBuffer | SharedArrayBuffer };
};

/** Linux's page size on the platforms Haven runs on; also the largest logical block size in use. */
export const PAGE_BYTES = 4096;
const WASM_PAGE_BYTES = 65536;
/** Sizes are rounded up to a whole MiB, so buffers of nearly equal length share a class. */
const CLASS_BYTES = 1 << 20;

export interface AlignedBuffer<M extends ArrayBuffer | SharedArrayBuffer> {
  /** The whole memory: `bytes` is its start, which is page-aligned. Release this. */
  readonly memory: M;
  /** `length` zeroed bytes from the start of `memory`. */
  readonly bytes: Uint8Array;
}

export interface AlignedPoolStats {
  /** Memories handed out and not yet released. */
  live: number;
  /** Released memories kept for reuse, and their bytes. */
  free: number;
  freeBytes: number;
  /** Released memories dropped beyond maxFreeBytes that V8 has not collected yet. */
  dropped: number;
}

export class AlignedMemoryPool {
  private readonly maxMemories: number;
  private readonly maxFreeBytes: number;
  /** Released memories by kind and size class, ready for reuse. */
  private readonly free = new Map<string, (ArrayBuffer | SharedArrayBuffer)[]>();
  private freeBytes = 0;
  private freeCount = 0;
  /** Memories handed out and not released; weak, so an unreleased one can still be collected. */
  private readonly out = new WeakSet<ArrayBuffer | SharedArrayBuffer>();
  private live = 0;
  private dropped = 0;
  /** Counts down a memory that was collected while handed out (never released) or after being dropped. */
  private readonly collected = new FinalizationRegistry<'live' | 'dropped'>((state) => {
    if (state === 'live') this.live--;
    else this.dropped--;
  });

  constructor(opts: { maxMemories?: number; maxFreeBytes?: number } = {}) {
    this.maxMemories = opts.maxMemories ?? 256;
    this.maxFreeBytes = opts.maxFreeBytes ?? 256 * 1024 * 1024;
  }

  /**
   * `length` zeroed bytes at a page-aligned start, in memory of this thread's own, or null when the
   * pool is at its limit or V8 refuses the reservation (the caller then uses ordinary memory and
   * buffered writes).
   */
  acquire(length: number): AlignedBuffer<ArrayBuffer> | null {
    return this.take(length, false) as AlignedBuffer<ArrayBuffer> | null;
  }

  /** The same as acquire(), in a SharedArrayBuffer that worker threads can write into. */
  acquireShared(length: number): AlignedBuffer<SharedArrayBuffer> | null {
    return this.take(length, true) as AlignedBuffer<SharedArrayBuffer> | null;
  }

  private take(length: number, shared: boolean): AlignedBuffer<ArrayBuffer | SharedArrayBuffer> | null {
    if (!Number.isSafeInteger(length) || length <= 0) throw new RangeError(`aligned buffer length must be a positive integer, got ${length}`);
    const size = Math.ceil(length / CLASS_BYTES) * CLASS_BYTES;
    let memory = this.free.get(classKey(shared, size))?.pop();
    if (memory) {
      this.freeBytes -= size;
      this.freeCount--;
      // Its last owner's bytes; 8 at a time, since byte stores into shared memory are 10x slower.
      new Float64Array(memory).fill(0);
    } else {
      if (this.live + this.freeCount + this.dropped >= this.maxMemories) return null;
      try {
        const pages = size / WASM_PAGE_BYTES;
        memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared }).buffer;
      } catch {
        return null; // address space or memory exhausted: ordinary memory will do, buffered
      }
    }
    this.out.add(memory);
    this.live++;
    this.collected.register(memory, 'live', memory);
    return { memory, bytes: new Uint8Array(memory, 0, length) };
  }

  /**
   * Gives a memory back (`memory` of what acquire() returned): the caller must not touch it (or any
   * view of it) afterwards. Releasing one twice, or one this pool did not hand out, is a
   * programming error and throws.
   */
  release(memory: ArrayBufferLike): void {
    if (!this.owns(memory)) throw new Error('aligned buffer released twice, or not from this pool');
    this.out.delete(memory);
    this.collected.unregister(memory);
    this.live--;
    const size = memory.byteLength;
    if (this.freeBytes + size > this.maxFreeBytes) {
      this.dropped++;
      this.collected.register(memory, 'dropped');
      return;
    }
    const key = classKey(memory instanceof SharedArrayBuffer, size);
    const list = this.free.get(key) ?? [];
    list.push(memory);
    this.free.set(key, list);
    this.freeBytes += size;
    this.freeCount++;
  }

  /** Whether `memory` is one this pool handed out and that is not released yet. */
  owns(memory: ArrayBufferLike): memory is ArrayBuffer | SharedArrayBuffer {
    return this.out.has(memory);
  }

  stats(): AlignedPoolStats {
    return { live: this.live, free: this.freeCount, freeBytes: this.freeBytes, dropped: this.dropped };
  }
}

function classKey(shared: boolean, size: number): string {
  return `${shared ? 's' : 'u'}${size}`;
}

/** The process's pool: pack buffers and restore slots of every repository share it. */
export const alignedMemory = new AlignedMemoryPool();
