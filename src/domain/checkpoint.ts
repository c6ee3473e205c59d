/**
 * CSBS records. "Backup record" = checkpoint (one run); "backup" = checkpoint item (one server in
 * that run); each item consists of one volume backup per disk the server had at that moment.
 *
 *   item: waiting_protect -> protecting -> available | error
 *         available -> restoring -> available ; available | error -> deleting -> (gone)
 */
export type CheckpointStatus = 'protecting' | 'available' | 'error' | 'deleting';
export type CheckpointItemStatus = 'waiting_protect' | 'protecting' | 'available' | 'error' | 'waiting_restore' | 'restoring' | 'waiting_delete' | 'deleting';

/** CSBS's one provider id (csbs.md §1.3). */
export const CSBS_PROVIDER_ID = 'fc4d5750-22e7-4798-8a46-f48f62c4c1da';

export interface Checkpoint {
  id: string;
  projectId: string;
  planId: string;
  planName: string;
  status: CheckpointStatus;
  createdBy: 'manual' | 'operation-engine';
  createdAt: number;
  updatedAt: number;
}

export interface CheckpointItem {
  id: string;
  checkpointId: string;
  projectId: string;
  serverId: string;
  serverName: string;
  policyId: string | null;
  name: string;
  description: string;
  status: CheckpointItemStatus;
  incremental: boolean;
  autoTrigger: boolean;
  tags: { key: string; value: string }[];
  failOp: string;
  failReason: string;
  availabilityZone: string;
  createdAt: number;
  updatedAt: number;
  finishedAt: number | null;
}
