/**
 * deleteBackup and collectGarbage.
 *
 * Delete order is the reverse of the write order: manifest first (the backup is gone), then its
 * index segments; its chunks are reclaimed by GC. Deleting a backup never breaks another: every
 * backup's index names its chunks directly, there are no chains.
 *
 * GC (docs/design.md "Garbage collection", rules G1-G5), in this order:
 *   A  load chunk maps, then list packs (G7), read manifests, mark every referenced chunk
 *   B  write the condemned set U (all unreferenced chunks); backups starting later avoid U
 *   C  list live locks; a live read lock (restore, verify) defers the sweep
 *   D  list manifests and chunk maps again: chunks of backups completed since A are kept
 *   E  deletable = U if no backup is running, else only chunks condemned by an earlier run before
 *      every running backup started (those backups read that set and avoided them)
 *   F  sweep: drop deletable chunks from the chunk map; delete packs with nothing live, rewrite
 *      packs with much dead space (a pack's size minus its live chunks, G4, so space that earlier
 *      runs dropped from the chunk map still counts), write one new chunk-map file, delete the old
 *      files, then the old packs; orphans of crashed backups (packs, index segments) go too
 *   G  rewrite the condemned set as what is still pending; drop quarantine entries of copies no
 *      chunk map names any more (Q5)
 */
import { recordGc } from './run-reports.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { ObjectInfo } from '../storage/object-store.ts';
import { DIGEST_BYTES, isZeroDigest } from './chunk-digest.ts';
import type { Progress } from './backup-writer.ts';
import type { ChunkMap } from './chunk-map.ts';
import { readCondemned, writeCondemned } from './gc-state.ts';
import { acquireGcLock, listLocks, removeLock, type LockRecord } from './locks.ts';
import { BACKUP_ID_RE, manifestKey, type BackupManifest } from './manifest.ts';
import { entryCount, packKey, readEntry, writeEntry, ENTRY_BYTES, PACK_TRAILER_BYTES, type PackEntries } from './pack-format.ts';
import { liftQuarantine, loadQuarantine, type QuarantineEntry } from './quarantine.ts';
import { PackWriter } from './pack-writer.ts';
import type { Repository } from './repository.ts';

/** Tolerated clock difference between hosts sharing a repository. */
export const CLOCK_SKEW_MS = 2 * 60_000;
/** A pack is rewritten when at least this share of it is dead. */
export const REWRITE_DEAD_RATIO = 0.2;
/**
 * A pack's bytes that are neither chunk data nor dead (G4): its header (one entry per chunk, framed:
 * at most 29 bytes of flags, nonce and tag) and trailer. Counted for the live chunks only, so a
 * header's entries for dead chunks count as dead.
 */
function packOverheadBytes(liveChunks: number): number {
  return liveChunks * ENTRY_BYTES + 29 + PACK_TRAILER_BYTES;
}

export async function deleteBackup(repo: Repository, backupId: string): Promise<void> {
  if (!BACKUP_ID_RE.test(backupId)) throw new AppError(ErrorCode.BackupNotFound, `backup ${backupId} not found`);
  if (!(await repo.store.head(manifestKey(backupId)))) throw new AppError(ErrorCode.BackupNotFound, `backup ${backupId} not found`);
  await repo.store.delete(manifestKey(backupId)); // D1: the backup disappears here
  for await (const o of repo.store.list(`indexes/${backupId}/`)) await repo.store.delete(o.key); // D2
}

export interface GcReport {
  deferred: boolean;
  deferredReason?: string;
  backups: number;
  referencedChunks: number;
  unreferencedChunks: number;
  deletedChunks: number;
  pendingChunks: number;
  deletedPacks: number;
  rewrittenPacks: number;
  writtenPacks: number;
  orphanPacksDeleted: number;
  orphanIndexesDeleted: number;
  staleLocksRemoved: number;
  reclaimedBytes: number;
  /**
   * Dead bytes left in packs after the run (G4: each pack's size minus its referenced chunks and
   * their header entries): packs below the rewrite threshold, chunks still pending, and packs kept
   * because they hold a quarantined chunk.
   */
  deadBytes: number;
  /** Quarantine entries removed because no chunk map names their copy any more (Q5). */
  quarantineReleased: number;
  repositoryBytesBefore: number;
  repositoryBytesAfter: number;
  durationMs: number;
}

export interface GcOptions {
  signal?: AbortSignal;
  nowMs?: () => number;
  /**
   * Progress of the two long phases: `mark` in index bytes read (every backup's chunk list), then
   * `sweep` in pack bytes decided on (rewritten packs are read and written again).
   */
  onProgress?: (phase: 'mark' | 'sweep', p: Progress) => void;
}

async function readAllManifests(repo: Repository): Promise<Map<string, BackupManifest>> {
  const { manifests, damaged } = await repo.listBackups();
  if (damaged.length) {
    // Without a manifest we cannot know what it references: refusing is the only safe answer.
    throw new AppError(ErrorCode.RepositoryCorrupt, `garbage collection refused: manifest of backup ${damaged[0]!.id} is unreadable (${damaged[0]!.error})`);
  }
  return new Map(manifests.map((m) => [m.id, m]));
}

async function markManifest(repo: Repository, map: ChunkMap, m: BackupManifest, onSegment?: (bytes: number) => void): Promise<void> {
  for (const ref of m.indexSegments) {
    const seg = await repo.readIndexSegment(ref, `backup ${m.id}`); // a damaged index aborts GC: safe
    onSegment?.(seg.length);
    for (let o = 0; o < seg.length; o += DIGEST_BYTES) {
      if (isZeroDigest(seg, o)) continue;
      const e = map.find(seg, o);
      if (e >= 0) map.mark(e);
    }
  }
}

/** Repository size, without lock objects (GC's own lock would otherwise count as reclaimed) and run reports. */
async function sumBytes(repo: Repository): Promise<number> {
  let n = 0;
  for await (const o of repo.store.list('')) if (!o.key.startsWith('locks/') && !o.key.startsWith('reports/')) n += o.sizeBytes;
  return n;
}

export async function collectGarbage(repo: Repository, opts: GcOptions = {}): Promise<GcReport> {
  const started = performance.now();
  const now = opts.nowMs ?? Date.now;
  const lock = await acquireGcLock(repo.store);
  try {
    const report: GcReport = {
      deferred: false, backups: 0, referencedChunks: 0, unreferencedChunks: 0, deletedChunks: 0, pendingChunks: 0, deletedPacks: 0,
      rewrittenPacks: 0, writtenPacks: 0, orphanPacksDeleted: 0, orphanIndexesDeleted: 0, staleLocksRemoved: 0, reclaimedBytes: 0, deadBytes: 0, quarantineReleased: 0,
      repositoryBytesBefore: await sumBytes(repo), repositoryBytesAfter: 0, durationMs: 0,
    };
    const { stale } = await listLocks(repo.store, now());
    for (const l of stale) await removeLock(repo.store, l);
    report.staleLocksRemoved = stale.length;
    await repo.store.cleanupIncomplete?.(CLOCK_SKEW_MS);

    // A. Chunk maps before packs: every pack a loaded chunk map names was durable before that map
    // was written (W1), so the pack listing below contains it.
    const prevCondemned = await readCondemned(repo);
    const { map, files, packs: packLists } = await repo.loadChunkMap();
    const quarantine = await loadQuarantine(repo);
    const packObjects = new Map<string, ObjectInfo>();
    for await (const o of repo.store.list('packs/')) packObjects.set(o.key.slice(o.key.lastIndexOf('/') + 1), o);
    const indexObjects: ObjectInfo[] = [];
    for await (const o of repo.store.list('indexes/')) indexObjects.push(o);
    const manifests = await readAllManifests(repo);
    const markTotal = [...manifests.values()].reduce((n, m) => n + m.chunkCount * DIGEST_BYTES, 0);
    let markDone = 0;
    opts.onProgress?.('mark', { doneBytes: 0, totalBytes: markTotal });
    for (const m of manifests.values()) {
      await markManifest(repo, map, m, (bytes) => {
        markDone += bytes;
        opts.onProgress?.('mark', { doneBytes: Math.min(markDone, markTotal), totalBytes: markTotal });
      });
    }
    opts.signal?.throwIfAborted();

    // B
    const unreferenced: number[] = [];
    for (const e of map.entries()) if (!map.isMarked(e)) unreferenced.push(e);
    const condemnedAtMs = now();
    await writeCondemned(repo, condemnedAtMs, unreferenced.map((e) => map.digestOf(e)));

    // C
    const { live } = await listLocks(repo.store, now());
    const liveBackups = live.filter((l) => l.kind === 'backup');
    const readers = live.filter((l) => l.kind === 'read');

    // D
    const manifestsNow = await readAllManifests(repo);
    for (const [id, m] of manifestsNow) if (!manifests.has(id)) await markManifest(repo, map, m);
    const filesNow: string[] = [];
    for await (const o of repo.store.list('chunkmaps/')) filesNow.push(o.key);
    const newFiles = filesNow.filter((f) => !files.includes(f));
    const packsInNewFiles = new Set((await repo.readChunkMapFiles(newFiles)).flat().map((p) => p.packId));

    // E
    const prevUsable = liveBackups.every((l) => l.startedAtMs > prevCondemned.condemnedAtMs + CLOCK_SKEW_MS) && prevCondemned.condemnedAtMs > 0;
    const deletable = new Uint8Array(map.size);
    const pending: Uint8Array[] = [];
    for (const e of unreferenced) {
      if (map.isMarked(e)) continue; // referenced by a backup completed during this run
      report.unreferencedChunks++;
      if (liveBackups.length === 0 || (prevUsable && prevCondemned.digests.has(map.digestOf(e)))) deletable[e] = 1;
      else pending.push(map.digestOf(e));
    }
    report.backups = manifestsNow.size;
    for (const e of map.entries()) if (map.isMarked(e)) report.referencedChunks++;

    if (readers.length) {
      for (const [packId, p] of packLists) {
        const info = packObjects.get(packId);
        if (info) report.deadBytes += packDeadBytes(map, info.sizeBytes, p, (e) => map.isMarked(e));
      }
      report.deferred = true;
      report.deferredReason = `${readers.length} restore/verify run(s) in progress: packs are left in place`;
      await writeCondemned(repo, condemnedAtMs, [...pending, ...unreferenced.filter((e) => deletable[e]).map((e) => map.digestOf(e))]);
      report.pendingChunks = report.unreferencedChunks;
      return finish();
    }

    // F: decide per pack what is live. A pack's entry is live when it is the chunk map's chosen
    // location for its digest (duplicates elsewhere are dead copies) and the digest is not deletable.
    const writer = new PackWriter(repo, opts.signal ? { signal: opts.signal } : {});
    const keep: PackEntries[] = [];
    const dropPacks: string[] = [];
    const sweepTotal = [...packLists.keys()].reduce((n, id) => n + (packObjects.get(id)?.sizeBytes ?? 0), 0);
    let sweepDone = 0;
    opts.onProgress?.('sweep', { doneBytes: 0, totalBytes: sweepTotal });
    try {
      for (const [packId, p] of packLists) {
        const info = packObjects.get(packId);
        if (info) {
          sweepDone += info.sizeBytes;
          opts.onProgress?.('sweep', { doneBytes: sweepDone, totalBytes: sweepTotal });
        }
        const packNo = map.packNo(packId);
        const n = entryCount(p);
        const liveIdx: number[] = [];
        let liveBytes = 0;
        let holdsQuarantined = false;
        for (let i = 0; i < n; i++) {
          const en = readEntry(p.entries, i);
          const e = map.find(p.entries, en.digestOffset);
          const loc = e < 0 ? undefined : map.locationOf(e);
          // Dead: deletable, or a duplicate copy whose digest the chunk map locates elsewhere.
          if (e < 0 || deletable[e] || loc!.packNo !== packNo || loc!.offset !== en.offset) continue;
          liveIdx.push(i);
          liveBytes += en.length;
          if (quarantine.has(p.entries, en.digestOffset, packId)) holdsQuarantined = true;
        }
        if (!info) {
          // Named by a chunk map but absent from the store: keep its entries so verify keeps
          // reporting the loss precisely; there is nothing to reclaim.
          keep.push(p);
          continue;
        }
        if (liveIdx.length === 0) {
          dropPacks.push(packId);
          report.deletedPacks++;
          continue;
        }
        // G4: dead space is the pack's size minus what is live in it, whatever earlier runs dropped
        // from the chunk map. Q5: a pack holding a live quarantined copy is not rewritten (the damage
        // would move into a new pack, out of the quarantine's sight).
        const deadBytes = Math.max(0, info.sizeBytes - liveBytes - packOverheadBytes(liveIdx.length));
        if (deadBytes / info.sizeBytes >= REWRITE_DEAD_RATIO && !holdsQuarantined) {
          const body = await repo.store.get(packKey(packId));
          // The old pack is deleted once its live chunks are copied: a short read (a dropped
          // connection) copied as it is would lose them. Nothing has been deleted yet at this point.
          if (body.length !== info.sizeBytes) {
            throw new AppError(ErrorCode.StorageError, `pack ${packId} read back ${body.length} of its ${info.sizeBytes} bytes; garbage collection stopped before deleting anything`);
          }
          for (const i of liveIdx) {
            const en = readEntry(p.entries, i);
            await writer.add(body.subarray(en.offset, en.offset + en.length), p.entries, en.digestOffset, en.rawLength);
          }
          dropPacks.push(packId);
          report.rewrittenPacks++;
        } else if (liveIdx.length === n) {
          keep.push(p);
          report.deadBytes += packDeadBytes(map, info.sizeBytes, p, (e) => map.isMarked(e));
        } else {
          const entries = new Uint8Array(liveIdx.length * ENTRY_BYTES);
          liveIdx.forEach((i, k) => {
            const en = readEntry(p.entries, i);
            writeEntry(entries, k, p.entries, en.digestOffset, en.offset, en.length, en.rawLength);
          });
          keep.push({ packId, entries });
          report.deadBytes += packDeadBytes(map, info.sizeBytes, { packId, entries }, (e) => map.isMarked(e));
        }
      }
    } catch (err) {
      await writer.drain(); // its uploads settle and its buffers go back to the store
      throw err;
    }
    for (let e = 0; e < map.size; e++) if (deletable[e]) report.deletedChunks++;
    const written = await writer.finish();
    report.writtenPacks = written.length;
    // Chunks still pending, copied into new packs, are dead space there too.
    for (const w of written) {
      const n = entryCount(w);
      for (let i = 0; i < n; i++) {
        const en = readEntry(w.entries, i);
        const e = map.find(w.entries, en.digestOffset);
        if (e >= 0 && !map.isMarked(e)) report.deadBytes += en.length;
      }
    }
    // G3: the new chunk map is durable before any old file or pack goes.
    if (keep.length || written.length) await repo.writeChunkMapFile([...keep, ...written]);
    for (const f of files) await repo.store.delete(f);
    for (const packId of dropPacks) await repo.store.delete(packKey(packId));

    // Orphans: packs no chunk map lists, index segments no manifest owns, unless a running backup
    // may own them (it started before the object was written).
    const mayOwn = (l: LockRecord, o: ObjectInfo): boolean => l.startedAtMs <= o.modifiedAtMs + CLOCK_SKEW_MS;
    for (const [packId, info] of packObjects) {
      if (packLists.has(packId) || packsInNewFiles.has(packId)) continue;
      if (liveBackups.some((l) => mayOwn(l, info))) continue;
      await repo.store.delete(info.key);
      report.orphanPacksDeleted++;
    }
    const orphanIds = new Set<string>();
    for (const o of indexObjects) {
      const id = o.key.split('/')[1] ?? '';
      if (manifestsNow.has(id) || liveBackups.some((l) => l.backupId === id)) continue;
      if (!(await repo.store.head(manifestKey(id)))) {
        await repo.store.delete(o.key);
        orphanIds.add(id);
      }
    }
    report.orphanIndexesDeleted = orphanIds.size;

    // G
    await writeCondemned(repo, condemnedAtMs, pending);
    report.pendingChunks = pending.length;
    // Q5: entries for copies no chunk map names any more (the pack went, or the copy was dropped as
    // dead or as a duplicate of a fresh copy) no longer protect anything.
    const named = new Set<string>();
    for (const p of [...keep, ...written]) {
      const n = entryCount(p);
      for (let i = 0; i < n; i++) named.add(`${Buffer.from(p.entries.subarray(i * ENTRY_BYTES, i * ENTRY_BYTES + DIGEST_BYTES)).toString('hex')}-${p.packId}`);
    }
    const unnamed: QuarantineEntry[] = [];
    for (const q of quarantine.entries()) if (!named.has(`${q.digest}-${q.packId}`) && !packsInNewFiles.has(q.packId)) unnamed.push(q);
    await liftQuarantine(repo, unnamed);
    report.quarantineReleased = unnamed.length;
    return finish();

    async function finish(): Promise<GcReport> {
      report.repositoryBytesAfter = await sumBytes(repo);
      report.reclaimedBytes = Math.max(0, report.repositoryBytesBefore - report.repositoryBytesAfter);
      report.durationMs = Math.round(performance.now() - started);
      await recordGc(repo.store, report, now());
      return report;
    }
  } finally {
    await lock.release();
  }

}

/**
 * G4: a pack's size minus its live chunks and their header entries. A copy is live when `isLive`
 * says so of its chunk and the chunk map locates the digest in this very copy (not a duplicate).
 */
function packDeadBytes(map: ChunkMap, sizeBytes: number, p: PackEntries, isLive: (e: number) => boolean): number {
  const packNo = map.packNo(p.packId);
  let liveBytes = 0;
  let live = 0;
  const n = entryCount(p);
  for (let i = 0; i < n; i++) {
    const en = readEntry(p.entries, i);
    const e = map.find(p.entries, en.digestOffset);
    if (e < 0 || !isLive(e)) continue;
    const loc = map.locationOf(e);
    if (loc.packNo !== packNo || loc.offset !== en.offset) continue;
    liveBytes += en.length;
    live++;
  }
  return Math.max(0, sizeBytes - liveBytes - packOverheadBytes(live));
}
