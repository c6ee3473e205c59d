/**
 * Tags of CSBS backups (checkpoint items) and policies: the two TMS-style families of csbs.md §7,
 * one implementation. At most 10 tags per resource; adding an existing key replaces its value.
 */
import type { Catalog, CatalogQueries } from '../catalog/catalog.ts';
import { AppError, ErrorCode } from '../domain/errors.ts';

export type TagKind = 'backup' | 'policy';
export type ResourceTag = { key: string; value: string };
export const MAX_TAGS = 10;

export class CsbsTagService {
  private readonly catalog: Catalog;

  constructor(catalog: Catalog) {
    this.catalog = catalog;
  }

  private async load(c: CatalogQueries, projectId: string, kind: TagKind, id: string): Promise<{ name: string; tags: ResourceTag[] }> {
    if (kind === 'backup') {
      const i = await c.checkpoints.getItem(projectId, id);
      if (!i) throw new AppError(ErrorCode.CheckpointItemNotFound, `Checkpoint_item (${id}) is not found.`);
      return { name: i.name, tags: i.tags };
    }
    const p = await c.csbsPolicies.getPolicy(projectId, id);
    if (!p) throw new AppError(ErrorCode.PolicyNotFound, 'plan not found');
    return { name: p.name, tags: p.tags };
  }

  private async store(c: CatalogQueries, kind: TagKind, id: string, tags: ResourceTag[]): Promise<void> {
    if (kind === 'backup') await c.checkpoints.setItemTags(id, tags);
    else await c.csbsPolicies.setTags(id, tags);
  }

  async tags(projectId: string, kind: TagKind, id: string): Promise<ResourceTag[]> {
    return (await this.load(this.catalog, projectId, kind, id)).tags;
  }

  /** Read, change and write in one transaction, so concurrent changes are not lost. */
  async add(projectId: string, kind: TagKind, id: string, add: ResourceTag[]): Promise<void> {
    await this.catalog.transaction(async (c) => {
      const have = new Map((await this.load(c, projectId, kind, id)).tags.map((t) => [t.key, t.value]));
      for (const t of add) have.set(t.key, t.value);
      if (have.size > MAX_TAGS) throw new AppError(ErrorCode.TooManyTags, `request tags exceed the max allowed count: ${MAX_TAGS}.`);
      await this.store(c, kind, id, [...have].map(([key, value]) => ({ key, value })));
    });
  }

  /** Deletes by key, or by key and value when a value is given; with `mustExist` a missing key is 404. */
  async remove(projectId: string, kind: TagKind, id: string, remove: { key: string; value?: string | undefined }[], mustExist: boolean): Promise<void> {
    await this.catalog.transaction(async (c) => {
      const tags = (await this.load(c, projectId, kind, id)).tags;
      if (mustExist && remove.some((r) => !tags.some((t) => t.key === r.key))) throw new AppError(ErrorCode.TagNotFound, 'The backup tag does not exist.');
      const left = tags.filter((t) => !remove.some((r) => r.key === t.key && (r.value === undefined || r.value === t.value)));
      await this.store(c, kind, id, left);
    });
  }

  /** All resources of a kind with their names and tags (for aggregation and the tag filter). */
  async resources(projectId: string, kind: TagKind): Promise<{ id: string; name: string; tags: ResourceTag[] }[]> {
    if (kind === 'backup') return (await this.catalog.checkpoints.listItems(projectId, {}, { sortKey: 'created_at', sortDir: 'desc', limit: 100_000, offset: 0 })).map((i) => ({ id: i.id, name: i.name, tags: i.tags }));
    return (await this.catalog.csbsPolicies.listPolicies(projectId, { sortKey: 'created_at', sortDir: 'desc', limit: 100_000, offset: 0 })).map((p) => ({ id: p.id, name: p.name, tags: p.tags }));
  }
}
