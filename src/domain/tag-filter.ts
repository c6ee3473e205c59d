/**
 * The TMS-style tag filter shared by VBS (policies) and CSBS (backups, policies):
 * `tags` all keys (values OR-ed, [] = any value), `tags_any` any key, `not_tags` / `not_tags_any`
 * exclude, `matches` a substring of the resource name.
 */
export interface TagCondition {
  key: string;
  values: string[];
}

export interface TagQuery {
  tags?: TagCondition[] | undefined;
  tagsAny?: TagCondition[] | undefined;
  notTags?: TagCondition[] | undefined;
  notTagsAny?: TagCondition[] | undefined;
  nameContains?: string[] | undefined;
}

const has = (tags: Map<string, string>, c: TagCondition) => tags.has(c.key) && (c.values.length === 0 || c.values.includes(tags.get(c.key)!));

export function matchesTagQuery(resource: { name: string; tags: { key: string; value: string }[] }, q: TagQuery): boolean {
  const m = new Map(resource.tags.map((t) => [t.key, t.value]));
  if (q.tags?.length && !q.tags.every((c) => has(m, c))) return false;
  if (q.tagsAny?.length && !q.tagsAny.some((c) => has(m, c))) return false;
  if (q.notTags?.length && q.notTags.every((c) => has(m, c))) return false;
  if (q.notTagsAny?.length && q.notTagsAny.some((c) => has(m, c))) return false;
  if (q.nameContains?.length && !q.nameContains.every((v) => resource.name.includes(v))) return false;
  return true;
}
