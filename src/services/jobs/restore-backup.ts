/**
 * The job that restores a volume backup onto a volume (VBS bksRestoreBackup). Afterwards the
 * backup is `available` again, or `error` when the restore proved it damaged (missing or corrupt
 * chunks, a digest mismatch); the volume `available`, or `error_restoring` (it may be half written).
 */
import { AppError, ErrorCode, isAppError } from '../../domain/errors.ts';
import { jobFailure, type JobHandler } from '../job-runner.ts';
import { failureText, type BackupJobDeps } from './backup-job-deps.ts';

export function restoreBackupJob(d: BackupJobDeps): JobHandler<'bksRestoreBackup'> {
  /**
   * For a failure that names damaged chunks: which other backups use them (they are damaged too,
   * until the chunks are stored again). Best effort: an empty note when the search itself fails.
   */
  const damageNote = async (err: unknown, backupId: string): Promise<string> => {
    const chunks = isAppError(err) ? (err.details?.chunks as { digest: string }[] | undefined) : undefined;
    if (!chunks?.length) return '';
    try {
      const others = (await d.engine.backupsUsingChunks(chunks.map((c) => c.digest))).filter((id) => id !== backupId);
      const shown = others.slice(0, 20).join(', ') + (others.length > 20 ? ` and ${others.length - 20} more` : '');
      return others.length ? `; the damaged chunk is also used by backup(s) ${shown}` : '; no other backup uses the damaged chunk';
    } catch (e) {
      d.log.warn({ err: e }, 'could not search the backups using a damaged chunk');
      return '';
    }
  };

  return {
    run: async (job, ctx) => {
      const p = job.payload;
      const v = await d.catalog.volumes.getVolumeById(p.volumeId);
      if (!v) throw new AppError(ErrorCode.VolumeNotFound, `volume ${p.volumeId} no longer exists`);
      let entities = job.entities;
      const live = p.live ? d.live() : null;
      if (p.live) {
        // Served since the request, by the volume's host: the copy fills in behind the user's reads and writes.
        if (!live) throw new AppError(ErrorCode.Internal, 'this process has no live restores');
        try {
          const r = await live.copy(job.id, { signal: ctx.signal, jobId: job.id, onProgress: (done, total) => ctx.progress(done, total) });
          entities = { ...entities, written_bytes: String(r.writtenBytes) };
        } catch (err) {
          await live.ended(job.id, false);
          throw err;
        }
        await live.ended(job.id, true);
      } else {
        await d.restoreVolumeNow(p.backupId, v, { signal: ctx.signal, jobId: job.id, onProgress: (done, total) => ctx.progress(done, total) });
      }
      const now = d.clock.now();
      await d.catalog.transaction(async (c) => {
        await c.backups.applyBackupEvent(p.backupId, 'finishRestore', now);
        await c.volumes.transitionVolume(p.volumeId, ['restoring-backup'], 'available', now);
      });
      return entities;
    },
    fail: async (job, err) => {
      const p = job.payload;
      if (p.live) await d.live()?.ended(job.id, false);
      const reason = failureText(err) + (await damageNote(err, p.backupId));
      const now = d.clock.now();
      // A backup whose data proved damaged is marked error; otherwise it is intact and available again.
      const damaged = isAppError(err, ErrorCode.ChunkMissing) || isAppError(err, ErrorCode.ChunkCorrupt) || isAppError(err, ErrorCode.RestoreMismatch) || isAppError(err, ErrorCode.RepositoryCorrupt);
      await d.catalog.transaction(async (c) => {
        if (damaged) await c.backups.applyBackupEvent(p.backupId, 'restoreFoundDamage', now, { failReason: reason });
        else await c.backups.applyBackupEvent(p.backupId, 'failRestore', now);
        // A restore that failed before it wrote anything (the backup found incomplete, the target
        // refused, e.g. by QEMU's lock on a running guest's image) leaves the volume whole: available.
        // Not when the volume's path no longer leads to its file: that volume needs the admin.
        const untouched = isAppError(err) && err.details?.targetUntouched === true && !isAppError(err, ErrorCode.VolumePathRefused);
        await c.volumes.transitionVolume(p.volumeId, ['restoring-backup'], untouched ? 'available' : 'error_restoring', now);
      });
      return { ...jobFailure(err, 'RestoreBackup Task-fail: '), failReason: `RestoreBackup Task-fail: ${reason}` };
    },
  };
}
