/** The job that restores a server backup (CSBS): each mapped volume backup onto its volume, then the item and the restore record. */
import { AppError, ErrorCode } from '../../domain/errors.ts';
import { jobFailure, type JobHandler } from '../job-runner.ts';
import type { CsbsJobDeps } from './csbs-job-deps.ts';

export function csbsRestoreJob(d: CsbsJobDeps): JobHandler<'csbsRestore'> {
  const now = (): number => d.clock.now();
  return {
    run: async (job, ctx) => {
      const p = job.payload;
      await d.catalog.checkpoints.transitionItem(p.itemId, ['waiting_restore'], 'restoring', now());
      const backups = await d.catalog.backups.backupsOfItem(p.itemId);
      const total = backups.reduce((n, b) => n + b.sizeBytes, 0);
      let before = 0;
      for (const m of p.mapping) {
        const v = await d.catalog.volumes.getVolumeById(m.volumeId);
        if (!v) throw new AppError(ErrorCode.VolumeNotFound, `volume ${m.volumeId} no longer exists`);
        await d.backups.restoreVolumeNow(m.backupId, v, { signal: ctx.signal, jobId: job.id, onProgress: (done) => ctx.progress(before + done, total) });
        before += backups.find((b) => b.id === m.backupId)?.sizeBytes ?? 0;
      }
      await d.catalog.transaction(async (c) => {
        for (const m of p.mapping) {
          const attached = await c.servers.attachmentOfVolume(m.volumeId);
          await c.volumes.transitionVolume(m.volumeId, ['restoring-backup'], attached ? 'in-use' : 'available', now());
        }
        await c.checkpoints.transitionItem(p.itemId, ['restoring'], 'available', now());
        await c.checkpoints.setRestoreStatus(p.restoreId, 'success', null, now());
      });
      return { restore_id: p.restoreId };
    },
    fail: async (job, err) => {
      const p = job.payload;
      const reason = (err as Error).message ?? String(err);
      // The target volumes may be half written: they say so (error_restoring), as after a VBS restore.
      for (const m of p.mapping ?? []) await d.catalog.volumes.transitionVolume(m.volumeId, ['restoring-backup'], 'error_restoring', now());
      await d.catalog.checkpoints.transitionItem(p.itemId, ['waiting_restore', 'restoring'], 'available', now(), { op: 'restore', reason });
      await d.catalog.checkpoints.setRestoreStatus(p.restoreId, 'failed', reason, now());
      return jobFailure(err, 'restore failed: ');
    },
  };
}
