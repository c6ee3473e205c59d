/**
 * verifyRepository: checks every manifest (or one), its index, and every chunk it references:
 * present in the chunk map, its pack present, decodable, and hashing to its digest. Reports exactly
 * which backups are damaged. Each pack is read once, whatever the number of backups using it.
 */
import { ObjectNotFoundError } from '../storage/object-store.ts';
import { DIGEST_BYTES, isZeroDigest } from './chunk-digest.ts';
import type { BackupManifest } from './manifest.ts';
import { packKey } from './pack-format.ts';
import type { Repository } from './repository.ts';
import { ChunkWorkerPool } from './worker-pool.ts';
import type { Progress } from './backup-writer.ts';
import { RepositoryLock } from './locks.ts';

export interface BackupVerdict {
  id: string;
  volumeName: string;
  ok: boolean;
  missingChunks: number;
  damagedChunks: number;
  problems: string[];
}

export interface VerifyReport {
  ok: boolean;
  backups: BackupVerdict[];
  checkedChunks: number;
  checkedBytes: number;
  checkedPacks: number;
  damagedChunks: number;
  missingChunks: number;
  durationMs: number;
}

export interface VerifyOptions {
  backupId?: string | undefined;
  pool?: ChunkWorkerPool;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
}

export async function verifyRepository(repo: Repository, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const lock = await RepositoryLock.acquire(repo.store, 'read');
  try {
    return await verifyLocked(repo, opts);
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
    for (const ref of m.indexSegments) {
      let seg: Buffer;
      try {
        seg = await repo.readIndexSegment(ref, `backup ${m.id}`);
      } catch (err) {
        v.ok = false;
        v.problems.push(err instanceof Error ? err.message : String(err));
        continue;
      }
      for (let o = 0; o < seg.length; o += DIGEST_BYTES) {
        if (isZeroDigest(seg, o)) continue;
        const e = map.find(seg, o);
        if (e >= 0) map.mark(e);
        else countUnmapped++;
      }
    }
    segmentsOk.set(m.id, v.ok);
  }

  // Pass 2: read each pack holding marked chunks once and check those chunks.
  const byPack = new Map<number, number[]>();
  let totalBytes = 0;
  for (const e of map.entries()) {
    if (!map.isMarked(e)) continue;
    const loc = map.locationOf(e);
    let list = byPack.get(loc.packNo);
    if (!list) byPack.set(loc.packNo, (list = []));
    list.push(e);
    totalBytes += loc.rawLength;
  }
  const damaged = new Uint8Array(map.size);
  const ownPool = opts.pool === undefined;
  const pool = opts.pool ?? new ChunkWorkerPool();
  let checkedChunks = 0;
  let checkedBytes = 0;
  try {
    const packNos = [...byPack.keys()];
    const workers = Array.from({ length: Math.min(pool.threads + 1, packNos.length) }, async () => {
      for (let packNo = packNos.shift(); packNo !== undefined; packNo = packNos.shift()) {
        opts.signal?.throwIfAborted();
        const entries = byPack.get(packNo)!;
        let body: Uint8Array;
        try {
          body = await repo.store.get(packKey(map.packIds[packNo]!));
        } catch (err) {
          if (!(err instanceof ObjectNotFoundError)) throw err;
          for (const e of entries) damaged[e] = 2; // 2 = missing
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
        const r = await pool.decode({ data: Buffer.concat(parts), lengths, rawLengths: locs.map((l) => l.rawLength), digests, encKey: repo.keys?.encKey, macKey: repo.keys?.macKey, returnData: false, checkDigests: true }, opts.signal);
        r.damaged.forEach((d, k) => {
          if (d) damaged[entries[k]!] = 1;
        });
        checkedChunks += entries.length;
        for (const l of locs) checkedBytes += l.rawLength;
        opts.onProgress?.({ doneBytes: checkedBytes, totalBytes });
      }
    });
    await Promise.all(workers);
  } finally {
    if (ownPool) await pool.close();
  }

  // Pass 3: name the backups that reference missing or damaged chunks.
  let missingTotal = 0;
  let damagedTotal = 0;
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
  return {
    ok: verdicts.every((v) => v.ok),
    backups: verdicts,
    checkedChunks,
    checkedBytes,
    checkedPacks: byPack.size,
    damagedChunks: damagedTotal,
    missingChunks: missingTotal + countUnmapped,
    durationMs: Math.round(performance.now() - started),
  };
}

