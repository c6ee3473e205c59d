/**
 * The job that deletes a volume backup (VBS bksDeleteBackup), in the reverse of the write order:
 * the manifest and index go first, then the row (and its sharings); the chunks go at the next GC.
 * A job still working on the backup (a cancelled create or restore) ends first.
 */
import { jobFailure, type JobHandler } from '../job-runner.ts';
import { waitForBackupJobs } from '../backup-jobs.ts';
import { failureText, type BackupJobDeps } from './backup-job-deps.ts';

export function deleteBackupJob(d: BackupJobDeps): JobHandler<'bksDeleteBackup'> {
  return {
    run: async (job, ctx) => {
      const { backupId } = job.payload;
      // A cancelled create (or restore) ends first: a manifest it still wrote is deleted here.
      await waitForBackupJobs(d.catalog, backupId, job.id, ctx.signal);
      await d.engine.delete(backupId);
      await d.catalog.transaction(async (c) => {
        await c.policies.deleteSharingsOfBackup(backupId);
        await c.backups.deleteBackupRow(backupId);
      });
      // Reclaim the space in the background; a failed GC is retried after the next delete.
      d.collectGarbageSoon();
      return job.entities;
    },
    fail: async (job, err) => {
      await d.catalog.backups.applyBackupEvent(job.payload.backupId, 'failDelete', d.clock.now(), { failReason: failureText(err) });
      return jobFailure(err, 'DeleteBackup Task-fail: ');
    },
  };
}
