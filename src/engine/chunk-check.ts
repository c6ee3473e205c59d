/**
 * checkStoredChunks: reads given chunks from their packs (neighbours in one ranged read) and checks
 * each in a worker: it decodes (CRC or AES-GCM tag, decompression), has its raw length, and hashes
 * to its digest. A full backup checks every chunk it would deduplicate against this way (Q3).
 * verify reads whole packs instead (it checks most of their chunks anyway).
 */
import { ObjectNotFoundError } from '../storage/object-store.ts';
import { DIGEST_BYTES } from './chunk-digest.ts';
import type { ChunkMap } from './chunk-map.ts';
import { packKey } from './pack-format.ts';
import type { Repository } from './repository.ts';
import type { ChunkWorkerPool } from './worker-pool.ts';

/** Per chunk: sound, damaged (does not decode or hash right), or missing (its pack is absent or short). */
export type ChunkCondition = 0 | 1 | 2;

const GAP_BYTES = 256 * 1024;
const RUN_BYTES = 8 * 1024 * 1024;

/** Checks the chunk-map entries `entries` of `map`; resolves to each one's condition. */
export async function checkStoredChunks(repo: Repository, map: ChunkMap, entries: number[], pool: ChunkWorkerPool, signal?: AbortSignal): Promise<Map<number, ChunkCondition>> {
  const result = new Map<number, ChunkCondition>();
  const sorted = entries.map((e) => ({ e, loc: map.locationOf(e) })).sort((a, b) => a.loc.packNo - b.loc.packNo || a.loc.offset - b.loc.offset);
  // Runs of chunks close together in one pack, each read with one request.
  const runs: { packNo: number; offset: number; end: number; items: typeof sorted }[] = [];
  for (const it of sorted) {
    const r = runs[runs.length - 1];
    if (r && r.packNo === it.loc.packNo && it.loc.offset >= r.end && it.loc.offset - r.end <= GAP_BYTES && it.loc.offset + it.loc.length - r.offset <= RUN_BYTES) {
      r.end = it.loc.offset + it.loc.length;
      r.items.push(it);
    } else {
      runs.push({ packNo: it.loc.packNo, offset: it.loc.offset, end: it.loc.offset + it.loc.length, items: [it] });
    }
  }
  await Promise.all(
    runs.map(async (r) => {
      let body: Uint8Array;
      try {
        body = await repo.store.get(packKey(map.packIds[r.packNo]!), { offset: r.offset, length: r.end - r.offset, immutable: true, ...(signal ? { signal } : {}) });
      } catch (err) {
        if (!(err instanceof ObjectNotFoundError)) throw err;
        for (const it of r.items) result.set(it.e, 2);
        return;
      }
      const parts: Uint8Array[] = [];
      const lengths: number[] = [];
      const rawLengths: number[] = [];
      const digests = new Uint8Array(r.items.length * DIGEST_BYTES);
      const checked: number[] = [];
      for (const it of r.items) {
        const at = it.loc.offset - r.offset;
        if (at + it.loc.length > body.length) {
          result.set(it.e, 2); // the pack is shorter than the chunk map says
          continue;
        }
        digests.set(map.digestOf(it.e), checked.length * DIGEST_BYTES);
        parts.push(body.subarray(at, at + it.loc.length));
        lengths.push(it.loc.length);
        rawLengths.push(it.loc.rawLength);
        checked.push(it.e);
      }
      if (!checked.length) return;
      const bad = await pool.check({ data: Buffer.concat(parts), lengths, rawLengths, digests: digests.subarray(0, checked.length * DIGEST_BYTES), encKey: repo.keys?.encKey, digest: repo.chunkDigest }, signal);
      bad.forEach((d, k) => result.set(checked[k]!, d ? 1 : 0));
    }),
  );
  return result;
}
