/**
 * verifyRepository: checks every manifest (or some), its index, and every chunk it references:
 * present in the chunk map, its pack present, decodable, and hashing to its digest. A backup with
 * a volume digest (manifest format 2) must also have an index whose root is that digest (cheap: 32
 * bytes per chunk); together with the chunk checks this proves what a restore would prove, without
 * writing anything. Reports exactly
 * which backups are damaged, and for each damaged chunk which backups use it. Each pack is read once,
 * whatever the number of backups using it.
 *
 * Damaged or missing copies are quarantined (Q1: no backup deduplicates against them again); a
 * quarantined copy found intact again (its pack was put back) is released (Q4).
 */
import { recordVerify } from './run-reports.ts';
import { asCancelledIfAborted } from '../domain/errors.ts';
import { ObjectNotFoundError } from '../storage/object-store.ts';
import { DIGEST_BYTES, digestHex, isZeroDigest } from './chunk-digest.ts';
import type { ChunkMap } from './chunk-map.ts';
import type { BackupManifest } from './manifest.ts';
import { packKey } from './pack-format.ts';
import type { Repository } from './repository.ts';
import { VolumeDigest } from './volume-digest.ts';
import { ChunkWorkerPool } from './worker-pool.ts';
import type { Progress } from './backup-writer.ts';
import { RepositoryLock } from './locks.ts';
import { liftQuarantine, loadQuarantine, quarantineChunks, type QuarantineEntry, type QuarantineFinding } from './quarantine.ts';

export interface BackupVerdict {
  id: string;
  volumeName: string;
  ok: boolean;
  missingChunks: number;
  damagedChunks: number;
  problems: string[];
}

/** One damaged or missing stored chunk, and the backups verified here that use it. */
export interface DamagedChunk {
  digest: string;
  packId: string;
  problem: 'damaged' | 'missing';
  backups: string[];
}

export interface VerifyReport {
  ok: boolean;
  backups: BackupVerdict[];
  /** Every damaged or missing stored chunk (at most MAX_LISTED_CHUNKS of them), with the backups using it. */
  chunks: DamagedChunk[];
  /** Copies newly quarantined by this run, and quarantined copies found intact and released. */
  quarantined: number;
  released: number;
  checkedChunks: number;
  checkedBytes: number;
  checkedPacks: number;
  damagedChunks: number;
  missingChunks: number;
  durationMs: number;
}

/** The report names at most this many damaged chunks (each with its backups); counts stay exact. */
export const MAX_LISTED_CHUNKS = 1000;

export interface VerifyOptions {
  backupId?: string | undefined;
  /** Verify only these backups (ids without a manifest are reported as damaged). */
  backupIds?: string[] | undefined;
  pool?: ChunkWorkerPool;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
}

export async function verifyRepository(repo: Repository, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const lock = await RepositoryLock.acquire(repo.store, 'read');
  try {
    const report = await verifyLocked(repo, opts);
    await recordVerify(repo.store, report, opts.backupId !== undefined || opts.backupIds !== undefined ? 'backups' : 'all');
    return report;
  } catch (err) {
    throw asCancelledIfAborted(err, opts.signal, 'verify');
  } finally {
    await lock.release();
  }
}

async function verifyLocked(repo: Repository, opts: VerifyOptions): Promise<VerifyReport> {
  const started = performance.now();
  const { map } = await repo.loadChunkMap();
  const verdicts: BackupVerdict[] = [];
  const manifests: BackupManifest[] = [];
  if (opts.backupId !== undefined) {
    manifests.push(await repo.readManifest(opts.backupId));
  } else if (opts.backupIds !== undefined) {
    for (const id of opts.backupIds) {
      try {
        manifests.push(await repo.readManifest(id));
      } catch (err) {
        verdicts.push({ id, volumeName: '?', ok: false, missingChunks: 0, damagedChunks: 0, problems: [err instanceof Error ? err.message : String(err)] });
      }
    }
  } else {
    const listed = await repo.listBackups();
    manifests.push(...listed.manifests);
    for (const d of listed.damaged) verdicts.push({ id: d.id, volumeName: '?', ok: false, missingChunks: 0, damagedChunks: 0, problems: [d.error] });
  }

  // Pass 1: mark every chunk the backups reference; unreadable indexes damage their backup.
  const segmentsOk = new Map<string, boolean>();
  let countUnmapped = 0;
  for (const m of manifests) {
    const v: BackupVerdict = { id: m.id, volumeName: m.volume.name, ok: true, missingChunks: 0, damagedChunks: 0, problems: [] };
    verdicts.push(v);
    const root = m.formatVersion === 2 ? new VolumeDigest({ sizeBytes: m.sizeBytes, chunkSizeBytes: m.chunkSizeBytes, alg: repo.chunkDigest.alg }) : null;
    let rootProblem: string | null = null;
    for (const ref of m.indexSegments) {
      let seg: Buffer;
      try {
        seg = await repo.readIndexSegment(ref, `backup ${m.id}`);
      } catch (err) {
        v.ok = false;
        v.problems.push(err instanceof Error ? err.message : String(err));
        continue;
      }
      try {
        root?.update(seg);
      } catch (err) {
        rootProblem ??= err instanceof Error ? err.message : String(err);
      }
      for (let o = 0; o < seg.length; o += DIGEST_BYTES) {
        if (isZeroDigest(seg, o)) continue;
        const e = map.find(seg, o);
        if (e >= 0) map.mark(e);
        else countUnmapped++;
      }
    }
    segmentsOk.set(m.id, v.ok);
    if (root && v.ok && m.formatVersion === 2) {
      if (rootProblem === null) {
        try {
          const got = root.digestHex();
          if (got !== m.volumeDigest) rootProblem = `its index has volume digest ${got}, the manifest records ${m.volumeDigest}`;
        } catch (err) {
          rootProblem = err instanceof Error ? err.message : String(err);
        }
      }
      if (rootProblem !== null) {
        v.ok = false;
        v.problems.push(`the index does not match the backup's volume digest: ${rootProblem}`);
      }
    }
  }

  // Pass 2: read each pack holding marked chunks once and check those chunks.
  const marked: number[] = [];
  let totalBytes = 0;
  for (const e of map.entries()) {
    if (!map.isMarked(e)) continue;
    marked.push(e);
    totalBytes += map.locationOf(e).rawLength;
  }
  const damaged = new Uint8Array(map.size);
  /** Where a chunk's checked copy lies, when a GC moved it meanwhile (its pack in the fresh map). */
  const movedTo = new Map<number, string>();
  const ownPool = opts.pool === undefined;
  const pool = opts.pool ?? new ChunkWorkerPool();
  const progress = { checkedChunks: 0, checkedBytes: 0, checkedPacks: 0, totalBytes };
  try {
    const result = await checkChunks(repo, map, marked, pool, progress, opts);
    for (const [e, r] of result) damaged[e] = r;
    // A pack may have been rewritten by a GC that ran meanwhile: GC writes the new chunk map before
    // it deletes old packs (G4), so look the missing chunks up again in a fresh chunk map.
    const gone = marked.filter((e) => damaged[e] === 2);
    if (gone.length) {
      const fresh = (await repo.loadChunkMap()).map;
      const moved: number[] = [];
      const backRef = new Map<number, number>();
      for (const e of gone) {
        const e2 = fresh.find(map.digestOf(e));
        if (e2 >= 0 && fresh.packIds[fresh.locationOf(e2).packNo] !== map.packIds[map.locationOf(e).packNo]) {
          moved.push(e2);
          backRef.set(e2, e);
        }
      }
      for (const [e2, r] of await checkChunks(repo, fresh, moved, pool, progress, opts)) {
        damaged[backRef.get(e2)!] = r;
        movedTo.set(backRef.get(e2)!, fresh.packIds[fresh.locationOf(e2).packNo]!);
      }
    }
  } finally {
    if (ownPool) await pool.close();
  }
  const { checkedChunks, checkedBytes } = progress;

  // Pass 3: name the backups that reference missing or damaged chunks, and per such chunk its backups.
  let missingTotal = 0;
  let damagedTotal = 0;
  const users = new Map<number, string[]>();
  for (const v of verdicts) {
    const m = manifests.find((x) => x.id === v.id);
    if (!m || !segmentsOk.get(m.id)) continue;
    for (const ref of m.indexSegments) {
      const seg = await repo.readIndexSegment(ref, `backup ${m.id}`);
      for (let o = 0; o < seg.length; o += DIGEST_BYTES) {
        if (isZeroDigest(seg, o)) continue;
        const e = map.find(seg, o);
        if (e < 0 || damaged[e] === 2) v.missingChunks++;
        else if (damaged[e] === 1) v.damagedChunks++;
        if (e >= 0 && damaged[e]) {
          let list = users.get(e);
          if (!list && users.size < MAX_LISTED_CHUNKS) users.set(e, (list = []));
          if (list && list[list.length - 1] !== m.id) list.push(m.id);
        }
      }
    }
    if (v.missingChunks) v.problems.push(`${v.missingChunks} referenced chunk(s) missing`);
    if (v.damagedChunks) v.problems.push(`${v.damagedChunks} referenced chunk(s) damaged`);
    v.ok = v.problems.length === 0;
  }
  for (let e = 0; e < damaged.length; e++) {
    if (damaged[e] === 1) damagedTotal++;
    else if (damaged[e] === 2) missingTotal++;
  }
  for (const v of verdicts) if (!manifests.some((m) => m.id === v.id)) v.ok = false;

  // Q1, Q4: quarantine the bad copies, release quarantined copies found intact.
  const packOf = (e: number): string => movedTo.get(e) ?? map.packIds[map.locationOf(e).packNo]!;
  const quarantine = await loadQuarantine(repo);
  const findings: QuarantineFinding[] = [];
  const release: QuarantineEntry[] = [];
  const chunks: DamagedChunk[] = [];
  for (const e of marked) {
    const digest = map.digestOf(e);
    const packId = packOf(e);
    if (damaged[e]) {
      const problem = damaged[e] === 1 ? 'damaged' : 'missing';
      if (!quarantine.has(digest, 0, packId)) findings.push({ digest: digestHex(digest), packId, foundBy: 'verify', reason: `${problem} (verify)` });
      if (chunks.length < MAX_LISTED_CHUNKS) chunks.push({ digest: digestHex(digest), packId, problem, backups: users.get(e) ?? [] });
    } else if (quarantine.has(digest, 0, packId)) {
      release.push({ digest: digestHex(digest), packId });
    }
  }
  await quarantineChunks(repo, findings);
  await liftQuarantine(repo, release);
  return {
    ok: verdicts.every((v) => v.ok),
    backups: verdicts,
    chunks,
    quarantined: findings.length,
    released: release.length,
    checkedChunks,
    checkedBytes,
    checkedPacks: progress.checkedPacks,
    damagedChunks: damagedTotal,
    missingChunks: missingTotal + countUnmapped,
    durationMs: Math.round(performance.now() - started),
  };
}

/**
 * Reads each pack holding the given entries once and checks them. Result per entry:
 * 0 ok, 1 damaged, 2 missing (its pack is absent).
 */
async function checkChunks(
  repo: Repository,
  map: ChunkMap,
  entriesToCheck: number[],
  pool: ChunkWorkerPool,
  progress: { checkedChunks: number; checkedBytes: number; checkedPacks: number; totalBytes: number },
  opts: VerifyOptions,
): Promise<Map<number, number>> {
  const result = new Map<number, number>();
  const byPack = new Map<number, number[]>();
  for (const e of entriesToCheck) {
    const packNo = map.locationOf(e).packNo;
    let list = byPack.get(packNo);
    if (!list) byPack.set(packNo, (list = []));
    list.push(e);
  }
  const packNos = [...byPack.keys()];
  const workers = Array.from({ length: Math.min(pool.threads + 1, packNos.length) }, async () => {
    for (let packNo = packNos.shift(); packNo !== undefined; packNo = packNos.shift()) {
      opts.signal?.throwIfAborted();
      const entries = byPack.get(packNo)!;
      progress.checkedPacks++;
      let body: Uint8Array;
      try {
        body = await repo.store.get(packKey(map.packIds[packNo]!));
      } catch (err) {
        if (!(err instanceof ObjectNotFoundError)) throw err;
        for (const e of entries) result.set(e, 2);
        continue;
      }
      const locs = entries.map((e) => map.locationOf(e));
      const lengths: number[] = [];
      const parts: Uint8Array[] = [];
      const digests = new Uint8Array(entries.length * DIGEST_BYTES);
      entries.forEach((e, k) => {
        const l = locs[k]!;
        // A chunk lying past the pack's end decodes as damaged (empty blob).
        parts.push(body.subarray(Math.min(l.offset, body.length), Math.min(l.offset + l.length, body.length)));
        lengths.push(Math.min(l.length, Math.max(0, body.length - l.offset)));
        digests.set(map.digestOf(e), k * DIGEST_BYTES);
      });
      const damaged = await pool.check({ data: Buffer.concat(parts), lengths, rawLengths: locs.map((l) => l.rawLength), digests, encKey: repo.keys?.encKey, digest: repo.chunkDigest }, opts.signal);
      damaged.forEach((d, k) => result.set(entries[k]!, d ? 1 : 0));
      progress.checkedChunks += entries.length;
      for (const l of locs) progress.checkedBytes += l.rawLength;
      opts.onProgress?.({ doneBytes: progress.checkedBytes, totalBytes: progress.totalBytes });
    }
  });
  await Promise.all(workers);
  return result;
}

/**
 * The backups whose index names any of `digests` (hex), oldest first: who a damaged chunk affects.
 * Reads every backup's index (as GC's mark does); for error messages, not for hot paths.
 */
export async function backupsUsingChunks(repo: Repository, digests: string[]): Promise<string[]> {
  if (!digests.length) return [];
  const wanted = digests.map((d) => Buffer.from(d, 'hex'));
  const users: string[] = [];
  for (const m of (await repo.listBackups()).manifests) {
    let uses = false;
    for (const ref of m.indexSegments) {
      let seg: Buffer;
      try {
        seg = await repo.readIndexSegment(ref, `backup ${m.id}`);
      } catch {
        break; // a damaged index is reported by verify; here it only cannot be searched
      }
      for (let o = 0; o < seg.length && !uses; o += DIGEST_BYTES) uses = wanted.some((w) => w.equals(seg.subarray(o, o + DIGEST_BYTES)));
      if (uses) break;
    }
    if (uses) users.push(m.id);
  }
  return users;
}
