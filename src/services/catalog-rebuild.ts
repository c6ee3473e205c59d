/**
 * Recovering from the loss of the catalog (`haven catalog rebuild`): the repository describes every
 * backup by itself (manifests and indexes, docs/design.md), so each backup it holds that the
 * catalog does not know gets its record back, `available`, restorable through the API at once.
 *
 * - The project: the one its manifest names (backups since Haven records it) when that project is
 *   in the catalog, else `fallbackProjectId` (the operator's choice, the admin project by default).
 * - What only the catalog held (the backup's own name and description, its policy, tags, sharing)
 *   cannot come back: the name is `rebuilt_<volume name>`, the description says where it came from.
 * - Records of backups whose manifest is gone are reported, never deleted here.
 *
 * Idempotent: a second run finds nothing to add.
 */
import type { Catalog } from '../catalog/catalog.ts';
import type { Backup } from '../domain/model.ts';
import type { BackupManifest } from '../engine/manifest.ts';

const GiB = 1024 ** 3;

export interface RebuildReport {
  /** Backups the repository holds. */
  repositoryBackups: number;
  /** Records added, each with the project it went to. */
  added: { id: string; projectId: string; volumeId: string; name: string }[];
  /** Manifests that could not be read (damaged): not added; haven verify says more. */
  unreadable: { id: string; error: string }[];
  /** Catalog records whose backup is not in the repository. */
  missingFromRepository: string[];
}

export async function rebuildCatalog(
  catalog: Catalog,
  repository: { listBackups(): Promise<{ manifests: BackupManifest[]; damaged: { id: string; error: string }[] }> },
  opts: { fallbackProjectId: string; availabilityZone: string; nowMs: number; dryRun?: boolean },
): Promise<RebuildReport> {
  const { manifests, damaged } = await repository.listBackups();
  const known = new Set(await catalog.backups.allIds());
  const inRepository = new Set([...manifests.map((m) => m.id), ...damaged.map((d) => d.id)]);
  const projects = new Map<string, boolean>();
  const projectExists = async (id: string): Promise<boolean> => {
    if (!projects.has(id)) projects.set(id, (await catalog.identity.getProject(id)) !== undefined);
    return projects.get(id)!;
  };
  const added: RebuildReport['added'] = [];
  // Parents first (a manifest's parent is older), so the records appear in the order they were made.
  for (const m of [...manifests].sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))) {
    if (known.has(m.id)) continue;
    const owner = m.volume.projectId;
    const projectId = owner && (await projectExists(owner)) ? owner : opts.fallbackProjectId;
    const created = Date.parse(m.createdAt);
    const at = Number.isFinite(created) ? created : opts.nowMs;
    const name = `rebuilt_${m.volume.name}`.slice(0, 255);
    const row: Backup = {
      id: m.id, projectId, volumeId: m.volume.id, snapshotId: null, name,
      description: `recovered from the repository by haven catalog rebuild (a ${m.kind} backup of volume ${m.volume.name})`,
      status: 'available', fullBackup: m.kind === 'full', parentId: m.parentId,
      sizeGb: Math.max(1, Math.ceil(m.sizeBytes / GiB)), sizeBytes: m.sizeBytes, storedBytes: m.stats.storedBytes, newBytes: m.stats.newBytes,
      objectCount: m.stats.objectsWritten, origin: 'native', policyId: null, tags: [], failReason: null, availabilityZone: opts.availabilityZone,
      createdAt: at, updatedAt: opts.nowMs, dataTimestamp: at, checkpointItemId: null,
    };
    if (!opts.dryRun) await catalog.backups.insertBackup(row);
    added.push({ id: m.id, projectId, volumeId: m.volume.id, name });
  }
  return {
    repositoryBackups: inRepository.size,
    added,
    unreadable: damaged,
    missingFromRepository: [...known].filter((id) => !inRepository.has(id)).sort(),
  };
}
