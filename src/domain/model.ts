/**
 * Glossary and records of the service layer (camelCase; OTC wire names live only in api/wire).
 *
 * - project: a tenant. Every volume, backup, policy and job belongs to exactly one.
 * - volume: a disk Haven can back up: a sparse raw file it created, or an image or block device an
 *   operator adopted (os-volume-manage).
 * - snapshot: a point-in-time copy of a volume (reflink when the file system can, else a copy).
 * - backup: one catalog record plus the engine manifest of the same id.
 * - job: a unit of queued background work (create, delete or restore a backup), with a status clients
 *   poll (VBS jobs API) and an owner process that keeps a heartbeat while it runs it.
 */
export type VolumeStatus = 'creating' | 'available' | 'in-use' | 'deleting' | 'error' | 'restoring-backup' | 'error_restoring';

/** How a volume's file holds the disk: raw bytes, or a qcow2 image read and written through QEMU's tools. */
export type VolumeFormat = 'raw' | 'qcow2';
export const VOLUME_FORMATS: readonly VolumeFormat[] = ['raw', 'qcow2'];

export interface Volume {
  id: string;
  projectId: string;
  name: string | null;
  description: string | null;
  sizeGb: number;
  sizeBytes: number;
  path: string;
  /** Adopted from an existing image or device (os-volume-manage): Haven never deletes its file. */
  adopted: boolean;
  /** "device:inode" of the file or device, recorded at adoption or creation (null: older volumes). */
  fileId: string | null;
  format: VolumeFormat;
  /** The disk of a running QEMU guest: its QMP socket and block node (backups go through QMP). */
  qmp: { socket: string; node: string } | null;
  /** The host whose agent holds the volume's file (null: the control plane's own host, volumes from before agents). */
  host: string | null;
  status: VolumeStatus;
  bootable: boolean;
  availabilityZone: string;
  metadata: Record<string, string>;
  createdAt: number;
  updatedAt: number;
}

export type SnapshotStatus = 'creating' | 'available' | 'deleting' | 'error';

export interface Snapshot {
  id: string;
  projectId: string;
  volumeId: string;
  name: string | null;
  description: string | null;
  sizeGb: number;
  path: string;
  /** Its volume's format: the snapshot is a copy of the volume's file. */
  format: VolumeFormat;
  status: SnapshotStatus;
  createdAt: number;
  updatedAt: number;
}

export type BackupStatus = 'creating' | 'available' | 'deleting' | 'error' | 'restoring' | 'error_restoring';
/** Where a backup request came from: the VBS API, the native (Cinder) API or a policy run. */
export type BackupOrigin = 'vbs' | 'native' | 'policy' | 'csbs';

export interface Tag {
  key: string;
  value: string;
}

export interface Backup {
  id: string;
  projectId: string;
  volumeId: string;
  snapshotId: string | null;
  name: string | null;
  description: string | null;
  status: BackupStatus;
  /** Recorded as a full backup (no parent). */
  fullBackup: boolean;
  parentId: string | null;
  sizeGb: number;
  sizeBytes: number;
  storedBytes: number;
  newBytes: number;
  objectCount: number;
  origin: BackupOrigin;
  policyId: string | null;
  tags: Tag[];
  failReason: string | null;
  availabilityZone: string;
  createdAt: number;
  updatedAt: number;
  dataTimestamp: number;
  /** The CSBS checkpoint item this volume backup belongs to (deletable only through CSBS). */
  checkpointItemId: string | null;
}

export { queuedJob, type Job, type JobOf, type JobPayloads, type JobStatus, type JobType } from './job.ts';

export type Role = 'admin' | 'member';
export const ROLES: readonly Role[] = ['admin', 'member'];
export const DEFAULT_DOMAIN = { id: 'default', name: 'Default' } as const;

export interface Project {
  id: string;
  name: string;
  domainId: string;
  description: string;
  enabled: boolean;
  createdAt: number;
}

export interface User {
  id: string;
  name: string;
  domainId: string;
  passwordHash: string;
  enabled: boolean;
  defaultProjectId: string | null;
  createdAt: number;
}

export interface TokenInfo {
  userId: string;
  projectId: string | null;
  roles: Role[];
  methods: string[];
  auditId: string;
  issuedAt: number;
  expiresAt: number;
}
