/**
 * The last garbage collection and the last verify of a repository, kept in the repository itself
 * (`reports/gc.json`, `reports/verify.json`) by whoever ran them: `haven gc` and `haven verify`
 * on any host, or the service's own runs. So every process's metrics and console show them,
 * whichever process did the work. Counts and times only: no digests, no backup ids, no names.
 *
 * Writing one is best effort: a report that cannot be stored never fails the GC or verify it
 * describes (their own results were already returned to the caller).
 */
import type { ObjectStore } from '../storage/object-store.ts';
import { ObjectNotFoundError } from '../storage/object-store.ts';
import type { GcReport } from './garbage-collector.ts';
import type { VerifyReport } from './verifier.ts';

export interface GcRun {
  /** When the run ended (ms since the epoch). */
  finishedAt: number;
  durationMs: number;
  reclaimedBytes: number;
  /** Dead bytes left in packs (below the rewrite threshold, pending, quarantined). */
  deadBytes: number;
  repositoryBytesAfter: number;
}

export interface VerifyRun {
  finishedAt: number;
  durationMs: number;
  /** 'all': the whole repository; 'backups': some backups only (haven verify --backup, the service's re-check of error backups). */
  scope: 'all' | 'backups';
  backups: number;
  checkedChunks: number;
  damagedChunks: number;
  missingChunks: number;
  ok: boolean;
}

export interface RunReports {
  gc: GcRun | null;
  verify: VerifyRun | null;
}

const GC_KEY = 'reports/gc.json';
const VERIFY_KEY = 'reports/verify.json';

async function put(store: ObjectStore, key: string, value: object): Promise<void> {
  try {
    await store.put(key, Buffer.from(`${JSON.stringify(value)}\n`));
  } catch {
    // best effort (see above): the run's own result stands
  }
}

/** Records a GC that ran (a deferred one, which did nothing, is not recorded). */
export async function recordGc(store: ObjectStore, r: GcReport, finishedAt = Date.now()): Promise<void> {
  if (r.deferred) return;
  const run: GcRun = { finishedAt, durationMs: r.durationMs, reclaimedBytes: r.reclaimedBytes, deadBytes: r.deadBytes, repositoryBytesAfter: r.repositoryBytesAfter };
  await put(store, GC_KEY, run);
}

export async function recordVerify(store: ObjectStore, r: VerifyReport, scope: VerifyRun['scope'], finishedAt = Date.now()): Promise<void> {
  const run: VerifyRun = { finishedAt, durationMs: r.durationMs, scope, backups: r.backups.length, checkedChunks: r.checkedChunks, damagedChunks: r.damagedChunks, missingChunks: r.missingChunks, ok: r.ok };
  await put(store, VERIFY_KEY, run);
}

const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

async function get<T>(store: ObjectStore, key: string, valid: (v: Record<string, unknown>) => boolean): Promise<T | null> {
  let raw: Uint8Array;
  try {
    raw = await store.get(key);
  } catch (err) {
    if (err instanceof ObjectNotFoundError) return null;
    throw err;
  }
  try {
    const v = JSON.parse(Buffer.from(raw).toString('utf8')) as unknown;
    // A report from another version, or damaged, is as good as none.
    return typeof v === 'object' && v !== null && valid(v as Record<string, unknown>) ? (v as T) : null;
  } catch {
    return null;
  }
}

/** The last recorded runs (null: none recorded, or unreadable). */
export async function readRunReports(store: ObjectStore): Promise<RunReports> {
  const [gc, verify] = await Promise.all([
    get<GcRun>(store, GC_KEY, (v) => num(v.finishedAt) && num(v.durationMs) && num(v.reclaimedBytes) && num(v.deadBytes) && num(v.repositoryBytesAfter)),
    get<VerifyRun>(store, VERIFY_KEY, (v) => num(v.finishedAt) && num(v.durationMs) && (v.scope === 'all' || v.scope === 'backups') && num(v.backups) && num(v.checkedChunks) && num(v.damagedChunks) && num(v.missingChunks) && typeof v.ok === 'boolean'),
  ]);
  return { gc, verify };
}
