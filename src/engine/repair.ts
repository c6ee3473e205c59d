/**
 * Repair (`haven verify --repair --from <volume>`): stores fresh copies of quarantined chunks that
 * a volume still holds. The volume is read and chunked exactly as a backup would (fixed chunks from
 * offset 0, so the same data gives the same digests); every chunk whose digest is wanted is encoded
 * and packed, then one chunk-map file names the new packs. Being newer, it locates those digests in
 * the fresh packs: the quarantined copies stop being used (Q4), and every backup that referenced
 * them is whole again, whatever backup it came from (indexes name digests, not places).
 *
 * Write order as a backup's (W1, W2): packs durable, then the chunk-map file. It holds a backup
 * lock meanwhile, so GC does not take the new packs for orphans (G5).
 */
import { AppError, ErrorCode, throwIfAborted } from '../domain/errors.ts';
import { DIGEST_BYTES, digestHex } from './chunk-digest.ts';
import { ChunkMap } from './chunk-map.ts';
import { RepositoryLock } from './locks.ts';
import { PackWriter } from './pack-writer.ts';
import { loadQuarantine } from './quarantine.ts';
import type { Repository } from './repository.ts';
import type { VolumeSource } from './volume-source.ts';
import type { ChunkWorkerPool } from './worker-pool.ts';

export interface RepairResult {
  /** Quarantined chunks the chunk map still chooses (what was wanted). */
  wantedChunks: number;
  /** Chunks stored again, and their raw bytes. */
  restoredChunks: number;
  restoredBytes: number;
  /** Digests still wanted after reading every volume given. */
  stillWanted: string[];
}

const NO_LOC = { packNo: 0, offset: 0, length: 0, rawLength: 0 };

/** The digests of quarantined copies that the chunk map still chooses: what a repair must find. */
export async function wantedChunks(repo: Repository): Promise<ChunkMap> {
  const [{ map }, quarantine] = await Promise.all([repo.loadChunkMap(), loadQuarantine(repo)]);
  const wanted = new ChunkMap();
  for (const q of quarantine.entries()) {
    const d = Buffer.from(q.digest, 'hex');
    if (quarantine.applies(map, d, 0)) wanted.set(d, 0, NO_LOC);
  }
  return wanted;
}

export async function repairFromVolumes(repo: Repository, sources: VolumeSource[], opts: { pool: ChunkWorkerPool; signal?: AbortSignal }): Promise<RepairResult> {
  const lock = await RepositoryLock.acquire(repo.store, 'backup');
  try {
    const wanted = await wantedChunks(repo);
    const result: RepairResult = { wantedChunks: wanted.size, restoredChunks: 0, restoredBytes: 0, stillWanted: [] };
    const found = new ChunkMap();
    if (wanted.size === 0) return result;
    const chunkSize = repo.config.chunkSizeBytes;
    const batchBytes = Math.max(1, Math.floor((8 * 1024 * 1024) / chunkSize)) * chunkSize;
    const sab = new SharedArrayBuffer(batchBytes);
    const packs = new PackWriter(repo, { signal: opts.signal });
    try {
      for (const source of sources) {
        for (let pos = 0; pos < source.sizeBytes && found.size < wanted.size; pos += batchBytes) {
          throwIfAborted(opts.signal);
          const len = Math.min(batchBytes, source.sizeBytes - pos);
          const got = await source.read(new Uint8Array(sab, 0, len), len, pos);
          if (got !== len) throw new AppError(ErrorCode.VolumeUnreadable, `short read at byte ${pos + got} of a repair volume`);
          const digests = await opts.pool.hash({ sab, offset: 0, length: len, chunkSizeBytes: chunkSize, digest: repo.chunkDigest }, opts.signal);
          for (let i = 0; i * chunkSize < len; i++) {
            const off = i * DIGEST_BYTES;
            if (!wanted.has(digests, off) || found.has(digests, off)) continue;
            const raw = new Uint8Array(sab, i * chunkSize, Math.min(chunkSize, len - i * chunkSize));
            await packs.add(repo.encode(Buffer.from(raw)), digests, off, raw.length); // a copy: encoders take no shared memory
            found.set(digests, off, NO_LOC);
            result.restoredChunks++;
            result.restoredBytes += raw.length;
          }
        }
      }
    } catch (err) {
      await packs.drain(); // its uploads settle and its buffers go back to the store
      throw err;
    }
    // W1 then W2: the packs are durable before the chunk-map file that makes them the chosen copies.
    const written = await packs.finish();
    if (written.length) await repo.writeChunkMapFile(written);
    for (const e of wanted.entries()) if (!found.has(wanted.digestOf(e))) result.stillWanted.push(digestHex(wanted.digestOf(e)));
    return result;
  } finally {
    await lock.release();
  }
}
