/**
 * Repository locks: how backups and GC runs announce themselves (docs/locking.md).
 *
 * A lock is an object `locks/<kind>-<id>` holding who runs (host, pid), since when, and for backups
 * the backup id. Locks are refreshed while their holder works; a lock is stale when its holder is a
 * dead process of this very system (same boot and PID namespace, not merely the same host name:
 * containers often share one) or it has not been refreshed for STALE_AFTER_MS. GC honours live backup
 * locks (its grace rule) and removes stale ones; two GC runs never overlap.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { AppError, ErrorCode } from '../domain/errors.ts';
import { ObjectNotFoundError, type ObjectStore } from '../storage/object-store.ts';

export type LockKind = 'backup' | 'gc' | 'read';

export interface LockRecord {
  id: string;
  kind: LockKind;
  host: string;
  pid: number;
  startedAtMs: number;
  refreshedAtMs: number;
  backupId?: string;
  /**
   * Which process table `pid` belongs to: the kernel's boot id and the PID namespace. Absent in
   * locks written before it was recorded (then only the refresh time can make them stale).
   */
  pidSpace?: string;
}

/**
 * This process's PID space, or '' where it cannot be told (not Linux). Two containers with one
 * host name but their own PID namespaces differ here, so neither takes the other's live lock for
 * a dead process of its own.
 */
export const PID_SPACE = ((): string => {
  try {
    return `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()}:${readlinkSync('/proc/self/ns/pid')}`;
  } catch {
    return '';
  }
})();

/**
 * The `host` a lock records: the host name, plus a tag of the PID space. Builds from before
 * pidSpace was recorded judge a lock by host name and pid alone; with the tag they never take a
 * lock of this build for one of their own dead processes (they wait for its refresh time instead).
 */
export const LOCK_HOST = PID_SPACE ? `${hostname()}#${createHash('sha256').update(PID_SPACE).digest('hex').slice(0, 8)}` : hostname();

export const LOCK_REFRESH_MS = 60_000;
export const STALE_AFTER_MS = 10 * 60_000;

function lockKey(kind: LockKind, id: string): string {
  return `locks/${kind}-${id}`;
}

export class RepositoryLock {
  readonly record: LockRecord;
  private readonly store: ObjectStore;
  private timer: NodeJS.Timeout | undefined;

  private constructor(store: ObjectStore, record: LockRecord) {
    this.store = store;
    this.record = record;
  }

  static async acquire(store: ObjectStore, kind: LockKind, extra: { backupId?: string } = {}): Promise<RepositoryLock> {
    const now = Date.now();
    const record: LockRecord = { id: randomBytes(8).toString('hex'), kind, host: LOCK_HOST, pid: process.pid, pidSpace: PID_SPACE, startedAtMs: now, refreshedAtMs: now, ...extra };
    const lock = new RepositoryLock(store, record);
    await lock.write();
    lock.timer = setInterval(() => {
      lock.record.refreshedAtMs = Date.now();
      // A failed refresh is retried at the next tick; a lock that stays unrefreshed goes stale,
      // which only makes GC more conservative towards this holder, never less.
      lock.write().catch(() => undefined);
    }, LOCK_REFRESH_MS);
    lock.timer.unref();
    return lock;
  }

  private async write(): Promise<void> {
    await this.store.put(lockKey(this.record.kind, this.record.id), Buffer.from(JSON.stringify(this.record)));
  }

  /**
   * Removes the lock. Best effort: a lock the store fails to remove is no longer refreshed, so it
   * goes stale (STALE_AFTER_MS) and GC removes it; the holder's own outcome (a backup whose
   * manifest is written, or the error that ended it) stands instead of a release error.
   */
  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.store.delete(lockKey(this.record.kind, this.record.id)).catch(() => undefined);
  }
}

/** Whether a process of this host is alive (EPERM: it is, and another user's). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function isStale(l: LockRecord, nowMs: number): boolean {
  // The pid says something only within the process table it came from.
  if (PID_SPACE !== '' && l.pidSpace === PID_SPACE && l.pid !== process.pid && !processAlive(l.pid)) return true;
  return nowMs - l.refreshedAtMs > STALE_AFTER_MS;
}

export async function listLocks(store: ObjectStore, nowMs = Date.now()): Promise<{ live: LockRecord[]; stale: LockRecord[] }> {
  const live: LockRecord[] = [];
  const stale: LockRecord[] = [];
  for await (const o of store.list('locks/')) {
    let rec: LockRecord;
    try {
      rec = JSON.parse(Buffer.from(await store.get(o.key)).toString('utf8')) as LockRecord;
    } catch (err) {
      if (err instanceof ObjectNotFoundError) continue; // released meanwhile
      // An unreadable lock is treated as live until it is old: conservative for GC.
      rec = { id: o.key, kind: 'backup', host: '?', pid: 0, startedAtMs: o.modifiedAtMs, refreshedAtMs: o.modifiedAtMs };
    }
    (isStale(rec, nowMs) ? stale : live).push(rec);
  }
  return { live, stale };
}

export async function removeLock(store: ObjectStore, l: LockRecord): Promise<void> {
  await store.delete(lockKey(l.kind, l.id));
}

/** Takes the GC lock, refusing when another live GC holds one. */
export async function acquireGcLock(store: ObjectStore): Promise<RepositoryLock> {
  const lock = await RepositoryLock.acquire(store, 'gc');
  const { live } = await listLocks(store);
  const rival = live.find((l) => l.kind === 'gc' && l.id !== lock.record.id && (l.startedAtMs < lock.record.startedAtMs || (l.startedAtMs === lock.record.startedAtMs && l.id < lock.record.id)));
  if (rival) {
    await lock.release();
    throw new AppError(ErrorCode.RepositoryLocked, `another garbage collection is running (host ${rival.host}, pid ${rival.pid})`);
  }
  return lock;
}
