/**
 * A volume host: where a volume's file is, and everything that touches it. Jobs and the volume
 * service keep the catalog half of their work (statuses, rows, quotas) and hand the file half to
 * the host of the volume: in the embedded mode the process itself (LocalVolumeHost), in a fleet
 * the `haven agent` of that host (RemoteVolumeHost queues the same calls for it, agent/agent.ts
 * runs them on a LocalVolumeHost there). Every request and result is plain JSON for that reason.
 */
import type { BackupCompletion } from '../catalog/backup-queries.ts';
import type { VolumeFormat } from '../domain/model.ts';

/** What the host needs to know of a volume to open its file (the guard: engine/volume-file.ts). */
export interface VolumeFileRef {
  id: string;
  path: string;
  adopted: boolean;
  fileId: string | null;
  format: VolumeFormat;
  qmp: { socket: string; node: string } | null;
  sizeBytes: number;
}

/** What a backup reads: a volume's file (or its running guest), a snapshot, or a server backup's copy. */
export type BackupSource =
  | { kind: 'volume'; volume: VolumeFileRef }
  | { kind: 'snapshot'; path: string; format: VolumeFormat }
  | { kind: 'serverCopy'; itemId: string; volumeId: string; format: VolumeFormat };

export interface BackupOrder {
  backupId: string;
  /** Recorded in the backup's manifest, the project too (the repository then describes whose it is). */
  volume: { id: string; name: string; projectId?: string };
  source: BackupSource;
  previousId: string | null;
  full: boolean;
  checkReused: boolean;
}

/** A server backup's disks, each with the backup it becomes. */
export interface ServerProtectOrder {
  itemId: string;
  hookEnv: Record<string, string>;
  disks: { volume: VolumeFileRef; backup: Omit<BackupOrder, 'source'> }[];
}

/** What a backup wrote, as the catalog records it. */
export interface BackupSummary {
  sizeBytes: number;
  storedBytes: number;
  newBytes: number;
  objectsWritten: number;
  parentId: string | null;
  /** The manifest's creation time (ms). */
  createdAt: number;
  volumeDigest: string | null;
  readBytes: number;
  changedBlockTracking: boolean;
}

/** What a backup's row records of what its host wrote (BackupQueries.completeBackup); `dataTimestamp` is when its data was taken. */
export function completionOf(r: BackupSummary, dataTimestamp: number): BackupCompletion {
  return { sizeBytes: r.sizeBytes, storedBytes: r.storedBytes, newBytes: r.newBytes, objectCount: r.objectsWritten, parentId: r.parentId, dataTimestamp, volumeDigest: r.volumeDigest };
}

export interface WorkControl {
  signal: AbortSignal;
  /** The job the work belongs to (ended jobs' work is cancelled). */
  jobId?: string;
  onProgress(done: number, total: number): void;
}

export interface VolumeHost {
  /** Makes a new volume's file (a sparse raw file, a qcow2 image, or a copy of a snapshot's). */
  createVolumeFile(o: { volumeId: string; format: VolumeFormat; sizeGb: number; fromSnapshot: { path: string; format: VolumeFormat } | null }): Promise<{ path: string; fileId: string }>;
  /** Checks a path (and a running guest's node) an admin asks to adopt; returns what the volume is. */
  inspectAdoption(o: { path: string; format?: VolumeFormat | undefined; qmp?: { socket: string; node: string } | undefined }): Promise<{ path: string; format: VolumeFormat; sizeBytes: number; fileId: string }>;
  /** Removes the file of a volume Haven created (only if the path still names that file). */
  removeVolumeFile(o: { id: string; path: string; fileId: string | null }): Promise<void>;
  /** Copies a volume's file into a new snapshot file. */
  snapshotVolume(o: { volume: VolumeFileRef; snapshotId: string }): Promise<{ path: string }>;
  /** Removes a snapshot's file: by its recorded path and by its id (a copy that failed half way has no path yet). */
  removeSnapshotFile(o: { snapshotId?: string; path?: string }): Promise<void>;
  backup(o: BackupOrder, ctl: WorkControl): Promise<BackupSummary>;
  /** Writes a backup onto a volume's own file; a larger volume keeps its size. */
  restore(o: { backupId: string; target: VolumeFileRef }, ctl: WorkControl): Promise<void>;
  /**
   * A server backup: the freeze hook, every disk's moment (a file volume copied, a running
   * guest's disk held through QMP), the thaw hook (always, once freeze ran), then each disk
   * written as its backup. The summaries are in the order of `disks`.
   */
  protectServer(o: ServerProtectOrder, ctl: WorkControl): Promise<BackupSummary[]>;
  /** Runs the thaw hook again (a server backup that failed between freeze and thaw). */
  thawServer(o: { hookEnv: Record<string, string> }): Promise<void>;
  /** Removes a server backup's copies. */
  removeServerCopies(o: { itemId: string }): Promise<void>;
  /**
   * A live restore: empties the volume and serves it at once over this host's NBD listener as
   * `exportName` (reads of what is not copied yet come from the backup); returns its URI. A
   * failure before the volume was opened says so (details.targetUntouched).
   */
  openLive(o: { backupId: string; target: VolumeFileRef; exportName: string }): Promise<{ uri: string; sizeBytes: number }>;
  /** The copy of a live restore opened here; never overwrites what the user wrote meanwhile. */
  liveCopy(o: { exportName: string }, ctl: WorkControl): Promise<{ writtenBytes: number }>;
  /** Ends a live export (its connections close). */
  endLive(o: { exportName: string }): Promise<void>;
}

/** The calls a host takes, by name: what a remote host queues and an agent dispatches. */
export const HOST_CALLS = ['createVolumeFile', 'inspectAdoption', 'removeVolumeFile', 'snapshotVolume', 'removeSnapshotFile', 'backup', 'restore', 'protectServer', 'thawServer', 'removeServerCopies', 'openLive', 'liveCopy', 'endLive'] as const;
export type HostCall = (typeof HOST_CALLS)[number];

/** The calls that take seconds, not hours: they have slots of their own on an agent, and a time limit. */
export const QUICK_CALLS: readonly HostCall[] = ['createVolumeFile', 'inspectAdoption', 'removeVolumeFile', 'removeSnapshotFile', 'thawServer', 'removeServerCopies', 'openLive', 'endLive'];

export function isQuickCall(s: string): boolean {
  return (QUICK_CALLS as readonly string[]).includes(s);
}

export function isHostCall(s: string): s is HostCall {
  return (HOST_CALLS as readonly string[]).includes(s);
}

/** A volume row as the host sees it. */
export function fileRef(v: VolumeFileRef): VolumeFileRef {
  return { id: v.id, path: v.path, adopted: v.adopted, fileId: v.fileId, format: v.format, qmp: v.qmp, sizeBytes: v.sizeBytes };
}
