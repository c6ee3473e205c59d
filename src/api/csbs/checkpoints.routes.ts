/**
 * CSBS server backups (csbs.md §5-6): back up one server (B2), backups = checkpoint items (B3-B5),
 * delete (B6), restore (S1), and the Karbor-native provider list/show. Every success is 200
 * (gophertelekomcloud and Terraform insist); errors are {"error_code": "CSBS.xxxx", "error_msg"}.
 */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { ITEM_SORT_KEYS, type ItemFilter } from '../../catalog/checkpoint-queries.ts';
import { CSBS_PROVIDER_ID, type Checkpoint, type CheckpointItem } from '../../domain/checkpoint.ts';
import { AppError, ErrorCode } from '../../domain/errors.ts';
import type { Backup } from '../../domain/model.ts';
import { ApiError, type RouteErrorCodes, type ValidationCodes } from '../errors.ts';
import { baseUrl, type ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { microsNoZone } from '../wire/time.ts';
import { nextLink, parseSortParam } from '../wire/paging.ts';
import { NullableString as NullStr } from '../wire/schemas.ts';

const ERRORS: RouteErrorCodes = {
  [ErrorCode.ServerNotFound]: ['CSBS.6000', 400],
  [ErrorCode.ServerHasNoVolume]: ['CSBS.6007', 400],
  [ErrorCode.ServerBusy]: ['CSBS.6005', 400],
  [ErrorCode.QuotaBackupsExceeded]: ['CSBS.9006', 400],
  [ErrorCode.QuotaGigabytesExceeded]: ['CSBS.9006', 400],
  [ErrorCode.CheckpointItemNotFound]: ['CSBS.3001', 404],
  [ErrorCode.CheckpointItemBusy]: ['CSBS.2003', 400],
  [ErrorCode.CheckpointItemUnavailable]: ['CSBS.4000', 400],
};
const VALIDATION: ValidationCodes = { fallback: 'CSBS.9001' };
const CFG = { envelope: 'csbs' as const, auth: 'project' as const, errorCodes: ERRORS, validation: VALIDATION };

const ProviderParams = Type.Object({ projectId: PathParam, providerId: PathParam });
const ResourceParams = Type.Object({ projectId: PathParam, providerId: PathParam, resourceId: PathParam });
const CheckpointParams = Type.Object({ projectId: PathParam, providerId: PathParam, checkpointId: PathParam });
const ItemParams = Type.Object({ projectId: PathParam, itemId: PathParam });

function checkProvider(req: { params: { providerId: string } }): void {
  const p = req.params.providerId;
  if (p !== CSBS_PROVIDER_ID) throw new ApiError(400, `provider invalid: ${p} (CSBS has the one provider ${CSBS_PROVIDER_ID})`, 'CSBS.9001');
}

function checkpointJson(c: Checkpoint, resources: { id: string; name: string }[]) {
  return {
    id: c.id,
    status: c.status,
    created_at: microsNoZone(c.createdAt),
    project_id: c.projectId,
    resource_graph: null,
    protection_plan: { id: c.planId, name: c.planName, resources: resources.map((r) => ({ id: r.id, type: 'OS::Nova::Server', name: r.name, extra_info: '{}' })) },
    extra_info: c.createdBy === 'manual' && !c.planId.startsWith('fake_') ? JSON.stringify({ created_by: 'manual' }) : c.createdBy === 'operation-engine' ? JSON.stringify({ created_by: 'operation-engine' }) : null,
  };
}

// What the backup (checkpoint) operations answer (OpenAPI; the tests check real answers against these).
const Str = Type.String();
export const CheckpointJson = Type.Object({
  id: Str, status: Str, created_at: NullStr, project_id: Str, resource_graph: Type.Null(),
  protection_plan: Type.Object({ id: Str, name: Str, resources: Type.Array(Type.Object({ id: Str, type: Str, name: Str, extra_info: Str })) }),
  extra_info: NullStr,
});
const ItemJson = Type.Object({
  id: Str, checkpoint_id: Str, name: Str, description: Str, status: Type.String({ description: 'protecting, available, restoring, deleting, error, …' }),
  resource_id: Str, resource_type: Str, created_at: NullStr, updated_at: NullStr, tags: Type.Array(Type.Object({ key: Str, value: Str })),
  backup_data: Type.Record(Str, Type.Unknown()),
  extend_info: Type.Record(Str, Type.Unknown(), { description: 'progress, size, fail_reason, volume_backups (one per disk: id, source_volume_id, …), …' }),
});
const Links = Type.Array(Type.Object({ href: Str, rel: Str }));
const CheckResult = Type.Object({ resource_id: Str, resource_type: Str, result: Type.Boolean(), error_code: Type.Optional(Str), error_msg: Type.Optional(Str) });

const MB = 1024 * 1024;
function itemJson(i: CheckpointItem, volumeBackups: Backup[], volumeNames: Map<string, { name: string | null; bootable: boolean; sizeGb: number }>, progress: number) {
  const size = Math.round(volumeBackups.reduce((n, b) => n + b.storedBytes, 0) / MB);
  return {
    id: i.id,
    checkpoint_id: i.checkpointId,
    name: i.name,
    description: i.description,
    status: i.status,
    resource_id: i.serverId,
    resource_type: 'OS::Nova::Server',
    created_at: microsNoZone(i.createdAt),
    updated_at: microsNoZone(i.updatedAt),
    tags: i.tags,
    backup_data: { __openstack_region_name: '', cloudservicetype: 'QEMU', disk: 0, imagetype: 'private', ram: 0, vcpus: 0, eip: '', private_ip: '' },
    extend_info: {
      auto_trigger: i.autoTrigger,
      average_speed: 0,
      copy_from: null,
      copy_status: 'na',
      fail_code: i.failReason ? { Code: 9999, Description: i.failReason } : {},
      fail_op: i.failOp,
      fail_reason: i.failReason,
      image_type: 'backup',
      incremental: volumeBackups.some((b) => !b.fullBackup),
      progress,
      resource_az: i.availabilityZone,
      resource_name: i.serverName,
      resource_type: 'OS::Nova::Server',
      size,
      space_saving_ratio: 0,
      volume_backups: volumeBackups.map((b) => {
        const v = volumeNames.get(b.volumeId);
        return {
          id: b.id, name: b.name, status: b.status, bootable: v?.bootable ?? false, incremental: !b.fullBackup, image_type: 'backup',
          size: Math.round(b.storedBytes / MB), average_speed: 0, space_saving_ratio: b.sizeBytes ? Math.max(0, Math.round((1 - b.storedBytes / b.sizeBytes) * 100)) : 0,
          source_volume_id: b.volumeId, source_volume_name: v?.name ?? '', source_volume_size: b.sizeGb, snapshot_id: b.snapshotId ?? '',
        };
      }),
      finished_at: microsNoZone(i.finishedAt),
      supported_restore_mode: 'backup',
      os_images_data: [],
      support_lld: false,
      hypervisor_type: 'QEMU',
    },
  };
}

const ProtectBody = Type.Object({
  protect: Type.Object({
    backup_name: Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: '^[A-Za-z0-9_-]+$' })),
    description: Type.Optional(Type.String({ maxLength: 255, pattern: '^[^<>]*$' })),
    incremental: Type.Optional(Type.Boolean()),
    resource_type: Type.Optional(Type.String()),
    tags: Type.Optional(Type.Array(Type.Object({ key: Type.String({ minLength: 1, maxLength: 36 }), value: Type.String({ maxLength: 43 }) }), { minItems: 1, maxItems: 10 })),
    extra_info: Type.Optional(Type.Unknown()),
  }),
});
const ListQuery = Type.Object({
  status: Type.Optional(Type.String()),
  limit: Type.Optional(Type.Integer({ minimum: 1 })),
  marker: Type.Optional(Type.String()),
  offset: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  sort: Type.Optional(Type.String({ maxLength: 255 })),
  all_tenants: Type.Optional(Type.String()),
  name: Type.Optional(Type.String()),
  az: Type.Optional(Type.String()),
  resource_id: Type.Optional(Type.String()),
  resource_name: Type.Optional(Type.String()),
  start_time: Type.Optional(Type.String()),
  end_time: Type.Optional(Type.String()),
  image_type: Type.Optional(Type.String()),
  policy_id: Type.Optional(Type.String()),
  checkpoint_id: Type.Optional(Type.String()),
  resource_type: Type.Optional(Type.String()),
  ip: Type.Optional(Type.String()),
});
type ListQuery = Static<typeof ListQuery>;

function parseTime(s: string | undefined, what: string): number | undefined {
  if (s === undefined) return undefined;
  const ms = Date.parse(/[zZ]|[+-]\d\d:\d\d$/.test(s) ? s : `${s}Z`);
  if (Number.isNaN(ms)) throw new ApiError(400, `${what} ${s} is not a time like 2017-04-18T01:21:52.701973`, 'CSBS.9001');
  return ms;
}

const RestoreBody = Type.Object({
  restore: Type.Object({
    provider_id: Type.String(),
    checkpoint_id: Type.String({ minLength: 1 }),
    restore_target: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    parameters: Type.Object({
      checkpoint_item_id: Type.String({ minLength: 1 }),
      power_on: Type.Boolean(),
      targets: Type.Object({
        server_id: Type.String({ minLength: 1 }),
        volumes: Type.Array(Type.Object({ backup_id: Type.String({ minLength: 1 }), volume_id: Type.String({ minLength: 1 }) }), { minItems: 1 }),
      }),
    }),
  }),
});

export function registerCheckpointRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const pid = (req: { params: { projectId: string } }) => req.params.projectId;
  const tags = ['csbs backups'];

  const itemView = async (i: CheckpointItem) => {
    const vbs = await s.serverBackups.volumeBackupsOf(i.id);
    const names = new Map<string, { name: string | null; bootable: boolean; sizeGb: number }>();
    for (const b of vbs) {
      const v = await s.volumes.getVolume(i.projectId, b.volumeId).catch(() => null);
      names.set(b.volumeId, { name: v?.name ?? null, bootable: v?.bootable ?? false, sizeGb: b.sizeGb });
    }
    const progress = i.status === 'available' ? 100 : 0;
    return itemJson(i, vbs, names, progress);
  };

  app.post('/v1/:projectId/providers/:providerId/resources/:resourceId/action', { config: CFG, schema: { params: ResourceParams, body: ProtectBody, tags, summary: 'Back up one server (B2): all its volumes at one moment', response: { 200: Type.Object({ checkpoint: CheckpointJson }) } } }, async (req) => {
    checkProvider(req);
    const b = req.body.protect;
    if (b.resource_type !== undefined && b.resource_type !== 'OS::Nova::Server') throw new ApiError(400, `Resource (${req.params.resourceId}) type (${b.resource_type}) is not support protection.`, 'CSBS.6003');
    if (b.tags && new Set(b.tags.map((t) => t.key)).size !== b.tags.length) throw new ApiError(400, 'Tag keys must be unique.', 'CSBS.9001');
    const serverId = req.params.resourceId;
    const { checkpoint } = await s.serverBackups.protect(pid(req), serverId, { name: b.backup_name, description: b.description, incremental: b.incremental, tags: b.tags });
    const server = await s.servers.getServer(pid(req), serverId);
    return { checkpoint: checkpointJson(checkpoint, [{ id: server.id, name: server.name }]) };
  });

  const filterOf = (q: ListQuery): ItemFilter => ({
    checkpointId: q.checkpoint_id, serverId: q.resource_id, status: q.status, nameLike: q.name, serverNameLike: q.resource_name, policyId: q.policy_id, az: q.az,
    createdFrom: parseTime(q.start_time, 'start_time'), createdTo: parseTime(q.end_time, 'end_time'),
  });
  app.get('/v1/:projectId/checkpoint_items/count', { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'Count backups (B5)', response: { 200: Type.Object({ count: Type.Integer() }) } } }, async (req) => ({ count: await s.serverBackups.countItems(pid(req), filterOf(req.query)) }));
  app.get('/v1/:projectId/checkpoint_items', { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List backups (B4)', response: { 200: Type.Object({ checkpoint_items: Type.Array(ItemJson), checkpoint_items_links: Type.Optional(Links) }) } } }, async (req) => {
    const q = req.query;
    let sortKey: keyof typeof ITEM_SORT_KEYS = 'created_at';
    let sortDir: 'asc' | 'desc' = 'desc';
    if (q.sort) {
      const parsed = parseSortParam(q.sort, Object.keys(ITEM_SORT_KEYS) as (keyof typeof ITEM_SORT_KEYS)[]);
      if ('error' in parsed) throw new ApiError(400, parsed.error, 'CSBS.9001');
      ({ key: sortKey, dir: sortDir } = parsed);
    }
    const limit = Math.min(q.limit ?? 1000, 1000);
    const filter = filterOf(q);
    const rows = await s.serverBackups.listItems(pid(req), filter, { sortKey, sortDir, limit: limit + 1, offset: q.offset ?? 0, marker: q.marker });
    const page = rows.slice(0, limit);
    const items = await Promise.all(page.map(itemView));
    return rows.length > limit && page.length
      ? { checkpoint_items: items, checkpoint_items_links: nextLink(`${baseUrl(s.config, req)}/v1/${pid(req)}/checkpoint_items`, q, limit, page.at(-1)!.id) }
      : { checkpoint_items: items };
  });
  app.get('/v1/:projectId/checkpoint_items/:itemId', { config: CFG, schema: { params: ItemParams, tags, summary: 'Show a backup (B3)', response: { 200: Type.Object({ checkpoint_item: ItemJson }) } } }, async (req) => ({ checkpoint_item: await itemView(await s.serverBackups.getItemOrCheckpointItem(pid(req), req.params.itemId)) }));

  app.delete('/v1/:projectId/providers/:providerId/checkpoints/:checkpointId', {
    config: CFG,
    schema: { params: CheckpointParams, querystring: Type.Object({ checkpoint_items: Type.Optional(Type.String()) }), tags, summary: 'Delete a backup record, or some of its backups (B6)', response: { 200: Type.Object({}, { description: 'an empty object' }) } },
  }, async (req) => {
    checkProvider(req);
    const items = req.query.checkpoint_items?.split(',').map((x) => x.trim()).filter(Boolean);
    await s.serverBackups.deleteCheckpoint(pid(req), req.params.checkpointId, items);
    return {};
  });

  app.post('/v1/:projectId/restores', { config: CFG, schema: { params: ProjectParams, body: RestoreBody, tags: ['csbs restore'], summary: 'Restore a server from a backup (S1)', response: { 200: Type.Object({ restore: Type.Object({ id: Str, status: Str, provider_id: Str, checkpoint_id: Str, project_id: Str, restore_target: NullStr, resources_status: Type.Record(Str, Str), resources_reason: Type.Object({}), parameters: Type.Unknown({ description: 'the request\'s parameters' }) }) }) } } }, async (req) => {
    const r = req.body.restore;
    if (r.provider_id !== CSBS_PROVIDER_ID) throw new ApiError(400, `provider invalid: ${r.provider_id}`, 'CSBS.9001');
    const t = r.parameters.targets;
    const { restoreId } = await s.serverBackups.restore(pid(req), { checkpointId: r.checkpoint_id, itemId: r.parameters.checkpoint_item_id, serverId: t.server_id, mapping: t.volumes.map((v) => ({ backupId: v.backup_id, volumeId: v.volume_id })), powerOn: r.parameters.power_on });
    return {
      restore: {
        id: restoreId, status: 'in_progress', provider_id: CSBS_PROVIDER_ID, checkpoint_id: r.checkpoint_id, project_id: pid(req), restore_target: r.restore_target ?? null,
        resources_status: { [`OS::Nova::Server#${t.server_id}`]: 'in_progress' }, resources_reason: {}, parameters: r.parameters,
      },
    };
  });

  // R1 and R2 share one URL; the body's key says which (gophercloud reads protectable / restorable).
  const codeOf = (err: AppError): string => (typeof err.details?.csbs === 'string' ? err.details.csbs : (ERRORS[err.code]?.[0] ?? (err.code === ErrorCode.ServerInOtherPolicy ? 'CSBS.6004' : 'CSBS.9001')));
  const Check = Type.Object({
    check_protectable: Type.Optional(Type.Array(Type.Object({ resource_id: Type.String({ minLength: 1 }), resource_type: Type.String() }), { minItems: 1, maxItems: 256 })),
    check_restorable: Type.Optional(Type.Array(Type.Object({
      checkpoint_item_id: Type.String({ minLength: 1 }),
      target: Type.Object({ resource_id: Type.String({ minLength: 1 }), resource_type: Type.String(), volumes: Type.Array(Type.Object({ backup_id: Type.String({ minLength: 1 }), volume_id: Type.String({ minLength: 1 }) })) }),
    }), { minItems: 1, maxItems: 256 })),
  });
  app.post('/v1/:projectId/providers/:providerId/resources/action', { config: CFG, schema: { params: ProviderParams, body: Check, tags, summary: 'Can these servers be backed up (R1), can this backup be restored there (R2)?', response: { 200: Type.Object({ protectable: Type.Optional(Type.Array(CheckResult)), restorable: Type.Optional(Type.Array(CheckResult)) }) } } }, async (req) => {
    checkProvider(req);
    const b = req.body;
    if ((b.check_protectable === undefined) === (b.check_restorable === undefined)) throw new ApiError(400, 'give check_protectable or check_restorable', 'CSBS.9001');
    if (b.check_protectable) {
      const out = [];
      for (const r of b.check_protectable) {
        const err = r.resource_type !== 'OS::Nova::Server' ? new AppError(ErrorCode.InvalidArgument, `Resource (${r.resource_id}) type (${r.resource_type}) is not support protection.`, { details: { csbs: 'CSBS.6003' } }) : await s.serverBackups.checkProtectable(pid(req), r.resource_id);
        out.push(err ? { resource_id: r.resource_id, resource_type: r.resource_type, result: false, error_code: codeOf(err), error_msg: err.message } : { resource_id: r.resource_id, resource_type: r.resource_type, result: true });
      }
      return { protectable: out };
    }
    const out = [];
    for (const r of b.check_restorable!) {
      const err = r.target.resource_type !== 'OS::Nova::Server'
        ? new AppError(ErrorCode.InvalidArgument, `Resource (${r.target.resource_id}) type (${r.target.resource_type}) is not support restoration.`, { details: { csbs: 'CSBS.6013' } })
        : await s.serverBackups.checkRestorable(pid(req), { itemId: r.checkpoint_item_id, serverId: r.target.resource_id, mapping: r.target.volumes.map((v) => ({ backupId: v.backup_id, volumeId: v.volume_id })) });
      out.push({ resource_id: r.target.resource_id, resource_type: r.target.resource_type, result: !err, error_code: err ? codeOf(err) : '', error_msg: err ? err.message : '' });
    }
    return { restorable: out };
  });

  app.get('/v1/:projectId/quotas', { config: CFG, schema: { params: ProjectParams, tags, summary: 'Backup quotas and usage (Q1)', response: { 200: Type.Object({ quotas: Type.Object({ resources: Type.Array(Type.Object({ type: Str, unit: Type.Optional(Str), quota: Type.Integer(), used: Type.Number() })) }) }) } } }, async (req) => {
    const u = await s.serverBackups.usage(pid(req));
    return { quotas: { resources: [{ type: 'backup_capacity', unit: 'GB', quota: s.config.quotaBackupGigabytes, used: u.capacityGb }, { type: 'backups', quota: s.config.quotaBackups, used: u.backups }] } };
  });

  const provider = { id: CSBS_PROVIDER_ID, name: 'OS Infra Provider', description: 'This provider uses OpenStack\'s own services (Haven\'s engine) as storage', extended_info_schema: {}, saved_info_schema: {}, restore_schema: {} };
  app.get('/v1/:projectId/providers', { config: CFG, schema: { params: ProjectParams, tags, summary: 'List providers (Karbor)', response: { 200: Type.Object({ providers: Type.Array(Type.Object({ id: Str, name: Str, description: Str }, { description: 'and its (empty) schemas' })) }) } } }, async () => ({ providers: [provider] }));
  app.get('/v1/:projectId/providers/:providerId', { config: CFG, schema: { params: ProviderParams, tags, summary: 'Show the provider (Karbor)', response: { 200: Type.Object({ provider: Type.Object({ id: Str, name: Str, description: Str }) }) } } }, async (req) => {
    if (req.params.providerId !== CSBS_PROVIDER_ID) throw new ApiError(404, 'Provider not found.', 'CSBS.9001');
    return { provider };
  });
}
