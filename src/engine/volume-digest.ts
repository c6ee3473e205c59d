/**
 * The volume digest (the "integrity root", version 1) of a volume image: what a backup records and
 * a restore proves, in place of a SHA-256 over every byte (docs/design.md "Volume digest").
 *
 *   root = SHA-256( "haven/volume-digest/v1" 0x00
 *                   | volume size in bytes (u64, big-endian) | chunk size in bytes (u32, big-endian)
 *                   | length of the chunk-digest name (u8) | the name ("sha256", "hmac-sha256", ...)
 *                   | digest of chunk 0 | digest of chunk 1 | ... | digest of the last chunk )
 *
 * Each chunk digest is the repository's (chunk-digest.ts), 32 bytes, the all-zero digest for a hole;
 * the last chunk holds the rest of the volume. The header has one way to be read and the number of
 * digests follows from it, so two different (size, chunk size, algorithm, digest list) never hash the
 * same bytes. It needs the chunk digests only, never the bytes of unchanged or hole chunks, and
 * hashes 32 bytes per chunk (1/2048 of a volume at 64 KiB chunks): nothing sequential per byte.
 *
 * Roots made with a keyed chunk digest depend on the repository's key: they compare within one
 * repository (or with `haven digest --repo` against it), not across repositories.
 */
import { createHash, type Hash } from 'node:crypto';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { DIGEST_BYTES, type ChunkDigestAlg } from './chunk-digest.ts';

const TAG = 'haven/volume-digest/v1';

export interface VolumeDigestParams {
  sizeBytes: number;
  chunkSizeBytes: number;
  alg: ChunkDigestAlg;
}

/** A volume digest fed with the chunk digests in volume order; `digestHex` once all are in. */
export class VolumeDigest {
  private readonly hash: Hash;
  private readonly expectedChunks: number;
  private chunks = 0;

  constructor(p: VolumeDigestParams) {
    if (!Number.isSafeInteger(p.sizeBytes) || p.sizeBytes < 0) throw new AppError(ErrorCode.InvalidArgument, `volume digest: volume size ${p.sizeBytes} is not a byte count`);
    if (!Number.isInteger(p.chunkSizeBytes) || p.chunkSizeBytes <= 0 || p.chunkSizeBytes > 0xffffffff) {
      throw new AppError(ErrorCode.InvalidArgument, `volume digest: chunk size ${p.chunkSizeBytes} is out of range`);
    }
    const alg = Buffer.from(p.alg, 'ascii');
    const header = Buffer.alloc(TAG.length + 1 + 8 + 4 + 1 + alg.length);
    let at = header.write(TAG, 0, 'ascii') + 1; // then the 0x00 that ends the tag
    at = header.writeBigUInt64BE(BigInt(p.sizeBytes), at);
    at = header.writeUInt32BE(p.chunkSizeBytes, at);
    at = header.writeUInt8(alg.length, at);
    alg.copy(header, at);
    this.hash = createHash('sha256').update(header);
    this.expectedChunks = Math.ceil(p.sizeBytes / p.chunkSizeBytes);
  }

  /** Adds the next chunks' digests (a whole number of DIGEST_BYTES), in volume order. */
  update(digests: Uint8Array): void {
    const n = digests.length / DIGEST_BYTES;
    if (!Number.isInteger(n) || this.chunks + n > this.expectedChunks) {
      throw new AppError(ErrorCode.RepositoryCorrupt, `volume digest: ${this.chunks + n} chunk digests given for a volume of ${this.expectedChunks} chunks`);
    }
    this.hash.update(digests);
    this.chunks += n;
  }

  /** The root, in hex; throws unless exactly one digest per chunk was given. */
  digestHex(): string {
    if (this.chunks !== this.expectedChunks) {
      throw new AppError(ErrorCode.RepositoryCorrupt, `volume digest: ${this.chunks} chunk digests given for a volume of ${this.expectedChunks} chunks`);
    }
    return this.hash.digest('hex');
  }
}
