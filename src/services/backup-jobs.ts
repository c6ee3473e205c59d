/**
 * The jobs that work on one backup (create, restore, delete), found among the queue's active jobs,
 * and waiting for them to end: how a cancelled backup's deletion lets the stopped job finish first,
 * so what that job wrote is removed after it, never under it (docs/state-machines.md, "Cancelling").
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { CatalogQueries } from '../catalog/catalog.ts';
import type { Job, JobType } from '../domain/job.ts';

export const BACKUP_JOB_TYPES: readonly JobType[] = ['bksCreateBackup', 'bksRestoreBackup', 'bksDeleteBackup'];

/** Queued or running jobs of a backup (its create, restores and deletes), oldest first. */
export async function activeJobsOfBackup(c: CatalogQueries, backupId: string): Promise<Job[]> {
  return (await c.jobs.activeJobs(BACKUP_JOB_TYPES)).filter((j) => 'backupId' in j.payload && j.payload.backupId === backupId);
}

/**
 * Waits until no job of the backup other than `self` (and other deletes) is queued or running.
 * A job whose process died ends through recovery (JobRunner.recover), so this wait ends too.
 */
export async function waitForBackupJobs(c: CatalogQueries, backupId: string, self: string, signal: AbortSignal, pollMs = 200): Promise<void> {
  for (;;) {
    const others = (await activeJobsOfBackup(c, backupId)).filter((j) => j.id !== self && j.type !== 'bksDeleteBackup');
    if (!others.length) return;
    await sleep(pollMs, undefined, { signal });
  }
}
