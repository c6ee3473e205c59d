/**
 * Direct I/O (O_DIRECT) helpers, shared by the local object store (pack writes) and restore
 * (target writes).
 *
 * Direct transfers skip the page cache: no kernel copy, no page-cache pages to allocate (on this
 * project's virtual machines, allocating page cache for 1.6 GB of new packs cost 0.4 to 3.3 s of
 * kernel CPU per 4 GiB backup, depending on how much memory the host had taken back), and a backup
 * or restore does not evict the host's cached data. The kernel requires the buffer address, the
 * file offset and the length to be multiples of the device's logical block size; 4 KiB covers
 * every device in use.
 *
 * JavaScript cannot see a buffer's address, so alignment is found by asking the kernel: a direct
 * transfer of one block from a candidate start succeeds only when that start is aligned (EINVAL
 * otherwise, before any I/O). ArrayBuffer backing stores never move, so a start found once stays
 * aligned for the buffer's life. Nothing here is written by hand that a library does: no npm
 * package exposes aligned allocation or O_DIRECT to Node.
 */
import { constants as fsc } from 'node:fs';

export const DIRECT_ALIGN = 4096;

/** Whether this platform has O_DIRECT at all (Linux). */
export const DIRECT_IO_AVAILABLE = Boolean(fsc.O_DIRECT);

export type ProbeResult = 'ok' | 'misaligned' | 'unusable';

/** Runs one probe transfer; EINVAL means misaligned, any other error means direct I/O is unusable there. */
export async function probeTransfer(transfer: () => Promise<unknown>): Promise<ProbeResult> {
  try {
    await transfer();
    return 'ok';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EINVAL' ? 'misaligned' : 'unusable';
  }
}

/**
 * Finds the first block-aligned start within `buffer` (which must have DIRECT_ALIGN spare bytes):
 * tries `hint` first (allocations of one size tend to share their offset within a page), then every
 * 16-byte step. Returns the start, null when none worked, or 'unusable' when direct I/O failed for
 * another reason than alignment.
 */
export async function findAlignedStart(
  buffer: ArrayBufferLike,
  attempt: (view: Uint8Array) => Promise<ProbeResult>,
  hint = 0,
): Promise<number | null | 'unusable'> {
  const candidates = [hint];
  for (let b = 0; b < DIRECT_ALIGN; b += 16) if (b !== hint) candidates.push(b);
  for (const base of candidates) {
    const r = await attempt(new Uint8Array(buffer, base, DIRECT_ALIGN));
    if (r === 'ok') return base;
    if (r === 'unusable') return 'unusable';
  }
  return null;
}
