/**
 * VBS backup policies (vbs.md §3-4): P1-P9 and the tag endpoints T1-T6. Every rule of the reference
 * maps to its AutoBackup code; a request containing `<` or `>` anywhere is refused with
 * AutoBackup.0221 before anything else is looked at.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type, type Static } from 'typebox';
import { ErrorCode } from '../../domain/errors.ts';
import { parseTimeZone } from '../../domain/policy.ts';
import { matchesTagQuery } from '../../domain/tag-filter.ts';
import type { PolicyInput } from '../../services/policy-service.ts';
import { ApiError, type RouteErrorCodes, type ValidationCodes } from '../errors.ts';
import type { ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { policyJson, taskJson } from '../wire/policy-wire.ts';
import { NoBody as NoContent, NullableString as NullStr } from '../wire/schemas.ts';

const START_TIME = '^([01][0-9]|2[0-3]):00(,([01][0-9]|2[0-3]):00)*$';
const TAG_KEY_CHARS = '^[A-Za-z0-9_.-]+$';
const TAG_VALUE_CHARS = '^[A-Za-z0-9_.-]*$';
const PolicyTag = Type.Object({ key: Type.String({ minLength: 1, maxLength: 36, pattern: TAG_KEY_CHARS }), value: Type.String({ maxLength: 43, pattern: TAG_VALUE_CHARS }) });
/** WEEK_DAYS (domain/policy.ts), listed so that the schema's type is WeekDay. */
const WeekDaySchema = Type.Union([Type.Literal('SUN'), Type.Literal('MON'), Type.Literal('TUE'), Type.Literal('WED'), Type.Literal('THU'), Type.Literal('FRI'), Type.Literal('SAT')]);

/** scheduled_policy: start_time and status are required on create (P1), optional on update (P3). */
const StartTime = Type.String({ pattern: START_TIME });
const PolicyStatus = Type.Union([Type.Literal('ON'), Type.Literal('OFF')]);
const SCHEDULE_FIELDS = {
  frequency: Type.Optional(Type.Integer({ minimum: 1, maximum: 30 })),
  week_frequency: Type.Optional(Type.Array(WeekDaySchema, { minItems: 1, maxItems: 7, uniqueItems: true })),
  rentention_num: Type.Optional(Type.Integer({ minimum: 2, maximum: 99 })),
  rentention_day: Type.Optional(Type.Number({ minimum: 2, maximum: 99999 })),
  remain_first_backup_of_curMonth: Type.Optional(Type.Union([Type.Literal('Y'), Type.Literal('N'), Type.Literal(''), Type.Boolean()])),
};
const ScheduledCreate = Type.Object({ start_time: StartTime, ...SCHEDULE_FIELDS, status: PolicyStatus });
const ScheduledUpdate = Type.Object({ start_time: Type.Optional(StartTime), ...SCHEDULE_FIELDS, status: Type.Optional(PolicyStatus) });
const PolicyName = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.-]+$', not: { pattern: '^[Dd][Ee][Ff][Aa][Uu][Ll][Tt]' } });
const TimeZone = Type.String({ pattern: '^UTC[+-][0-9]{2}:[0-9]{2}$' });
const CreateBody = Type.Object({ backup_policy_name: PolicyName, scheduled_policy: ScheduledCreate, tags: Type.Optional(Type.Array(PolicyTag, { maxItems: 10 })), time_zone: Type.Optional(TimeZone) });
const UpdateBody = Type.Object({ backup_policy_name: Type.Optional(PolicyName), scheduled_policy: Type.Optional(ScheduledUpdate), time_zone: Type.Optional(TimeZone) });

const POLICY_VALIDATION: ValidationCodes = {
  fallback: 'AutoBackup.0008',
  paths: {
    '': { '*': 'AutoBackup.0000' },
    '/backup_policy_name': { pattern: 'AutoBackup.0102', not: ['AutoBackup.0102', 'must not start with "default"'], '*': 'AutoBackup.0101' },
    '/scheduled_policy': { '*': 'AutoBackup.0001' },
    '/scheduled_policy/start_time': { '*': ['AutoBackup.0103', 'must be whole UTC hours HH:00, comma separated (e.g. "22:00,02:00")'] },
    '/scheduled_policy/status': { '*': ['AutoBackup.0104', 'must be ON or OFF'] },
    '/scheduled_policy/remain_first_backup_of_curMonth': { '*': ['AutoBackup.0105', 'must be Y or N'] },
    '/scheduled_policy/frequency': { '*': ['AutoBackup.0106', 'must be an integer from 1 to 30 (days)'] },
    '/scheduled_policy/week_frequency': { '*': ['AutoBackup.0106', 'must be a non-empty list of distinct days SUN, MON, TUE, WED, THU, FRI, SAT'] },
    '/scheduled_policy/week_frequency/*': { '*': ['AutoBackup.0106', 'must be one of SUN, MON, TUE, WED, THU, FRI, SAT'] },
    '/scheduled_policy/rentention_num': { '*': ['AutoBackup.0107', 'must be an integer from 2 to 99'] },
    '/scheduled_policy/rentention_day': { '*': ['AutoBackup.0107', 'must be a number of days from 2 to 99999'] },
    '/tags': { maxItems: ['AutoBackup.0215', 'must hold at most 10 tags'], '*': 'AutoBackup.0214' },
    '/tags/*': { '*': 'AutoBackup.0214' },
    '/tags/*/key': { '*': ['AutoBackup.0214', 'must be 1-36 letters, digits, "_", "-" or "."'] },
    '/tags/*/value': { '*': ['AutoBackup.0214', 'must be 0-43 letters, digits, "_", "-" or "."'] },
    '/time_zone': { '*': ['AutoBackup.0226', 'must be UTC+HH:mm or UTC-HH:mm'] },
  },
};
const POLICY_ERRORS: RouteErrorCodes = {
  [ErrorCode.PolicyNotFound]: ['AutoBackup.0205', 404],
  [ErrorCode.PolicyBusy]: ['AutoBackup.0225', 409],
  [ErrorCode.QuotaPoliciesExceeded]: ['AutoBackup.0203', 400],
  [ErrorCode.TooManyTags]: ['AutoBackup.0215', 400],
  [ErrorCode.TagNotFound]: ['AutoBackup.0216', 404],
  [ErrorCode.ScheduleInvalid]: ['AutoBackup.0106', 400],
  [ErrorCode.RetentionInvalid]: ['AutoBackup.0107', 400],
};

const PolicyParams = Type.Object({ projectId: PathParam, policyId: PathParam });
const PolicyTagParams = Type.Object({ projectId: PathParam, policyId: PathParam, key: PathParam });

/** A create body (P1) is also a valid update body (P3): both go through here. */
function toInput(body: Static<typeof UpdateBody>): PolicyInput {
  const s = body.scheduled_policy ?? {};
  if (body.time_zone !== undefined && parseTimeZone(body.time_zone) === null) throw new ApiError(400, `Invalid input received: time_zone ${body.time_zone} is not a valid UTC offset.`, 'AutoBackup.0226');
  const rf = s.remain_first_backup_of_curMonth;
  return {
    name: body.backup_policy_name,
    startTime: s.start_time,
    frequency: s.frequency,
    weekFrequency: s.week_frequency,
    retentionNum: s.rentention_num,
    // "floating point input is rounded down" (vbs.md §3.0)
    retentionDay: s.rentention_day === undefined ? undefined : Math.floor(s.rentention_day),
    remainFirstBackupOfCurMonth: rf === undefined || rf === '' ? undefined : rf === true || rf === 'Y',
    status: s.status,
    timeZone: body.time_zone,
  };
}

/** AutoBackup.0221: `<` or `>` anywhere in the request body. */
async function refuseAngleBrackets(req: FastifyRequest): Promise<void> {
  if (req.body !== undefined && /[<>]/.test(JSON.stringify(req.body))) throw new ApiError(400, 'Invalid input received: the request must not contain "<" or ">".', 'AutoBackup.0221');
}

const TagFilter = Type.Array(Type.Object({ key: Type.String({ minLength: 1, maxLength: 127 }), values: Type.Array(Type.String({ maxLength: 255 }), { maxItems: 10, uniqueItems: true }) }), { maxItems: 10 });
const NumberString = Type.String({ pattern: '^[0-9]+$' });
const FilterBody = Type.Object({
  action: Type.Union([Type.Literal('filter'), Type.Literal('count')]),
  tags: Type.Optional(TagFilter),
  tags_any: Type.Optional(Type.Array(TagFilter.items, { minItems: 1, maxItems: 10 })),
  not_tags: Type.Optional(TagFilter),
  not_tags_any: Type.Optional(TagFilter),
  matches: Type.Optional(Type.Array(Type.Object({ key: Type.Literal('resource_name'), value: Type.String({ maxLength: 255 }) }))),
  limit: Type.Optional(Type.Union([NumberString, Type.Integer()])),
  offset: Type.Optional(Type.Union([NumberString, Type.Integer()])),
});
const BatchTags = Type.Object({
  action: Type.Union([Type.Literal('create'), Type.Literal('update'), Type.Literal('delete')]),
  tags: Type.Optional(Type.Array(Type.Object({ key: Type.String({ minLength: 1, maxLength: 127 }), value: Type.Optional(Type.String({ maxLength: 255 })) }), { maxItems: 10 })),
});
const TAG_VALIDATION: ValidationCodes = { fallback: 'AutoBackup.0214', paths: { '/action': { '*': ['AutoBackup.0222', 'must be create, update or delete'] }, '/tag': { required: 'AutoBackup.0001' } } };

// What the policy operations answer (OpenAPI; the tests check real answers against these).
const ScheduledPolicyJson = Type.Object({
  start_time: Type.String(), frequency: Type.Optional(Type.Integer()), week_frequency: Type.Optional(Type.Array(Type.String())),
  rentention_num: Type.Optional(Type.Integer({ description: 'OTC\'s spelling' })), rentention_day: Type.Optional(Type.Integer()),
  remain_first_backup_of_curMonth: Type.Union([Type.Literal('Y'), Type.Literal('N')]), status: Type.Union([Type.Literal('ON'), Type.Literal('OFF')]),
});
const PolicyJson = Type.Object({
  backup_policy_id: Type.String(), backup_policy_name: Type.String(), scheduled_policy: ScheduledPolicyJson,
  policy_resource_count: Type.Integer(), time_zone: Type.Optional(Type.String()),
});
const PolicyRef = Type.Object({ backup_policy_id: Type.String() });
const TaskJson = Type.Object({
  job_id: Type.String({ description: 'the task id' }), status: Type.String({ description: 'RUNNING, WAITING, EXECUTE_SUCCESS, EXECUTE_FAIL, EXECUTE_TIMEOUT, SKIP' }),
  created_at: NullStr, backup_name: Type.String(), resource_id: Type.String(), resource_type: Type.Literal('volume'),
  finished_at: Type.Optional(NullStr), vbs_job_id: Type.Optional(Type.String({ description: 'the backup job (GET /v1/{project_id}/jobs/{job_id})' })),
});
const TagList = Type.Object({ tags: Type.Array(Type.Object({ key: Type.String(), value: Type.String() })) });
const ResourceResult = Type.Object({ resource_id: Type.String(), code: Type.Optional(Type.String()), message: Type.Optional(Type.String()) }, { description: 'success_resources also carry resource_type, availability_zone, os_vol_host_attr' });
const AssocResult = Type.Object({ success_resources: Type.Array(ResourceResult), fail_resources: Type.Array(ResourceResult) });

export function registerPolicyRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const pid = (req: { params: { projectId: string } }) => req.params.projectId;
  const policyId = (req: { params: { policyId: string } }) => req.params.policyId;
  const cfg = { envelope: 'vbs' as const, auth: 'project' as const, validation: POLICY_VALIDATION, errorCodes: POLICY_ERRORS };
  const tags = ['vbs policies'];

  app.post('/v2/:projectId/backuppolicy', { config: cfg, preValidation: refuseAngleBrackets, schema: { params: ProjectParams, body: CreateBody, tags, summary: 'Create a backup policy (P1)', response: { 200: PolicyRef } } }, async (req) => {
    const body = req.body;
    const keys = new Set((body.tags ?? []).map((t) => t.key));
    if (keys.size !== (body.tags ?? []).length) throw new ApiError(400, 'Invalid input received: tag keys must be unique.', 'AutoBackup.0214');
    const input = toInput(body);
    const p = await s.policies.createPolicy(pid(req), { ...input, name: body.backup_policy_name, startTime: body.scheduled_policy.start_time, status: body.scheduled_policy.status }, body.tags ?? []);
    return { backup_policy_id: p.id };
  });
  app.get('/v2/:projectId/backuppolicy', { config: cfg, schema: { params: ProjectParams, tags, summary: 'List backup policies (P2)', response: { 200: Type.Object({ backup_policies: Type.Array(PolicyJson) }) } } }, async (req) => ({ backup_policies: (await s.policies.listPolicies(pid(req))).map(policyJson) }));

  // Literal segments before /:policyId.
  app.get('/v2/:projectId/backuppolicy/tags', { config: cfg, schema: { params: ProjectParams, tags, summary: 'All tags of the project\'s policies (T3)', response: { 200: Type.Object({ tags: Type.Array(Type.Object({ key: Type.String(), values: Type.Array(Type.String()) })) }) } } }, async (req) => ({ tags: await s.policies.projectTags(pid(req)) }));
  app.post('/v2/:projectId/backuppolicy/resource_instances/action', {
    config: { ...cfg, validation: { fallback: 'AutoBackup.0214', paths: { '/action': { '*': ['AutoBackup.0222', 'must be filter or count'] } } } },
    schema: { params: ProjectParams, body: FilterBody, tags, summary: 'Filter or count policies by tag (T6)', response: { 200: Type.Object({ total_count: Type.Integer(), resources: Type.Optional(Type.Array(Type.Object({ resource_id: Type.String(), resource_name: Type.String(), resource_detail: Type.Null(), tags: Type.Array(Type.Object({ key: Type.String(), value: Type.String() })) }))) }, { description: 'action count: total_count alone' }) } },
  }, async (req) => {
    const b = req.body;
    const limit = b.limit === undefined ? 1000 : Number(b.limit);
    const offset = b.offset === undefined ? 0 : Number(b.offset);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ApiError(400, 'Invalid input received: limit must be an integer from 1 to 1000.', 'AutoBackup.0214');
    if (!Number.isInteger(offset) || offset < 0) throw new ApiError(400, 'Invalid input received: offset must be a non-negative integer.', 'AutoBackup.0214');
    for (const list of [b.tags, b.not_tags, b.not_tags_any, b.tags_any]) {
      if (list && new Set(list.map((t) => t.key)).size !== list.length) throw new ApiError(400, 'Invalid input received: tag keys must be unique.', 'AutoBackup.0214');
    }
    const query = { tags: b.tags, tagsAny: b.tags_any, notTags: b.not_tags, notTagsAny: b.not_tags_any, nameContains: b.matches?.map((x) => x.value) };
    const all = (await s.policies.policiesWithTags(pid(req))).filter(({ policy, tags: t }) => matchesTagQuery({ name: policy.name, tags: t }, query));
    if (b.action === 'count') return { total_count: all.length };
    return {
      total_count: all.length,
      resources: all.slice(offset, offset + limit).map(({ policy, tags: t }) => ({ resource_id: policy.id, resource_name: policy.name, resource_detail: null, tags: t })),
    };
  });

  app.put('/v2/:projectId/backuppolicy/:policyId', { config: cfg, preValidation: refuseAngleBrackets, schema: { params: PolicyParams, body: UpdateBody, tags, summary: 'Modify a policy, also enable/disable (P3, P8)', response: { 200: PolicyRef } } }, async (req) => {
    const p = await s.policies.updatePolicy(pid(req), policyId(req), toInput(req.body));
    return { backup_policy_id: p.id };
  });
  app.delete('/v2/:projectId/backuppolicy/:policyId', { config: cfg, schema: { params: PolicyParams, tags, summary: 'Delete a policy (P4); its backups are kept', response: { 204: NoContent } } }, async (req, reply) => {
    await s.policies.deletePolicy(pid(req), policyId(req));
    return reply.code(204).send();
  });
  app.post('/v2/:projectId/backuppolicy/:policyId/action', { config: cfg, schema: { params: PolicyParams, tags, summary: 'Execute a policy now (P7)', response: { 204: NoContent } } }, async (req, reply) => {
    await s.policies.execute(pid(req), policyId(req));
    return reply.code(204).send();
  });
  const TaskQuery = Type.Object({
    sort_dir: Type.Optional(Type.Union([Type.Literal('asc'), Type.Literal('desc')])),
    sort_key: Type.Optional(Type.Literal('created_at')),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    offset: Type.Optional(Type.Integer({ minimum: 0 })),
    marker: Type.Optional(Type.String()),
    job_id: Type.Optional(Type.String()),
    status: Type.Optional(Type.Union([Type.Literal('RUNNING'), Type.Literal('EXECUTE_TIMEOUT'), Type.Literal('WAITING'), Type.Literal('EXECUTE_FAIL'), Type.Literal('EXECUTE_SUCCESS'), Type.Literal('SKIP')])),
  });
  app.get('/v2/:projectId/backuppolicy/:policyId/backuptasks', { config: { ...cfg, validation: { fallback: 'AutoBackup.0008' } }, schema: { params: PolicyParams, querystring: TaskQuery, tags, summary: 'Backup tasks a policy ran (P9)', response: { 200: Type.Object({ tasks: Type.Array(TaskJson), count: Type.Integer() }) } } }, async (req) => {
    const q = req.query;
    const r = await s.policies.listTasks(pid(req), policyId(req), { status: q.status, jobId: q.job_id, sortDir: q.sort_dir ?? 'desc', limit: q.limit ?? 20, offset: q.offset ?? 0, marker: q.marker });
    return { tasks: r.tasks.map(taskJson), count: r.count };
  });

  app.post('/v2/:projectId/backuppolicy/:policyId/tags', {
    config: { ...cfg, validation: { ...TAG_VALIDATION, paths: { ...TAG_VALIDATION.paths, '/tag/key': { '*': 'AutoBackup.0214' }, '/tag/value': { '*': 'AutoBackup.0214' } } } },
    preValidation: refuseAngleBrackets,
    schema: { params: PolicyParams, body: Type.Object({ tag: PolicyTag }), tags, summary: 'Add a tag to a policy (T1)', response: { 204: NoContent } },
  }, async (req, reply) => {
    await s.policies.setTags(pid(req), policyId(req), [req.body.tag]);
    return reply.code(204).send();
  });
  app.get('/v2/:projectId/backuppolicy/:policyId/tags', { config: cfg, schema: { params: PolicyParams, tags, summary: 'Tags of a policy (T4)', response: { 200: TagList } } }, async (req) => ({ tags: await s.policies.tags(pid(req), policyId(req)) }));
  app.delete('/v2/:projectId/backuppolicy/:policyId/tags/:key', { config: cfg, schema: { params: PolicyTagParams, tags, summary: 'Remove a tag (T2)', response: { 204: NoContent } } }, async (req, reply) => {
    await s.policies.deleteTags(pid(req), policyId(req), [req.params.key], true);
    return reply.code(204).send();
  });
  app.post('/v2/:projectId/backuppolicy/:policyId/tags/action', { config: { ...cfg, validation: TAG_VALIDATION }, preValidation: refuseAngleBrackets, schema: { params: PolicyParams, body: BatchTags, tags, summary: 'Create, update or delete tags in a batch (T5)', response: { 204: NoContent } } }, async (req, reply) => {
    const b = req.body;
    const list = b.tags ?? [];
    if (b.action === 'delete') {
      await s.policies.deleteTags(pid(req), policyId(req), list.map((t) => t.key), false);
    } else {
      for (const t of list) {
        if (t.key.length > 36 || !new RegExp(TAG_KEY_CHARS).test(t.key)) throw new ApiError(400, `Invalid input received: tag key ${t.key} must be 1-36 letters, digits, "_", "-" or ".".`, 'AutoBackup.0214');
        if (t.value === undefined || t.value.length > 43 || !new RegExp(TAG_VALUE_CHARS).test(t.value)) throw new ApiError(400, `Invalid input received: tag ${t.key} needs a value of 0-43 letters, digits, "_", "-" or ".".`, 'AutoBackup.0214');
      }
      await s.policies.setTags(pid(req), policyId(req), list.map((t) => ({ key: t.key, value: t.value! })));
    }
    return reply.code(204).send();
  });

  // Association (P5, P6).
  const Associate = Type.Object({ backup_policy_id: Type.String({ minLength: 1 }), resources: Type.Array(Type.Object({ resource_id: Type.String({ minLength: 1 }), resource_type: Type.String() }), { minItems: 1 }) });
  const ASSOC_VALIDATION: ValidationCodes = { fallback: 'AutoBackup.0008', paths: { '/backup_policy_id': { '*': 'AutoBackup.0006' }, '/resources': { '*': 'AutoBackup.0207' }, '/resources/*/resource_id': { '*': 'AutoBackup.0209' }, '/resources/*/resource_type': { '*': 'AutoBackup.0211' } } };
  app.post('/v2/:projectId/backuppolicyresources', { config: { ...cfg, validation: ASSOC_VALIDATION }, schema: { params: ProjectParams, body: Associate, tags, summary: 'Associate volumes with a policy (P5)', response: { 200: AssocResult } } }, async (req) => {
    const b = req.body;
    const r = await s.policies.associate(pid(req), b.backup_policy_id, b.resources.map((x) => ({ resourceId: x.resource_id, resourceType: x.resource_type })));
    const item = (x: (typeof r.success)[number]) => ({
      resource_id: x.resourceId, resource_type: x.resourceType, availability_zone: x.availabilityZone, os_vol_host_attr: `haven.${x.availabilityZone ?? s.config.availabilityZone}`,
      ...(x.failure ? { code: x.failure.code, message: x.failure.message } : {}),
    });
    return { success_resources: r.success.map(item), fail_resources: r.fail.map(item) };
  });
  const Disassociate = Type.Object({ resources: Type.Array(Type.Object({ resource_id: Type.String({ minLength: 1 }) }), { minItems: 1 }) });
  app.post('/v2/:projectId/backuppolicyresources/:policyId/deleted_resources', { config: { ...cfg, validation: ASSOC_VALIDATION }, schema: { params: PolicyParams, body: Disassociate, tags, summary: 'Disassociate volumes from a policy (P6)', response: { 200: AssocResult } } }, async (req) => {
    const b = req.body;
    const r = await s.policies.disassociate(pid(req), policyId(req), b.resources.map((x) => x.resource_id));
    return { success_resources: r.success.map((id) => ({ resource_id: id })), fail_resources: r.fail.map((f) => ({ resource_id: f.resourceId, code: f.code, message: f.message })) };
  });
}
