/** What the server-backup jobs (CSBS protect, delete, restore) need from the service that queues them. */
import type { Catalog } from '../../catalog/catalog.ts';
import type { CheckpointItem } from '../../domain/checkpoint.ts';
import type { Clock } from '../../domain/clock.ts';
import type { BackupService } from '../backup-service.ts';
import type { VolumeHosts } from '../volume-hosts.ts';

export interface CsbsJobDeps {
  catalog: Catalog;
  clock: Clock;
  backups: BackupService;
  /** Where volume files are worked on (the freeze and thaw hooks run there too, as its host configures them). */
  hosts: VolumeHosts;
  /** The hooks' environment for a checkpoint item's server and its volumes' paths. */
  hookEnv(item: CheckpointItem, volumePaths: string[]): Record<string, string>;
  /** Marks a checkpoint available or error once none of its items is being protected. */
  settleCheckpoint(checkpointId: string): Promise<void>;
  /** Called when an item became available (policy retention). */
  itemAvailable(item: CheckpointItem): Promise<unknown>;
}
