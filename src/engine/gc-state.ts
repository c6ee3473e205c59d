/**
 * The condemned set: chunks a GC run found unreferenced and will remove once no backup that might
 * still reference them is running (docs/design.md "Garbage collection"). Backups load it at start
 * and treat condemned chunks as absent, storing fresh copies instead of referencing them.
 *
 * Object `gc/condemned`, a framed blob: u64 LE condemnedAtMs | digests (32 bytes each).
 */
import { ObjectNotFoundError } from '../storage/object-store.ts';
import { DIGEST_BYTES } from './chunk-digest.ts';
import { ChunkMap } from './chunk-map.ts';
import type { Repository } from './repository.ts';

export const CONDEMNED_KEY = 'gc/condemned';

export interface CondemnedSet {
  condemnedAtMs: number;
  digests: ChunkMap;
}

const NO_LOC = { packNo: 0, offset: 0, length: 0, rawLength: 0 };

export async function readCondemned(repo: Repository): Promise<CondemnedSet> {
  let raw: Buffer;
  try {
    raw = await repo.getDecoded(CONDEMNED_KEY, 'GC state');
  } catch (err) {
    if (err instanceof ObjectNotFoundError) return { condemnedAtMs: 0, digests: new ChunkMap(0) };
    throw err;
  }
  const n = (raw.length - 8) / DIGEST_BYTES;
  const digests = new ChunkMap(n);
  for (let i = 0; i < n; i++) digests.set(raw, 8 + i * DIGEST_BYTES, NO_LOC);
  return { condemnedAtMs: Number(raw.readBigUInt64LE(0)), digests };
}

export async function writeCondemned(repo: Repository, condemnedAtMs: number, digests: Uint8Array[]): Promise<void> {
  if (digests.length === 0) {
    await repo.store.delete(CONDEMNED_KEY);
    return;
  }
  const buf = Buffer.allocUnsafe(8 + digests.length * DIGEST_BYTES);
  buf.writeBigUInt64LE(BigInt(condemnedAtMs), 0);
  digests.forEach((d, i) => buf.set(d, 8 + i * DIGEST_BYTES));
  await repo.store.put(CONDEMNED_KEY, repo.encode(buf));
}
