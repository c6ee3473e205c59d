/** Positioned file I/O that finishes what it starts (short reads and writes are continued). */
import type { promises as fs } from 'node:fs';

/** Reads `into.length` bytes at `position`; past the end of the file the rest reads as zeros. */
export async function readAll(fh: fs.FileHandle, into: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < into.length) {
    const { bytesRead } = await fh.read(into, off, into.length - off, position + off);
    if (bytesRead === 0) {
      into.fill(0, off);
      return;
    }
    off += bytesRead;
  }
}

/** Writes all of `data` at `position` (a write that makes no progress is an I/O error). */
export async function writeAll(fh: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    off += bytesWritten;
  }
}

let zeroBlock: Uint8Array | null = null;

/** Writes `length` zero bytes at `offset` (a block device's holes). */
export async function writeZeros(fh: fs.FileHandle, offset: number, length: number): Promise<void> {
  zeroBlock ??= new Uint8Array(1024 * 1024);
  for (let at = 0; at < length; at += zeroBlock.length) await writeAll(fh, zeroBlock.subarray(0, Math.min(zeroBlock.length, length - at)), offset + at);
}

/** Writes `parts` back to back from `position` (one writev per call, continued after short writes). */
export async function writevAll(fh: fs.FileHandle, parts: Uint8Array[], position: number): Promise<void> {
  let rest = parts.filter((p) => p.length > 0);
  let pos = position;
  while (rest.length) {
    const { bytesWritten } = await fh.writev(rest.slice(0, 1024), pos);
    if (bytesWritten <= 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    pos += bytesWritten;
    let n = bytesWritten;
    while (n > 0 && rest.length) {
      if (rest[0]!.length <= n) {
        n -= rest[0]!.length;
        rest = rest.slice(1);
      } else {
        rest = [rest[0]!.subarray(n), ...rest.slice(1)];
        n = 0;
      }
    }
  }
}
