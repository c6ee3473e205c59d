/**
 * Chunk digests: SHA-256 of the chunk, or HMAC-SHA-256 under the repository's MAC key when the
 * repository is encrypted. The all-zero digest marks a hole (an all-zero chunk, never stored).
 */
import { createHash, createHmac } from 'node:crypto';

export const DIGEST_BYTES = 32;
export const ZERO_DIGEST = new Uint8Array(DIGEST_BYTES);

export function chunkDigest(data: Uint8Array, macKey: Uint8Array | undefined, out: Uint8Array, outOffset: number): void {
  const d = macKey ? createHmac('sha256', macKey).update(data).digest() : createHash('sha256').update(data).digest();
  out.set(d, outOffset);
}

export function isZeroDigest(digests: Uint8Array, offset: number): boolean {
  for (let i = 0; i < DIGEST_BYTES; i++) if (digests[offset + i] !== 0) return false;
  return true;
}

export function digestHex(digests: Uint8Array, offset = 0): string {
  return Buffer.from(digests.buffer, digests.byteOffset + offset, DIGEST_BYTES).toString('hex');
}
