/**
 * BackupManifest: what one backup consists of. Written last, only after every chunk, the chunk map
 * and the index segments it references are durable (docs/design.md, invariant W3). Listing the
 * manifests lists the backups: the repository is self-describing.
 */
export interface IndexSegmentRef {
  key: string;
  chunks: number;
  /** SHA-256 of the segment's raw digest bytes, checked on read. */
  sha256: string;
}

export interface BackupStats {
  /** Raw bytes of chunks that were not in the repository before this backup. */
  newBytes: number;
  /** Bytes written to the store (packs, chunk map, index, manifest) after compression/encryption. */
  storedBytes: number;
  /** Bytes of all-zero chunks, recorded as holes. */
  zeroBytes: number;
  /** Raw bytes of chunks found already stored. */
  dedupBytes: number;
  newChunks: number;
  reusedChunks: number;
  holeChunks: number;
  packsWritten: number;
  objectsWritten: number;
  durationMs: number;
}

interface ManifestCommon {
  id: string;
  /** The volume; `projectId`: the project it belongs to in the service's catalog (haven catalog rebuild reads it). */
  volume: { id: string; name: string; path?: string; projectId?: string };
  sizeBytes: number;
  chunkSizeBytes: number;
  chunkCount: number;
  indexSegments: IndexSegmentRef[];
  parentId: string | null;
  kind: 'full' | 'incremental';
  createdAt: string;
  completedAt: string;
  stats: BackupStats;
}

/** Manifests written before the volume digest: restore proves them by re-hashing every byte. */
export interface BackupManifestV1 extends ManifestCommon {
  formatVersion: 1;
  /** SHA-256 of the whole volume as read. */
  volumeSha256: string;
}

/**
 * Manifests since repository format 3: restore checks every chunk against its digest and the
 * digests against this root (volume-digest.ts, docs/design.md "Volume digest").
 */
export interface BackupManifestV2 extends ManifestCommon {
  formatVersion: 2;
  /** The volume digest (integrity root v1) over the size, chunk size, digest algorithm and index. */
  volumeDigest: string;
}

export type BackupManifest = BackupManifestV1 | BackupManifestV2;

export function manifestKey(backupId: string): string {
  return `manifests/${backupId}`;
}

export function indexSegmentKey(backupId: string, segment: number): string {
  return `indexes/${backupId}/${String(segment).padStart(6, '0')}`;
}

/** Backup ids are UUIDs (as OTC's backup ids); anything else is refused before it reaches a key. */
export const BACKUP_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
