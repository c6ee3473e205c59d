/**
 * Chunk digests: SHA-256 of the chunk, or HMAC-SHA-256 under the repository's MAC key when the
 * repository is encrypted. The all-zero digest marks a hole (an all-zero chunk, never stored).
 */
import { createHash } from 'node:crypto';

export const DIGEST_BYTES = 32;
export const ZERO_DIGEST = new Uint8Array(DIGEST_BYTES);

export type ChunkHasher = (data: Uint8Array, out: Uint8Array, outOffset: number) => void;

/**
 * A digest function for one repository. The keyed variant is HMAC-SHA-256 (RFC 2104) computed from
 * pre-keyed inner and outer hash states that are copied per chunk: identical to createHmac, but
 * without re-deriving the key pads for every 64 KiB chunk.
 */
export function chunkHasher(macKey: Uint8Array | undefined): ChunkHasher {
  if (!macKey) return (data, out, off) => out.set(createHash('sha256').update(data).digest(), off);
  if (macKey.length > 64) throw new Error('MAC key longer than the SHA-256 block');
  const ipad = Buffer.alloc(64, 0x36);
  const opad = Buffer.alloc(64, 0x5c);
  for (let i = 0; i < macKey.length; i++) {
    ipad[i]! ^= macKey[i]!;
    opad[i]! ^= macKey[i]!;
  }
  const inner = createHash('sha256').update(ipad);
  const outer = createHash('sha256').update(opad);
  return (data, out, off) => out.set(outer.copy().update(inner.copy().update(data).digest()).digest(), off);
}

export function isZeroDigest(digests: Uint8Array, offset: number): boolean {
  for (let i = 0; i < DIGEST_BYTES; i++) if (digests[offset + i] !== 0) return false;
  return true;
}

export function digestHex(digests: Uint8Array, offset = 0): string {
  return Buffer.from(digests.buffer, digests.byteOffset + offset, DIGEST_BYTES).toString('hex');
}
