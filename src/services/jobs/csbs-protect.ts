/**
 * The job that backs up one server (CSBS protect): the operator's freeze hook, a snapshot of every
 * attached volume, the thaw hook, then each snapshot backed up through the engine as an ordinary
 * volume backup linked to the checkpoint item. A failure thaws again, marks half-made volume
 * backups error and the item error.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Volume } from '../../domain/model.ts';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import { jobFailure, type JobHandler } from '../job-runner.ts';
import type { CsbsJobDeps } from './csbs-job-deps.ts';

export function csbsProtectJob(d: CsbsJobDeps): JobHandler<'csbsProtect'> {
  const now = (): number => d.clock.now();
  return {
    run: async (job, ctx) => {
      const item = (await d.catalog.checkpoints.getItemById(job.payload.itemId))!;
      if (!(await d.catalog.checkpoints.transitionItem(item.id, ['waiting_protect'], 'protecting', now()))) throw new AppError(ErrorCode.CheckpointItemBusy, `checkpoint item ${item.id} is no longer waiting to be protected`);
      const attached = await d.catalog.servers.attachments(item.serverId);
      const volumes: Volume[] = [];
      for (const a of attached) volumes.push((await d.catalog.volumes.getVolumeById(a.volumeId))!);
      // A running guest's disk cannot be copied as a file at the snapshot moment (its QEMU holds it).
      const running = volumes.find((v) => v.qmp);
      if (running) throw new AppError(ErrorCode.VolumeInvalidState, `volume ${running.id} of server ${item.serverId} is the disk of a running guest (QMP); server backups of such servers are not supported yet: back the volume up through VBS`);
      const snapDir = path.join(d.dataDir, 'snapshots', `csbs-${item.id}`);
      await fs.mkdir(snapDir, { recursive: true });
      const env = d.hookEnv(item, volumes.map((v) => v.path));
      try {
        // The snapshot moment: freeze, copy every volume, thaw (thaw runs even if a copy failed).
        // Thaw runs whenever freeze was tried, even if freeze itself failed half way.
        try {
          await d.hook(d.freezeCommand, env);
          for (const v of volumes) await d.files.copyOut(v.path, d.files.guardOf(v), path.join(snapDir, `${v.id}.img`));
        } finally {
          await d.hook(d.thawCommand, env);
        }
        const total = volumes.reduce((n, v) => n + v.sizeBytes, 0);
        let before = 0;
        for (const [i, v] of volumes.entries()) {
          await d.backups.backupVolumeNow(v, path.join(snapDir, `${v.id}.img`), {
            name: `${item.name}_${(v.name ?? v.id).slice(0, 40)}`, description: `disk ${i + 1} of server ${item.serverName}`, checkpointItemId: item.id, full: !item.incremental,
            signal: ctx.signal, onProgress: (done) => ctx.progress(before + done, total),
          });
          before += v.sizeBytes;
        }
      } finally {
        await fs.rm(snapDir, { recursive: true, force: true }); // the snapshots were only the backup's source
      }
      await d.catalog.checkpoints.transitionItem(item.id, ['protecting'], 'available', now(), null, true);
      await d.settleCheckpoint(item.checkpointId);
      const done = await d.catalog.checkpoints.getItemById(item.id);
      if (done) await d.itemAvailable(done).catch(() => undefined); // retention is housekeeping; the backup is safe
      return { checkpoint_item_id: item.id, checkpoint_id: item.checkpointId };
    },
    fail: async (job, err) => {
      const itemId = job.payload.itemId;
      const item = await d.catalog.checkpoints.getItemById(itemId);
      const reason = (err as Error).message ?? String(err);
      // The process may have died between freeze and thaw: thaw again (thawing a thawed server is harmless).
      if (item && d.thawCommand) {
        const attached = await d.catalog.servers.attachments(item.serverId);
        const paths: string[] = [];
        for (const a of attached) {
          const v = await d.catalog.volumes.getVolumeById(a.volumeId);
          if (v) paths.push(v.path);
        }
        await Promise.resolve().then(() => d.hook(d.thawCommand, d.hookEnv(item, paths))).catch(() => undefined); // best effort
      }
      // Volume backups this run left half-made (process died mid-backup) become error, so they
      // never block the volume's next backup; the snapshots go.
      for (const b of await d.catalog.backups.backupsOfItem(itemId)) await d.catalog.backups.applyBackupEvent(b.id, 'fail', now(), { onlyFrom: ['creating'], failReason: reason });
      await fs.rm(path.join(d.dataDir, 'snapshots', `csbs-${itemId}`), { recursive: true, force: true });
      await d.catalog.checkpoints.transitionItem(itemId, ['waiting_protect', 'protecting'], 'error', now(), { op: 'backup', reason }, true);
      if (item) await d.settleCheckpoint(item.checkpointId);
      return jobFailure(err, 'backup failed: ');
    },
  };
}
