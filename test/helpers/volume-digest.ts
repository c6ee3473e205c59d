/**
 * The volume digest a backup of some bytes must record, computed here from the bytes themselves:
 * each chunk named with the repository's chunk digest (all-zero chunks: the all-zero digest).
 */
import { readFile } from 'node:fs/promises';
import type { BackupManifest } from '../../src/engine/manifest.ts';
import type { Repository } from '../../src/engine/repository.ts';
import { chunkHasher, DIGEST_BYTES } from '../../src/engine/chunk-digest.ts';
import { VolumeDigest } from '../../src/engine/volume-digest.ts';

/** `chunkAt(i)` gives chunk i's bytes, or null for a chunk known to be all zeros. */
export function expectedVolumeDigest(repo: Repository, sizeBytes: number, chunkAt: (i: number, offset: number, length: number) => Uint8Array | null): string {
  const chunkSize = repo.config.chunkSizeBytes;
  const name = chunkHasher(repo.chunkDigest);
  const root = new VolumeDigest({ sizeBytes, chunkSizeBytes: chunkSize, alg: repo.chunkDigest.alg });
  const d = new Uint8Array(DIGEST_BYTES);
  for (let i = 0, off = 0; off < sizeBytes; i++, off += chunkSize) {
    const c = chunkAt(i, off, Math.min(chunkSize, sizeBytes - off));
    d.fill(0);
    if (c && c.some((b) => b !== 0)) name(c, d, 0);
    root.update(d);
  }
  return root.digestHex();
}

export function volumeDigestOfBytes(repo: Repository, data: Uint8Array): string {
  return expectedVolumeDigest(repo, data.length, (_i, off, len) => data.subarray(off, off + len));
}

/** The volume digest of a file's bytes (small files: read whole), as `repo` would record it. */
export async function volumeDigestOfFile(repo: Repository, file: string): Promise<string> {
  return volumeDigestOfBytes(repo, await readFile(file));
}

/** A manifest's volume digest; fails the test for a manifest from before it (format 1). */
export function digestOfManifest(m: BackupManifest): string {
  if (m.formatVersion !== 2) throw new Error(`backup ${m.id} has a format-${m.formatVersion} manifest, without a volume digest`);
  return m.volumeDigest;
}

/** The volume digest of `sizeBytes` bytes that are zero but for `extents` (a sparse volume), without materialising it. */
export function volumeDigestOfExtents(repo: Repository, sizeBytes: number, extents: readonly { offset: number; data: Uint8Array }[]): string {
  return expectedVolumeDigest(repo, sizeBytes, (_i, off, len) => {
    let chunk: Uint8Array | null = null;
    for (const e of extents) {
      const from = Math.max(off, e.offset);
      const to = Math.min(off + len, e.offset + e.data.length);
      if (from >= to) continue;
      chunk ??= new Uint8Array(len);
      chunk.set(e.data.subarray(from - e.offset, to - e.offset), from - off);
    }
    return chunk;
  });
}
