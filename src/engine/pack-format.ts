/**
 * Packs and chunk-map files: how chunks are grouped into few large objects (restic/kopia style), so
 * a fine chunk granularity does not mean millions of objects.
 *
 * Pack object `packs/<2 hex>/<pack id>`:
 *   blob 0 | blob 1 | ... | header blob | u32 LE header blob length | "HVPK"
 * The header blob (framed like every blob) lists, per chunk, digest (32) | offset | stored length |
 * raw length (u32 LE each). A pack is thus self-describing: the chunk map can be rebuilt from packs.
 *
 * Chunk-map file `chunkmaps/<id>` (one per backup or GC run), a framed blob of:
 *   u32 pack count, then per pack: u8 id length | id (ascii) | u32 entry count | entries (44 bytes)
 */
import { DIGEST_BYTES } from './chunk-digest.ts';

export const PACK_MAGIC = Buffer.from('HVPK');
export const PACK_TRAILER_BYTES = 8;
export const ENTRY_BYTES = DIGEST_BYTES + 12;

export interface PackEntries {
  packId: string;
  /** Concatenated entries, ENTRY_BYTES each. */
  entries: Uint8Array;
}

export function entryCount(p: PackEntries): number {
  return p.entries.length / ENTRY_BYTES;
}

export function writeEntry(buf: Uint8Array, i: number, digest: Uint8Array, dOff: number, offset: number, length: number, rawLength: number): void {
  const base = i * ENTRY_BYTES;
  buf.set(digest.subarray(dOff, dOff + DIGEST_BYTES), base);
  const v = new DataView(buf.buffer, buf.byteOffset + base + DIGEST_BYTES, 12);
  v.setUint32(0, offset, true);
  v.setUint32(4, length, true);
  v.setUint32(8, rawLength, true);
}

export function readEntry(buf: Uint8Array, i: number): { digestOffset: number; offset: number; length: number; rawLength: number } {
  const base = i * ENTRY_BYTES;
  const v = new DataView(buf.buffer, buf.byteOffset + base + DIGEST_BYTES, 12);
  return { digestOffset: base, offset: v.getUint32(0, true), length: v.getUint32(4, true), rawLength: v.getUint32(8, true) };
}

export function packKey(packId: string): string {
  return `packs/${packId.slice(0, 2)}/${packId}`;
}

export function packTrailer(headerBlobLength: number): Buffer {
  const t = Buffer.alloc(PACK_TRAILER_BYTES);
  t.writeUInt32LE(headerBlobLength, 0);
  PACK_MAGIC.copy(t, 4);
  return t;
}

export function parsePackTrailer(t: Uint8Array): number {
  const b = Buffer.from(t.buffer, t.byteOffset, t.length);
  if (b.length !== PACK_TRAILER_BYTES || !b.subarray(4).equals(PACK_MAGIC)) throw new Error('not a Haven pack (bad trailer)');
  return b.readUInt32LE(0);
}

export function serializeChunkMapFile(packs: PackEntries[]): Buffer {
  let size = 4;
  for (const p of packs) size += 1 + p.packId.length + 4 + p.entries.length;
  const out = Buffer.allocUnsafe(size);
  let o = out.writeUInt32LE(packs.length, 0);
  for (const p of packs) {
    o = out.writeUInt8(p.packId.length, o);
    o += out.write(p.packId, o, 'ascii');
    o = out.writeUInt32LE(entryCount(p), o);
    out.set(p.entries, o);
    o += p.entries.length;
  }
  return out;
}

export function parseChunkMapFile(buf: Buffer): PackEntries[] {
  const packs: PackEntries[] = [];
  let o = 0;
  const n = buf.readUInt32LE(o);
  o += 4;
  for (let i = 0; i < n; i++) {
    const len = buf.readUInt8(o);
    o += 1;
    const packId = buf.toString('ascii', o, o + len);
    o += len;
    const count = buf.readUInt32LE(o);
    o += 4;
    const bytes = count * ENTRY_BYTES;
    if (o + bytes > buf.length) throw new Error('chunk map file truncated');
    packs.push({ packId, entries: buf.subarray(o, o + bytes) });
    o += bytes;
  }
  return packs;
}
