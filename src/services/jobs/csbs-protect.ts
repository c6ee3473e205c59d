/**
 * The job that backs up one server (CSBS protect), on the host of its disks: the operator's freeze
 * hook, every disk's moment (a file volume copied, a running guest's disk held at its point in
 * time through QMP), the thaw hook, then each disk written as an ordinary volume backup linked to
 * the checkpoint item. A failure thaws again, marks half-made volume backups error and the item
 * error.
 */
import type { Backup, Volume } from '../../domain/model.ts';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import { jobFailure, type JobHandler } from '../job-runner.ts';
import type { CsbsJobDeps } from './csbs-job-deps.ts';
import { fileRef } from '../volume-host.ts';

export function csbsProtectJob(d: CsbsJobDeps): JobHandler<'csbsProtect'> {
  const now = (): number => d.clock.now();
  return {
    run: async (job, ctx) => {
      const item = (await d.catalog.checkpoints.getItemById(job.payload.itemId))!;
      if (!(await d.catalog.checkpoints.transitionItem(item.id, ['waiting_protect'], 'protecting', now()))) throw new AppError(ErrorCode.CheckpointItemBusy, `checkpoint item ${item.id} is no longer waiting to be protected`);
      const attached = await d.catalog.servers.attachments(item.serverId);
      const volumes: Volume[] = [];
      for (const a of attached) volumes.push((await d.catalog.volumes.getVolumeById(a.volumeId))!);
      // One moment for the whole server: its disks must be on one host.
      const hostNames = [...new Set(volumes.map((v) => v.host ?? d.hosts.opts.localName))];
      if (hostNames.length > 1) throw new AppError(ErrorCode.VolumeInvalidState, `the volumes of server ${item.serverId} are on several hosts (${hostNames.join(', ')}); a server backup takes one moment on one host`);
      const host = d.hosts.of(volumes[0]?.host ?? null);
      const env = d.hookEnv(item, volumes.map((v) => v.path));
      // The rows first (each `creating`), then the host: freeze, every disk's moment, thaw, the backups.
      const rows: Backup[] = [];
      for (const [i, v] of volumes.entries()) {
        rows.push(await d.backups.beginServerDiskBackup(v, { name: `${item.name}_${(v.name ?? v.id).slice(0, 40)}`, description: `disk ${i + 1} of server ${item.serverName}`, checkpointItemId: item.id, full: !item.incremental }));
      }
      const summaries = await host.protectServer({
        itemId: item.id, hookEnv: env,
        disks: volumes.map((v, i) => ({ volume: fileRef(v), backup: { backupId: rows[i]!.id, volume: { id: v.id, name: v.name ?? v.id, projectId: v.projectId }, previousId: rows[i]!.parentId, full: rows[i]!.fullBackup, checkReused: !item.incremental } })),
      }, { signal: ctx.signal, jobId: job.id, onProgress: (done, total) => ctx.progress(done, total) });
      if (!Array.isArray(summaries) || summaries.length !== rows.length) throw new AppError(ErrorCode.Internal, `the host reported ${Array.isArray(summaries) ? summaries.length : 'no'} backups for ${rows.length} disks`);
      for (const [i, b] of rows.entries()) await d.backups.completeServerDiskBackup(b, summaries[i]!);
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
      // The process may have died between freeze and thaw: thaw again (thawing a thawed server is
      // harmless), on the server's host, and remove the copies there. Best effort: the host may be gone.
      const paths: string[] = [];
      let hostOf: string | null = null;
      if (item) {
        for (const a of await d.catalog.servers.attachments(item.serverId)) {
          const v = await d.catalog.volumes.getVolumeById(a.volumeId);
          if (v) {
            paths.push(v.path);
            hostOf = v.host;
          }
        }
        await Promise.resolve().then(async () => {
          const host = d.hosts.of(hostOf);
          await host.thawServer({ hookEnv: d.hookEnv(item, paths) }).catch(() => undefined);
          await host.removeServerCopies({ itemId });
        }).catch(() => undefined);
      }
      // Volume backups this run left half-made (process died mid-backup) become error, so they
      // never block the volume's next backup; the snapshots go.
      for (const b of await d.catalog.backups.backupsOfItem(itemId)) await d.catalog.backups.applyBackupEvent(b.id, 'fail', now(), { onlyFrom: ['creating'], failReason: reason });
      d.backups.collectGarbageSoon(); // what the failed backups wrote is orphaned (G5)
      await d.catalog.checkpoints.transitionItem(itemId, ['waiting_protect', 'protecting'], 'error', now(), { op: 'backup', reason }, true);
      if (item) await d.settleCheckpoint(item.checkpointId);
      return jobFailure(err, 'backup failed: ');
    },
  };
}
