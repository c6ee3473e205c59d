/**
 * The quarantine: stored chunks found damaged or missing (by verify, a restore, a full backup's
 * check), which no backup may deduplicate against again (docs/design.md "Quarantine", Q1-Q4).
 *
 * One object per damaged copy, `quarantine/<digest hex>-<pack id>`, so that several processes
 * (local folder or S3) add and lift entries without a read-modify-write: the key alone says which
 * copy is bad, and a listing (no reads) loads the whole set. The body (a framed blob) says who found
 * it and why, for people. An entry applies only while the chunk map locates its digest in its pack:
 * once a fresh copy is stored (the next backup of that data, or `verify --repair`), the newer chunk
 * map locates the digest in the fresh pack and the entry no longer applies; GC removes entries that
 * no chunk map names any more.
 */
import { digestHex } from './chunk-digest.ts';
import { ChunkMap } from './chunk-map.ts';
import type { Repository } from './repository.ts';

export const QUARANTINE_PREFIX = 'quarantine/';

const KEY_RE = /^quarantine\/([0-9a-f]{64})-([0-9a-f]+)$/;

export type QuarantineFinder = 'verify' | 'restore' | 'backup';

export interface QuarantineEntry {
  /** Hex digest of the chunk. */
  digest: string;
  /** The pack holding the damaged (or lost) copy. */
  packId: string;
}

export interface QuarantineFinding extends QuarantineEntry {
  foundBy: QuarantineFinder;
  reason: string;
}

export function quarantineKey(e: QuarantineEntry): string {
  return `${QUARANTINE_PREFIX}${e.digest}-${e.packId}`;
}

const NO_LOC = { packNo: 0, offset: 0, length: 0, rawLength: 0 };

/** The quarantined copies, for membership tests on the backup's hot path (one hash lookup). */
export class Quarantine {
  /** Every quarantined digest (any pack): the fast negative test. */
  private readonly digests: ChunkMap;
  /** digest hex -> packs whose copy is quarantined. */
  private readonly packs = new Map<string, Set<string>>();

  constructor(entries: QuarantineEntry[]) {
    this.digests = new ChunkMap(entries.length);
    for (const e of entries) {
      let set = this.packs.get(e.digest);
      if (!set) {
        this.packs.set(e.digest, (set = new Set()));
        this.digests.set(Buffer.from(e.digest, 'hex'), 0, NO_LOC);
      }
      set.add(e.packId);
    }
  }

  get size(): number {
    return this.digests.size;
  }

  /** Whether the copy of digests[off..off+32] in pack `packId` is quarantined. */
  has(digests: Uint8Array, off: number, packId: string): boolean {
    if (this.digests.size === 0 || !this.digests.has(digests, off)) return false;
    return this.packs.get(digestHex(digests, off))?.has(packId) ?? false;
  }

  /**
   * Whether the copy the chunk map `map` chooses for digests[off..off+32] is quarantined (Q2: a
   * backup then stores the chunk again). False when the map does not hold the digest.
   */
  applies(map: ChunkMap, digests: Uint8Array, off: number): boolean {
    if (this.digests.size === 0 || !this.digests.has(digests, off)) return false;
    const e = map.find(digests, off);
    return e >= 0 && this.has(digests, off, map.packIds[map.locationOf(e).packNo]!);
  }

  *entries(): IterableIterator<QuarantineEntry> {
    for (const [digest, packs] of this.packs) for (const packId of packs) yield { digest, packId };
  }
}

/** Loads the quarantine: one listing, no reads. Keys that do not parse are ignored. */
export async function loadQuarantine(repo: Repository): Promise<Quarantine> {
  const entries: QuarantineEntry[] = [];
  for await (const o of repo.store.list(QUARANTINE_PREFIX)) {
    const m = KEY_RE.exec(o.key);
    if (m) entries.push({ digest: m[1]!, packId: m[2]! });
  }
  return new Quarantine(entries);
}

/** Quarantines copies of chunks (idempotent: an entry already there is written again). */
export async function quarantineChunks(repo: Repository, findings: QuarantineFinding[]): Promise<void> {
  const foundAt = new Date().toISOString();
  for (const f of findings) {
    const body = repo.encode(Buffer.from(JSON.stringify({ digest: f.digest, packId: f.packId, foundBy: f.foundBy, foundAt, reason: f.reason })));
    await repo.store.put(quarantineKey(f), body);
  }
}

/**
 * Quarantines, but never fails the caller: the operation that found the damage reports it in its
 * own error, which matters more than the record (the next verify records it again).
 */
export async function quarantineQuietly(repo: Repository, findings: QuarantineFinding[]): Promise<void> {
  await quarantineChunks(repo, findings).catch(() => undefined);
}

/** Lifts entries (verify found the copy intact again, or GC found it gone). */
export async function liftQuarantine(repo: Repository, entries: QuarantineEntry[]): Promise<void> {
  for (const e of entries) await repo.store.delete(quarantineKey(e));
}

