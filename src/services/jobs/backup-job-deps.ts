/** What the volume-backup jobs (create, delete, restore) need from the service that queues them. */
import type { Catalog } from '../../catalog/catalog.ts';
import type { Clock } from '../../domain/clock.ts';
import type { Volume } from '../../domain/model.ts';
import type { BackupEngine } from '../backup-engine.ts';
import type { BackupServiceEvents, LiveSessions } from '../backup-service.ts';
import type { VolumeHosts } from '../volume-hosts.ts';

export interface BackupJobDeps {
  catalog: Catalog;
  clock: Clock;
  engine: BackupEngine;
  /** Where volume files are worked on: this process, or their host's agent. */
  hosts: VolumeHosts;
  events: BackupServiceEvents;
  log: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
  /** Reclaims space in the background (after deletes, and what failed backups wrote). */
  collectGarbageSoon(): void;
  /** Writes a backup onto a volume's own file, checked on open; keeps a larger volume's size. */
  restoreVolumeNow(backupId: string, volume: Volume, opts: { signal: AbortSignal; jobId: string; onProgress: (done: number, total: number) => void }): Promise<void>;
  /** Live restores (null: none in this process). */
  live(): LiveSessions | null;
}

/** An error's message, for fail reasons. */
export function failureText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
