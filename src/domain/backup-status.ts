/**
 * The backup state machine, as data (docs/state-machines.md is generated from the same table).
 *
 *   creating --succeed--> available --restore--> restoring --finishRestore--> available
 *   creating --fail-----> error                  restoring --failRestore----> available | error
 *   available|error --delete--> deleting --finishDelete--> (row removed)
 *   creating|restoring --cancel--> deleting  (its job is stopped; the deletion waits for it to end)
 *   error --verified--> available  (a verify found its manifest, index and every chunk whole again)
 */
import type { BackupStatus } from './model.ts';

export type BackupEvent = 'succeed' | 'fail' | 'restore' | 'finishRestore' | 'failRestore' | 'delete' | 'failDelete' | 'cancel' | 'verified';

export const backupTransitions = {
  creating: { succeed: 'available', fail: 'error', cancel: 'deleting' },
  available: { restore: 'restoring', delete: 'deleting' },
  restoring: { finishRestore: 'available', failRestore: 'available', cancel: 'deleting' },
  deleting: { failDelete: 'error' },
  error: { delete: 'deleting', verified: 'available' },
  error_restoring: { delete: 'deleting', restore: 'restoring' },
} as const satisfies Record<BackupStatus, Partial<Record<BackupEvent, BackupStatus>>>;

/** The statuses from which `event` may be applied. */
export function statusesAllowing(event: BackupEvent): BackupStatus[] {
  return (Object.keys(backupTransitions) as BackupStatus[]).filter((s) => event in backupTransitions[s]);
}

/** The transition table as Markdown (docs/state-machines.md holds exactly this). */
export function renderTransitionTable(): string {
  const rows = Object.entries(backupTransitions).flatMap(([from, events]) => Object.entries(events).map(([event, to]) => `| \`${from}\` | ${event} | \`${to}\` |`));
  return ['| from | event | to |', '| --- | --- | --- |', ...rows].join('\n');
}
