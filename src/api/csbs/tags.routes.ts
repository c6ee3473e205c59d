/**
 * CSBS tags (csbs.md §7): the backup family (`csbs_backup`, checkpoint items) and the policy family
 * (`csbs_backup_policy`), the same shapes: add one (204), remove one (204, 404 CSBS.7001), batch
 * create/delete (204), list one resource's tags, all tags of the project by key, and filter/count
 * resources by tag.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { ErrorCode } from '../../domain/errors.ts';
import { matchesTagQuery } from '../../domain/tag-filter.ts';
import type { TagKind } from '../../services/csbs-tag-service.ts';
import { ApiError, type RouteErrorCodes } from '../errors.ts';
import type { ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { NoBody as Done } from '../wire/schemas.ts';

const ERRORS: RouteErrorCodes = {
  [ErrorCode.CheckpointItemNotFound]: ['CSBS.3001', 404],
  [ErrorCode.PolicyNotFound]: ['CSBS.3000', 404],
  [ErrorCode.TooManyTags]: ['CSBS.7000', 400],
  [ErrorCode.TagNotFound]: ['CSBS.7001', 404],
};
const CFG = { envelope: 'csbs' as const, auth: 'project' as const, errorCodes: ERRORS, validation: { fallback: 'CSBS.9001' } };
const WriteTag = Type.Object({ key: Type.String({ minLength: 1, maxLength: 36, pattern: '^\\s*[A-Za-z0-9_-]+\\s*$' }), value: Type.String({ maxLength: 43, pattern: '^\\s*[A-Za-z0-9_-]*\\s*$' }) });
const Condition = Type.Object({ key: Type.String({ minLength: 1, maxLength: 127 }), values: Type.Array(Type.String({ maxLength: 255 }), { maxItems: 10, uniqueItems: true }) });
const NumberString = Type.Union([Type.String({ pattern: '^[0-9]+$' }), Type.Integer({ minimum: 0 })]);
const FilterBody = Type.Object({
  action: Type.Union([Type.Literal('filter'), Type.Literal('count')]),
  tags: Type.Optional(Type.Array(Condition, { minItems: 1, maxItems: 10 })),
  tags_any: Type.Optional(Type.Array(Condition, { minItems: 1, maxItems: 10 })),
  not_tags: Type.Optional(Type.Array(Condition, { minItems: 1, maxItems: 10 })),
  not_tags_any: Type.Optional(Type.Array(Condition, { minItems: 1, maxItems: 10 })),
  matches: Type.Optional(Type.Array(Type.Object({ key: Type.Literal('resource_name'), value: Type.String({ maxLength: 255 }) }))),
  limit: Type.Optional(NumberString),
  offset: Type.Optional(NumberString),
});

const trim = (t: { key: string; value: string }) => ({ key: t.key.trim(), value: t.value.trim() });
const ResourceParams = Type.Object({ projectId: PathParam, resourceId: PathParam });
const TagKeyParams = Type.Object({ projectId: PathParam, resourceId: PathParam, key: PathParam });

// What the tag operations answer (OpenAPI; the tests check real answers against these).
const TagJson = Type.Object({ key: Type.String(), value: Type.String() });
const Filtered = Type.Object({
  total_count: Type.Integer(),
  resources: Type.Optional(Type.Array(Type.Object({ resource_id: Type.String(), resource_name: Type.String(), resource_detail: Type.Unknown({ description: 'the backup or policy' }), tags: Type.Array(TagJson) }))),
}, { description: 'action count: total_count alone' });

export function registerCsbsTagRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const pid = (req: { params: { projectId: string } }) => req.params.projectId;
  const rid = (req: { params: { resourceId: string } }) => req.params.resourceId;
  for (const [segment, kind] of [['csbs_backup', 'backup'], ['csbs_backup_policy', 'policy']] as [string, TagKind][]) {
    const tags = [`csbs ${kind} tags`];
    // Literal segments before /:resourceId.
    app.get(`/v1/:projectId/${segment}/tags`, { config: CFG, schema: { params: ProjectParams, tags, summary: `All ${kind} tags of the project, by key (T6/T12)`, response: { 200: Type.Object({ tags: Type.Array(Type.Object({ key: Type.String(), values: Type.Array(Type.String()) })) }) } } }, async (req) => {
      const byKey = new Map<string, Set<string>>();
      for (const r of await s.csbsTags.resources(pid(req), kind)) for (const t of r.tags) (byKey.get(t.key) ?? byKey.set(t.key, new Set()).get(t.key)!).add(t.value);
      return { tags: [...byKey].map(([key, values]) => ({ key, values: [...values] })) };
    });
    app.post(`/v1/:projectId/${segment}/resource_instances/action`, { config: CFG, schema: { params: ProjectParams, body: FilterBody, tags, summary: `Filter or count ${kind}s by tag (T1/T7)`, response: { 200: Filtered } } }, async (req) => {
      const b = req.body;
      const limit = b.limit === undefined ? 1000 : Number(b.limit);
      const offset = b.offset === undefined ? 0 : Number(b.offset);
      if (limit < 1 || limit > 1000) throw new ApiError(400, 'limit must be 1-1000', 'CSBS.9001');
      for (const list of [b.tags, b.tags_any, b.not_tags, b.not_tags_any]) if (list && new Set(list.map((t) => t.key.trim())).size !== list.length) throw new ApiError(400, 'tag keys must be unique', 'CSBS.9001');
      const q = { tags: b.tags, tagsAny: b.tags_any, notTags: b.not_tags, notTagsAny: b.not_tags_any, nameContains: b.matches?.map((m) => m.value).filter(Boolean) };
      const hits = (await s.csbsTags.resources(pid(req), kind)).filter((r) => matchesTagQuery(r, q));
      if (b.action === 'count') return { total_count: hits.length };
      const page = hits.slice(offset, offset + limit);
      const resources = [];
      for (const r of page) {
        const detail = kind === 'backup' ? { id: r.id, name: r.name, tags: r.tags, ...(await s.serverBackups.getItem(pid(req), r.id).then((i) => ({ checkpoint_id: i.checkpointId, status: i.status, resource_id: i.serverId, resource_type: 'OS::Nova::Server' })).catch(() => ({}))) } : {};
        resources.push({ resource_id: r.id, resource_name: r.name, resource_detail: detail, tags: r.tags });
      }
      return { resources, total_count: hits.length };
    });
    app.post(`/v1/:projectId/${segment}/:resourceId/tags`, { config: CFG, schema: { params: ResourceParams, body: Type.Object({ tag: WriteTag }), tags, summary: `Add one tag to a ${kind} (T3/T9)`, response: { 204: Done } } }, async (req, reply) => {
      await s.csbsTags.add(pid(req), kind, rid(req), [trim(req.body.tag)]);
      return reply.code(204).send();
    });
    app.delete(`/v1/:projectId/${segment}/:resourceId/tags/:key`, { config: CFG, schema: { params: TagKeyParams, tags, summary: `Remove one tag of a ${kind} (T4/T10)`, response: { 204: Done } } }, async (req, reply) => {
      const key = req.params.key.trim();
      if (!key || key.length > 127) throw new ApiError(400, 'tag key must be 1-127 characters', 'CSBS.9001');
      await s.csbsTags.remove(pid(req), kind, rid(req), [{ key }], true);
      return reply.code(204).send();
    });
    const Batch = Type.Object({
      action: Type.Union([Type.Literal('create'), Type.Literal('delete')]),
      tags: Type.Array(Type.Object({ key: Type.String({ minLength: 1, maxLength: 127 }), value: Type.Optional(Type.String({ maxLength: 255 })) }), { minItems: 1, maxItems: 10 }),
    });
    app.post(`/v1/:projectId/${segment}/:resourceId/tags/action`, { config: CFG, schema: { params: ResourceParams, body: Batch, tags, summary: `Create or delete tags of a ${kind} in a batch (T2/T8)`, response: { 204: Done } } }, async (req, reply) => {
      const b = req.body;
      if (b.action === 'delete') {
        await s.csbsTags.remove(pid(req), kind, rid(req), b.tags.map((t) => ({ key: t.key.trim(), value: t.value?.trim() })), false);
      } else {
        const list = b.tags.map((t) => {
          if (t.value === undefined) throw new ApiError(400, `tag ${t.key} needs a value`, 'CSBS.9001');
          const x = trim({ key: t.key, value: t.value });
          if (!/^[A-Za-z0-9_-]{1,36}$/.test(x.key) || !/^[A-Za-z0-9_-]{0,43}$/.test(x.value)) throw new ApiError(400, `tag ${x.key}=${x.value}: keys are 1-36 and values 0-43 letters, digits, "_" or "-"`, 'CSBS.9001');
          return x;
        });
        if (new Set(list.map((t) => t.key)).size !== list.length) throw new ApiError(400, 'tag keys must be unique', 'CSBS.9001');
        await s.csbsTags.add(pid(req), kind, rid(req), list);
      }
      return reply.code(204).send();
    });
    app.get(`/v1/:projectId/${segment}/:resourceId/tags`, { config: CFG, schema: { params: ResourceParams, tags, summary: `Tags of one ${kind} (T5/T11)`, response: { 200: Type.Object({ tags: Type.Array(TagJson) }) } } }, async (req) => ({ tags: await s.csbsTags.tags(pid(req), kind, rid(req)) }));
  }
}
