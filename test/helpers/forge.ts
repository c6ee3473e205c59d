/**
 * Forging stored chunks, for tests of what checks catch what. In an unencrypted repository a chunk
 * is framed with a CRC-32 only (blob-codec.ts), so a changed byte with a recomputed CRC decodes
 * cleanly: wrong bytes that pass every check of the read path but the digest and the restore's
 * whole-volume SHA-256. (Encrypted chunks are authenticated: they cannot be forged this way.)
 */
import { promises as fs } from 'node:fs';
import * as zlib from 'node:zlib';
import { decodeBlob } from '../../src/engine/blob-codec.ts';
import { parsePackTrailer, PACK_TRAILER_BYTES, readEntry } from '../../src/engine/pack-format.ts';

/** Flips one byte of the first chunk stored in an unencrypted pack file and fixes its CRC. */
export async function forgeFirstChunk(packFile: string): Promise<void> {
  const body = await fs.readFile(packFile);
  const headerLen = parsePackTrailer(body.subarray(body.length - PACK_TRAILER_BYTES));
  const header = decodeBlob(body.subarray(body.length - PACK_TRAILER_BYTES - headerLen, body.length - PACK_TRAILER_BYTES), {});
  const e = readEntry(header, 0);
  const blob = body.subarray(e.offset, e.offset + e.length);
  if (blob[0] !== 0) throw new Error(`the first chunk is not stored raw and unencrypted (flags ${blob[0]})`);
  blob[1 + (blob.length >> 1)]! ^= 0x5a; // a payload byte
  const payload = blob.subarray(1, blob.length - 4);
  blob.writeUInt32LE(zlib.crc32(payload, zlib.crc32(Uint8Array.of(0))), blob.length - 4);
  await fs.writeFile(packFile, body);
}
