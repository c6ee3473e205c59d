/**
 * The job that creates a volume backup (VBS bksCreateBackup): the engine writes chunks, index and
 * manifest from the volume's (or its snapshot's) file; only then does the row become `available`
 * (write order, docs/design.md). A failure marks the row `error`; recovery after a crash completes
 * a backup whose manifest the engine had already written.
 */
import type { BackupCompletion } from '../../catalog/backup-queries.ts';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import type { JobOf } from '../../domain/job.ts';
import type { Backup } from '../../domain/model.ts';
import { completionOf, fileRef, type BackupSource } from '../volume-host.ts';
import { jobFailure, type JobHandler } from '../job-runner.ts';
import { failureText, type BackupJobDeps } from './backup-job-deps.ts';

export function createBackupJob(d: BackupJobDeps): JobHandler<'bksCreateBackup'> {
  /** The row becomes available with the engine's results; retention runs after (its failure is only logged). */
  const finish = async (job: JobOf<'bksCreateBackup'>, backupId: string, r: BackupCompletion): Promise<Record<string, string>> => {
    if (!(await d.catalog.backups.completeBackup(backupId, r, d.clock.now()))) throw new AppError(ErrorCode.BackupInvalidState, `backup ${backupId} left the creating state while it was written`);
    const done = await d.catalog.backups.getBackupById(backupId);
    if (done && d.events.backupSucceeded) {
      // The backup is safe either way; a retention failure is logged, not the job's failure.
      await d.events.backupSucceeded(done).catch((err: unknown) => d.log.error({ err, backupId }, 'retention after backup failed'));
    }
    return job.entities;
  };

  /** What a backup reads, and on which host: its snapshot's file, or its volume's (a running guest's disk through its QEMU). */
  const sourceOf = async (b: Backup): Promise<{ host: string | null; source: BackupSource }> => {
    const v = await d.catalog.volumes.getVolumeById(b.volumeId);
    if (!v) throw new AppError(ErrorCode.VolumeNotFound, `volume ${b.volumeId} no longer exists`);
    if (b.snapshotId) {
      const snap = await d.catalog.volumes.getSnapshot(b.projectId, b.snapshotId);
      if (!snap) throw new AppError(ErrorCode.SnapshotNotFound, `snapshot ${b.snapshotId} no longer exists`);
      return { host: v.host, source: { kind: 'snapshot', path: snap.path, format: snap.format } };
    }
    return { host: v.host, source: { kind: 'volume', volume: fileRef(v) } };
  };

  return {
    run: async (job, ctx) => {
      const p = job.payload;
      const b = await d.catalog.backups.getBackupById(p.backupId);
      if (!b || b.status !== 'creating') throw new AppError(ErrorCode.BackupInvalidState, `backup ${p.backupId} is no longer being created`);
      // The source is looked up again, not taken from the payload: the job opens the volume (or
      // snapshot) file the catalog knows, through its guard.
      const { host, source } = await sourceOf(b);
      const r = await d.hosts.of(host).backup(
        {
          backupId: b.id, source, volume: { id: p.volumeId, name: p.volumeName, projectId: b.projectId }, previousId: b.parentId, full: b.fullBackup,
          // A full backup the user asked for reuses only stored chunks it has checked intact (Q3).
          checkReused: p.checkReused === true,
        },
        { signal: ctx.signal, jobId: job.id, onProgress: (done, total) => ctx.progress(done, total) },
      );
      d.events.backupFinished?.({ sizeBytes: r.sizeBytes, newBytes: r.newBytes, storedBytes: r.storedBytes });
      // What the backup added to the repository (the runner's "job succeeded" line has what it read).
      d.log.info({ backupId: b.id, volumeId: p.volumeId, incremental: !b.fullBackup, sizeBytes: r.sizeBytes, newBytes: r.newBytes, storedBytes: r.storedBytes }, 'backup written');
      return finish(job, b.id, completionOf(r, r.createdAt));
    },
    fail: async (job, err) => {
      await d.catalog.backups.applyBackupEvent(job.payload.backupId, 'fail', d.clock.now(), { failReason: failureText(err) });
      // Failed, cancelled or found interrupted at recovery: the packs it wrote are orphans (G5).
      d.collectGarbageSoon();
      return jobFailure(err, 'CreateBackup Task-fail: ');
    },
    // The engine may have written the manifest just before the process died: then the backup is
    // complete and only its row is behind (write order W3 before the catalog).
    recover: async (job) => {
      const m = await d.engine.findManifest(job.payload.backupId);
      if (!m) return null;
      return finish(job, job.payload.backupId, {
        sizeBytes: m.sizeBytes, storedBytes: m.stats.storedBytes, newBytes: m.stats.newBytes, objectCount: m.stats.objectsWritten, parentId: m.parentId, dataTimestamp: Date.parse(m.createdAt),
        volumeDigest: m.formatVersion === 2 ? m.volumeDigest : null, // a manifest written by a build from before the volume digest
      });
    },
  };
}
