/** The job that deletes a server backup's checkpoint item (CSBS): its volume backups, then the item (and an empty checkpoint). */
import { jobFailure, type JobHandler } from '../job-runner.ts';
import type { CsbsJobDeps } from './csbs-job-deps.ts';

export function csbsDeleteJob(d: CsbsJobDeps): JobHandler<'csbsDelete'> {
  const now = (): number => d.clock.now();
  return {
    run: async (job) => {
      const itemId = job.payload.itemId;
      const item = (await d.catalog.checkpoints.getItemById(itemId))!;
      await d.catalog.checkpoints.transitionItem(itemId, ['waiting_delete'], 'deleting', now());
      for (const b of await d.catalog.backups.backupsOfItem(itemId)) await d.backups.deleteVolumeBackupNow(b.id);
      await d.catalog.transaction(async (c) => {
        await c.checkpoints.deleteItem(itemId);
        if (!(await c.checkpoints.itemsOfCheckpoint(item.checkpointId)).length) await c.checkpoints.deleteCheckpoint(item.checkpointId);
      });
      d.backups.collectGarbageSoon();
      return { checkpoint_item_id: itemId };
    },
    fail: async (job, err) => {
      const itemId = job.payload.itemId;
      await d.catalog.checkpoints.transitionItem(itemId, ['waiting_delete', 'deleting'], 'error', now(), { op: 'delete', reason: (err as Error).message ?? String(err) });
      const item = await d.catalog.checkpoints.getItemById(itemId);
      if (item) await d.settleCheckpoint(item.checkpointId);
      return jobFailure(err, 'delete failed: ');
    },
  };
}
