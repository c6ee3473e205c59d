/**
 * CSBS backup policies (csbs.md §4): create (P1), list (P2), show (P3), update (P4, also how servers
 * are associated and the schedule enabled or disabled), delete (P5), and run now (B1). A new policy
 * answers `suspended` (Terraform waits for exactly that); whether it runs by itself is
 * `scheduled_operations[0].enabled`.
 */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { CSBS_PROVIDER_ID } from '../../domain/checkpoint.ts';
import type { CsbsPolicy, CsbsPolicyResource, CsbsRetention } from '../../domain/csbs-policy.ts';
import { ErrorCode } from '../../domain/errors.ts';
import { ApiError, type RouteErrorCodes, type ValidationCodes } from '../errors.ts';
import { baseUrl, type ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { microsNoZone } from '../wire/time.ts';
import { nextLink, parseSortParam } from '../wire/paging.ts';
import { CheckpointJson } from './checkpoints.routes.ts';

const ERRORS: RouteErrorCodes = {
  [ErrorCode.PolicyNotFound]: ['CSBS.3000', 404],
  [ErrorCode.QuotaPoliciesExceeded]: ['CSBS.0001', 400],
  [ErrorCode.NameConflict]: ['CSBS.9007', 400],
  [ErrorCode.ServerNotFound]: ['CSBS.6000', 400],
  [ErrorCode.ServerInOtherPolicy]: ['CSBS.6004', 400],
  [ErrorCode.ServerHasNoVolume]: ['CSBS.6007', 400],
  [ErrorCode.ServerBusy]: ['CSBS.6005', 400],
  [ErrorCode.PolicyHasNoServer]: ['CSBS.6032', 500],
  [ErrorCode.InvalidArgument]: ['CSBS.9001', 400],
};
const VALIDATION: ValidationCodes = { fallback: 'CSBS.9001', paths: { '/policy/tags': { maxItems: ['CSBS.7000', 'request tags exceed the max allowed count: 10'] } } };
const CFG = { envelope: 'csbs' as const, auth: 'project' as const, errorCodes: ERRORS, validation: VALIDATION };

const NAME = { minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9_-]+$' };
const DESC = { maxLength: 255, pattern: '^[^<>]*$' };
const NumOrString = Type.Union([Type.Integer(), Type.String({ pattern: '^-?[0-9]+$' })]);
const BoolOrString = Type.Union([Type.Boolean(), Type.String({ pattern: '^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$' })]);
const Definition = Type.Object({
  max_backups: Type.Optional(NumOrString),
  retention_duration_days: Type.Optional(NumOrString),
  permanent: Type.Optional(BoolOrString),
  plan_id: Type.Optional(Type.String()),
  provider_id: Type.Optional(Type.String()),
  day_backups: Type.Optional(NumOrString),
  week_backups: Type.Optional(NumOrString),
  month_backups: Type.Optional(NumOrString),
  year_backups: Type.Optional(NumOrString),
  timezone: Type.Optional(Type.String()),
});
const Trigger = Type.Object({ properties: Type.Object({ pattern: Type.String({ minLength: 1, maxLength: 10240 }) }) });
const Resource = Type.Object({ id: Type.String({ minLength: 1 }), type: Type.String(), name: Type.String({ maxLength: 255 }), extra_info: Type.Optional(Type.Unknown()) });
const Tag = Type.Object({ key: Type.String({ minLength: 1, maxLength: 36, pattern: '^\\s*[A-Za-z0-9_-]+\\s*$' }), value: Type.String({ maxLength: 43, pattern: '^\\s*[A-Za-z0-9_-]*\\s*$' }) });
const CreateBody = Type.Object({
  policy: Type.Object({
    name: Type.String(NAME),
    description: Type.Optional(Type.String(DESC)),
    provider_id: Type.String(),
    parameters: Type.Object({ common: Type.Optional(Type.Record(Type.String(), Type.Unknown())) }),
    resources: Type.Array(Resource, { maxItems: 64 }),
    scheduled_operations: Type.Array(Type.Object({
      name: Type.Optional(Type.String(NAME)),
      description: Type.Optional(Type.String(DESC)),
      enabled: Type.Boolean(),
      operation_type: Type.Literal('backup'),
      operation_definition: Definition,
      trigger: Trigger,
    }), { minItems: 1, maxItems: 1 }),
    tags: Type.Optional(Type.Array(Tag, { minItems: 1, maxItems: 10 })),
  }),
});
const UpdateBody = Type.Object({
  policy: Type.Object({
    name: Type.Optional(Type.String(NAME)),
    description: Type.Optional(Type.String(DESC)),
    parameters: Type.Optional(Type.Object({ common: Type.Optional(Type.Record(Type.String(), Type.Unknown())) })),
    resources: Type.Optional(Type.Array(Resource, { maxItems: 64 })),
    scheduled_operations: Type.Optional(Type.Array(Type.Object({
      id: Type.String({ minLength: 1 }),
      name: Type.Optional(Type.String(NAME)),
      description: Type.Optional(Type.String(DESC)),
      enabled: Type.Optional(Type.Boolean()),
      operation_definition: Type.Optional(Definition),
      trigger: Type.Optional(Trigger),
    }), { minItems: 1, maxItems: 1 })),
  }),
});

type DefinitionWire = Static<typeof Definition>;
type ResourceWire = Static<typeof Resource>;
const PolicyParams = Type.Object({ projectId: PathParam, policyId: PathParam });
const ProviderParams = Type.Object({ projectId: PathParam, providerId: PathParam });

function toRetention(d: DefinitionWire): CsbsRetention {
  const num = (v: number | string | undefined, what: string, min: number): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > 99999) throw new ApiError(400, `operation_definition.${what} must be ${min === -1 ? '-1 or ' : ''}0-99999, got ${v}`, 'CSBS.9001');
    return n;
  };
  const r: CsbsRetention = {};
  const set = <K extends keyof CsbsRetention>(k: K, v: CsbsRetention[K] | undefined) => {
    if (v !== undefined) r[k] = v;
  };
  set('maxBackups', num(d.max_backups, 'max_backups', -1));
  set('retentionDurationDays', num(d.retention_duration_days, 'retention_duration_days', -1));
  set('dayBackups', num(d.day_backups, 'day_backups', 0));
  set('weekBackups', num(d.week_backups, 'week_backups', 0));
  set('monthBackups', num(d.month_backups, 'month_backups', 0));
  set('yearBackups', num(d.year_backups, 'year_backups', 0));
  if (d.permanent !== undefined) r.permanent = d.permanent === true || String(d.permanent).toLowerCase() === 'true';
  if (d.timezone !== undefined) r.timezone = d.timezone;
  return r;
}

function toResources(list: ResourceWire[]): CsbsPolicyResource[] {
  for (const r of list) if (r.type !== 'OS::Nova::Server') throw new ApiError(400, `Resource (${r.id}) type (${r.type}) is not support protection.`, 'CSBS.6003');
  return list.map((r) => ({ serverId: r.id, name: r.name }));
}

function checkTags(tags: { key: string; value: string }[] | undefined): { key: string; value: string }[] {
  const t = (tags ?? []).map((x) => ({ key: x.key.trim(), value: x.value.trim() }));
  if (new Set(t.map((x) => x.key)).size !== t.length) throw new ApiError(400, 'Tag keys must be unique.', 'CSBS.9001');
  return t;
}

const triggerStart = (ms: number) => new Date(ms).toISOString().slice(0, 19).replace('T', ' ');

// What the policy operations answer (OpenAPI; the tests check real answers against these).
const Str = Type.String();
const CsbsPolicyJson = Type.Object({
  id: Str, name: Str, description: Str, status: Type.String({ description: 'suspended (new) or enabled' }), provider_id: Str, project_id: Str, created_at: Type.Union([Str, Type.Null()]),
  parameters: Type.Record(Str, Type.Unknown()), tags: Type.Array(Type.Object({ key: Str, value: Str })),
  resources: Type.Array(Type.Object({ id: Str, type: Type.Literal('OS::Nova::Server'), name: Str, extra_info: Type.Object({}) })),
  scheduled_operations: Type.Array(Type.Object({
    id: Str, name: Str, description: Str, enabled: Type.Boolean(), operation_type: Type.Literal('backup'),
    operation_definition: Type.Record(Str, Type.Unknown(), { description: 'plan_id, provider_id and the retention rules set (max_backups, retention_duration_days, day/week/month/year_backups, timezone, permanent)' }),
    trigger_id: Str, trigger: Type.Object({ id: Str, name: Str, type: Type.Literal('time'), properties: Type.Object({ pattern: Str, start_time: Str, format: Type.Literal('ical') }) }),
  })),
});
const PolicyLinks = Type.Array(Type.Object({ href: Str, rel: Str }));

export function policyJson(p: CsbsPolicy, resources: CsbsPolicyResource[]) {
  const r = p.retention;
  const definition: Record<string, unknown> = { plan_id: p.id, provider_id: CSBS_PROVIDER_ID };
  if (r.maxBackups !== undefined) definition.max_backups = r.maxBackups;
  if (r.retentionDurationDays !== undefined) definition.retention_duration_days = r.retentionDurationDays;
  if (r.permanent !== undefined) definition.permanent = r.permanent;
  if (r.dayBackups !== undefined) definition.day_backups = r.dayBackups;
  if (r.weekBackups !== undefined) definition.week_backups = r.weekBackups;
  if (r.monthBackups !== undefined) definition.month_backups = r.monthBackups;
  if (r.yearBackups !== undefined) definition.year_backups = r.yearBackups;
  if (r.timezone !== undefined) definition.timezone = r.timezone;
  return {
    id: p.id,
    name: p.name,
    description: p.description,
    status: p.status,
    provider_id: CSBS_PROVIDER_ID,
    project_id: p.projectId,
    created_at: microsNoZone(p.createdAt),
    parameters: { common: {}, ...p.parameters },
    tags: p.tags,
    resources: resources.map((x) => ({ id: x.serverId, type: 'OS::Nova::Server' as const, name: x.name, extra_info: {} })),
    scheduled_operations: [{
      id: p.operationId,
      name: p.operationName,
      description: p.operationDescription,
      enabled: p.enabled,
      operation_type: 'backup' as const,
      operation_definition: definition,
      trigger_id: p.triggerId,
      trigger: { id: p.triggerId, name: 'default', type: 'time' as const, properties: { pattern: p.pattern, start_time: triggerStart(p.triggerStart), format: 'ical' as const } },
    }],
  };
}

export function registerCsbsPolicyRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const pid = (req: { params: { projectId: string } }) => req.params.projectId;
  const policyId = (req: { params: { policyId: string } }) => req.params.policyId;
  const tags = ['csbs policies'];
  const view = async (p: CsbsPolicy) => policyJson(p, await s.csbsPolicies.resources(p.id));

  app.post('/v1/:projectId/policies', { config: CFG, schema: { params: ProjectParams, body: CreateBody, tags, summary: 'Create a backup policy (P1)', response: { 200: Type.Object({ policy: CsbsPolicyJson }) } } }, async (req) => {
    const b = req.body.policy;
    if (b.provider_id !== CSBS_PROVIDER_ID) throw new ApiError(400, `provider invalid: ${b.provider_id}`, 'CSBS.9001');
    const op = b.scheduled_operations[0]!;
    const p = await s.csbsPolicies.createPolicy(pid(req), {
      name: b.name, description: b.description ?? '', parameters: b.parameters.common ? { common: b.parameters.common } : {}, resources: toResources(b.resources), tags: checkTags(b.tags),
      operation: { name: op.name ?? '', description: op.description ?? '', enabled: op.enabled, retention: toRetention(op.operation_definition), pattern: op.trigger.properties.pattern },
    });
    return { policy: await view(p) };
  });

  const ListQuery = Type.Object({
    limit: Type.Optional(Type.Integer({ minimum: 1 })),
    marker: Type.Optional(Type.String()),
    offset: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
    sort: Type.Optional(Type.String({ maxLength: 255 })),
    name: Type.Optional(Type.String()),
    all_tenants: Type.Optional(Type.String()),
  });
  app.get('/v1/:projectId/policies', { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List backup policies (P2)', response: { 200: Type.Object({ policies: Type.Array(CsbsPolicyJson), policies_links: Type.Optional(PolicyLinks) }) } } }, async (req) => {
    const q = req.query;
    let sortKey: 'created_at' | 'name' | 'id' | 'updated_at' = 'created_at';
    let sortDir: 'asc' | 'desc' = 'desc';
    if (q.sort) {
      const parsed = parseSortParam(q.sort, ['created_at', 'updated_at', 'name', 'id'] as const);
      if ('error' in parsed) throw new ApiError(400, parsed.error, 'CSBS.9001');
      ({ key: sortKey, dir: sortDir } = parsed);
    }
    const limit = Math.min(q.limit ?? 1000, 1000);
    const rows = await s.csbsPolicies.listPolicies(pid(req), { name: q.name, sortKey, sortDir, limit: limit + 1, offset: q.offset ?? 0, marker: q.marker });
    const page = rows.slice(0, limit);
    const policies = await Promise.all(page.map(view));
    return rows.length > limit && page.length ? { policies, policies_links: nextLink(`${baseUrl(s.config, req)}/v1/${pid(req)}/policies`, q, limit, page.at(-1)!.id) } : { policies };
  });
  app.get('/v1/:projectId/policies/:policyId', { config: CFG, schema: { params: PolicyParams, tags, summary: 'Show a backup policy (P3)', response: { 200: Type.Object({ policy: CsbsPolicyJson }) } } }, async (req) => ({ policy: await view(await s.csbsPolicies.getPolicy(pid(req), policyId(req))) }));
  app.put('/v1/:projectId/policies/:policyId', { config: CFG, schema: { params: PolicyParams, body: UpdateBody, tags, summary: 'Update a policy: name, servers, schedule, enabled (P4)', response: { 200: Type.Object({ policy: CsbsPolicyJson }) } } }, async (req) => {
    const b = req.body.policy;
    const op = b.scheduled_operations?.[0];
    const operation = op ? {
      id: op.id,
      ...(op.name !== undefined ? { name: op.name } : {}),
      ...(op.description !== undefined ? { description: op.description } : {}),
      ...(op.enabled !== undefined ? { enabled: op.enabled } : {}),
      ...(op.operation_definition !== undefined ? { retention: toRetention(op.operation_definition) } : {}),
      ...(op.trigger !== undefined ? { pattern: op.trigger.properties.pattern } : {}),
    } : undefined;
    const p = await s.csbsPolicies.updatePolicy(pid(req), policyId(req), {
      ...(b.name !== undefined ? { name: b.name } : {}),
      ...(b.description !== undefined ? { description: b.description } : {}),
      ...(b.parameters?.common !== undefined ? { parameters: { common: b.parameters.common } } : {}),
      ...(b.resources !== undefined ? { resources: toResources(b.resources) } : {}),
      ...(operation ? { operation } : {}),
    });
    return { policy: await view(p) };
  });
  app.delete('/v1/:projectId/policies/:policyId', { config: CFG, schema: { params: PolicyParams, tags, summary: 'Delete a policy (P5); its backups are kept', response: { 200: Type.Object({}, { description: 'an empty object' }) } } }, async (req) => {
    await s.csbsPolicies.deletePolicy(pid(req), policyId(req));
    return {};
  });

  const Execute = Type.Object({ checkpoint: Type.Object({ plan_id: Type.String({ minLength: 1 }), parameters: Type.Object({ auto_trigger: Type.Optional(Type.Boolean()), resources: Type.Optional(Type.Array(Type.String({ minLength: 1 }))) }) }) });
  app.post('/v1/:projectId/providers/:providerId/checkpoints', { config: CFG, schema: { params: ProviderParams, body: Execute, tags, summary: 'Execute a backup policy now (B1)', response: { 200: Type.Object({ checkpoint: CheckpointJson }) } } }, async (req) => {
    if (req.params.providerId !== CSBS_PROVIDER_ID) throw new ApiError(400, `provider invalid: ${req.params.providerId}`, 'CSBS.9001');
    const b = req.body.checkpoint;
    const { checkpoint, items, policy } = await s.csbsPolicies.execute(pid(req), b.plan_id, { autoTrigger: false, resources: b.parameters.resources });
    const names = new Map((await s.csbsPolicies.resources(policy.id)).map((r) => [r.serverId, r.name]));
    return {
      checkpoint: {
        id: checkpoint.id, status: checkpoint.status, created_at: microsNoZone(checkpoint.createdAt), project_id: checkpoint.projectId, resource_graph: null,
        protection_plan: { id: policy.id, name: policy.name, resources: items.map((i) => ({ id: i.serverId, type: 'OS::Nova::Server', name: names.get(i.serverId) ?? i.serverName, extra_info: '{}' })) },
        extra_info: JSON.stringify({ created_by: 'manual' }),
      },
    };
  });
}
