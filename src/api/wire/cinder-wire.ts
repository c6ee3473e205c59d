/** Domain records <-> Cinder JSON (volumes, snapshots, native backups). snake_case lives here. */
import type { Backup, Snapshot, Volume } from '../../domain/model.ts';
import { microsNoZone } from './time.ts';

export type ApiVersion = 'v2' | 'v3';

export function links(base: string, version: ApiVersion, projectId: string, kind: string, id: string) {
  return [
    { href: `${base}/${version}/${projectId}/${kind}/${id}`, rel: 'self' },
    { href: `${base}/${projectId}/${kind}/${id}`, rel: 'bookmark' },
  ];
}

/** A volume as Cinder shows it; `localHost` names the host of volumes this control plane holds itself. */
export function volumeJson(base: string, version: ApiVersion, v: Volume, localHost = 'haven') {
  return {
    id: v.id,
    name: v.name,
    description: v.description,
    status: v.status,
    size: v.sizeGb,
    availability_zone: v.availabilityZone,
    created_at: microsNoZone(v.createdAt),
    updated_at: microsNoZone(v.updatedAt),
    bootable: v.bootable ? ('true' as const) : ('false' as const),
    encrypted: false,
    multiattach: false,
    attachments: [],
    metadata: v.metadata,
    volume_type: v.format === 'qcow2' ? ('qcow2' as const) : ('haven' as const),
    snapshot_id: null,
    source_volid: null,
    consistencygroup_id: null,
    replication_status: 'disabled',
    user_id: null,
    'os-vol-tenant-attr:tenant_id': v.projectId,
    'os-vol-host-attr:host': `${v.host ?? localHost}@${v.adopted ? 'adopted' : 'files'}#${v.availabilityZone}`,
    links: links(base, version, v.projectId, 'volumes', v.id),
  };
}

export function snapshotJson(s: Snapshot) {
  return {
    id: s.id,
    name: s.name,
    description: s.description,
    volume_id: s.volumeId,
    status: s.status,
    size: s.sizeGb,
    created_at: microsNoZone(s.createdAt),
    updated_at: microsNoZone(s.updatedAt),
    metadata: {},
    'os-extended-snapshot-attributes:project_id': s.projectId,
    'os-extended-snapshot-attributes:progress': s.status === 'available' ? '100%' : '0%',
  };
}

/**
 * The native backup object (vbs.md §8.0). v2 carries the tenant attribute and service_metadata, v3
 * the project attribute. Backups made through the VBS API or a policy carry the description as the
 * JSON string the real service returns ({"DESC": ..., "INC": 0|1}); gophercloud unwraps it.
 */
export function backupJson(base: string, version: ApiVersion, b: Backup, progressPercent?: number) {
  const description = b.origin === 'native' ? b.description : JSON.stringify({ DESC: b.description ?? '', INC: b.fullBackup ? 0 : 1 });
  const out = {
    id: b.id,
    name: b.name,
    status: b.status as string,
    description,
    links: links(base, version, b.projectId, 'backups', b.id),
    availability_zone: b.availabilityZone,
    volume_id: b.volumeId,
    snapshot_id: b.snapshotId,
    fail_reason: b.failReason,
    size: b.sizeGb,
    object_count: b.objectCount,
    container: b.id,
    created_at: microsNoZone(b.createdAt),
    updated_at: microsNoZone(b.updatedAt),
    data_timestamp: microsNoZone(b.dataTimestamp),
    has_dependent_backups: false,
    is_incremental: !b.fullBackup,
  };
  return version === 'v2'
    ? { ...out, 'os-bak-tenant-attr:tenant_id': b.projectId, service_metadata: serviceMetadata(b, progressPercent) }
    : { ...out, 'os-backup-project-attr:project_id': b.projectId };
}

/** service_metadata: a JSON-encoded string (vbs.md §8.1). */
export function serviceMetadata(b: Backup, progressPercent?: number): string {
  return JSON.stringify({
    DL: 3, // deduplicated and compressed
    ST: 0, // disk backup
    Type: b.fullBackup ? 0 : 1,
    bootable: false,
    backupurl: b.id,
    progress: String(progressPercent ?? (b.status === 'creating' ? 0 : 100)),
    CS: Math.round(b.storedBytes / 1024 / 1024),
    BackupSize: Math.round(b.sizeBytes / 1024 / 1024),
    SS: b.sizeBytes ? Math.max(0, Math.round((1 - b.storedBytes / b.sizeBytes) * 100)) : 0,
  });
}
