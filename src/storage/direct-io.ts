/**
 * Direct I/O (O_DIRECT) helpers, shared by the local object store (pack writes) and restore
 * (target writes).
 *
 * Direct transfers skip the page cache: no kernel copy, no page-cache pages to allocate (on this
 * project's virtual machines, allocating page cache for 1.6 GB of new packs cost 0.4 to 3.3 s of
 * kernel CPU per 4 GiB backup, depending on how much memory the host had taken back), and a backup
 * or restore does not evict the host's cached data. The kernel requires the buffer address, the
 * file offset and the length to be multiples of the device's logical block size (512 or 4096).
 *
 * Buffers are page-aligned by construction (aligned-memory.ts): an address the kernel merely
 * accepts is not enough, since on a 512e disk a 512-aligned buffer is accepted and then writes 25
 * times slower. What is still asked of the kernel is whether a file or device takes direct I/O at
 * all (tmpfs and some overlay file systems refuse it): one block, from an aligned buffer. Where it
 * does not, or no aligned memory can be had, writes go through the page cache; never misaligned.
 */
import { constants as fsc } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { alignedMemory, PAGE_BYTES } from './aligned-memory.ts';

/** File offsets and lengths of direct transfers are multiples of this (the largest logical block size). */
export const DIRECT_ALIGN = PAGE_BYTES;

/** Whether this platform has O_DIRECT at all (Linux). */
export const DIRECT_IO_AVAILABLE = Boolean(fsc.O_DIRECT);

/**
 * Whether `direct` (a handle opened with O_DIRECT) takes direct transfers, asked with one block
 * from a page-aligned buffer. A block device is asked by reading its first block (no side effect).
 * A file is asked by writing one block of zeros at offset 0, so it must be one that reads as zeros
 * there (just created, or truncated and sized): its content does not change. Any error means no.
 */
export async function acceptsDirectIo(direct: FileHandle, blockDevice: boolean): Promise<boolean> {
  const block = alignedMemory.acquire(DIRECT_ALIGN);
  if (!block) return false;
  try {
    const { bytes } = block;
    if (blockDevice) await direct.read(bytes, 0, bytes.length, 0);
    else await direct.write(bytes, 0, bytes.length, 0);
    return true;
  } catch {
    return false;
  } finally {
    alignedMemory.release(block.memory);
  }
}

/** A restore slot: `sab` with the batch's bytes from `base`; `aligned` when that start suits direct I/O. */
export interface DirectSlot {
  sab: SharedArrayBuffer;
  base: number;
  aligned: boolean;
}

/**
 * A slot of `length` bytes, page-aligned when `direct` (the target takes direct I/O) and aligned
 * memory can be had; otherwise ordinary shared memory, written buffered. Give it back with
 * releaseDirectSlot() once nothing (no worker, no write) uses it any more.
 */
export function directSlot(length: number, direct: boolean): DirectSlot {
  const mem = direct ? alignedMemory.acquireShared(length) : null;
  return mem ? { sab: mem.memory, base: 0, aligned: true } : { sab: new SharedArrayBuffer(length), base: 0, aligned: false };
}

export function releaseDirectSlot(slot: DirectSlot): void {
  if (slot.aligned) alignedMemory.release(slot.sab);
}
