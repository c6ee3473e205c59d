/**
 * The backup state machine, as data (docs/state-machines.md is generated from the same table).
 * Every status change goes through it (BackupQueries.applyBackupEvent): an event names the
 * statuses it may leave and the one it enters.
 *
 *   creating --succeed--> available --restore--> restoring --finishRestore--> available
 *   creating --fail-----> error                  restoring --failRestore----> available
 *                                                restoring --restoreFoundDamage--> error
 *   available|error --delete--> deleting --finishDelete--> (row removed)
 *   creating|restoring --cancel--> deleting  (its job is stopped; the deletion waits for it to end)
 *   deleting --retryDelete--> deleting  (the cloud admin's force-delete of a backup whose delete job is gone)
 *   error --verified--> available  (a verify found its manifest, index and every chunk whole again)
 *   available --sampleFoundDamage--> error  (a scheduled sample restore found it damaged: services/sample-restore.ts)
 *   any --resetAvailable / resetError--> available / error  (the cloud admin's os-reset_status)
 */
import type { BackupStatus } from './model.ts';

export type BackupEvent =
  | 'succeed' | 'fail' | 'restore' | 'finishRestore' | 'failRestore' | 'restoreFoundDamage' | 'delete' | 'failDelete' | 'cancel' | 'retryDelete' | 'verified' | 'sampleFoundDamage' | 'resetAvailable' | 'resetError';

const RESET = { resetAvailable: 'available', resetError: 'error' } as const;

export const backupTransitions = {
  creating: { succeed: 'available', fail: 'error', cancel: 'deleting', ...RESET },
  available: { restore: 'restoring', delete: 'deleting', sampleFoundDamage: 'error', ...RESET },
  restoring: { finishRestore: 'available', failRestore: 'available', restoreFoundDamage: 'error', cancel: 'deleting', ...RESET },
  deleting: { failDelete: 'error', retryDelete: 'deleting', ...RESET },
  error: { delete: 'deleting', verified: 'available', ...RESET },
  error_restoring: { delete: 'deleting', restore: 'restoring', ...RESET },
} as const satisfies Record<BackupStatus, Partial<Record<BackupEvent, BackupStatus>>>;

/**
 * What `event` does: the statuses it may leave (narrowed to `onlyFrom` when given) and the one it
 * enters (the same from every status: the table is built so).
 */
export function backupEvent(event: BackupEvent, onlyFrom?: readonly BackupStatus[]): { from: BackupStatus[]; to: BackupStatus } {
  const from = statusesAllowing(event).filter((s) => !onlyFrom || onlyFrom.includes(s));
  const tos = new Set(statusesAllowing(event).map((s) => (backupTransitions[s] as Partial<Record<BackupEvent, BackupStatus>>)[event]!));
  if (tos.size !== 1) throw new Error(`backup event ${event} leads to ${tos.size} statuses`);
  return { from, to: [...tos][0]! };
}

/** The statuses from which `event` may be applied. */
export function statusesAllowing(event: BackupEvent): BackupStatus[] {
  return (Object.keys(backupTransitions) as BackupStatus[]).filter((s) => event in backupTransitions[s]);
}

/** The transition table as Markdown (docs/state-machines.md holds exactly this). */
export function renderTransitionTable(): string {
  const rows = Object.entries(backupTransitions).flatMap(([from, events]) => Object.entries(events).map(([event, to]) => `| \`${from}\` | ${event} | \`${to}\` |`));
  return ['| from | event | to |', '| --- | --- | --- |', ...rows].join('\n');
}
