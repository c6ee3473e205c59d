/** Backup sharing, os-vendor-backup-sharing (vbs.md §9): S1-S5. */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { ErrorCode } from '../../domain/errors.ts';
import type { Backup } from '../../domain/model.ts';
import type { Sharing } from '../../domain/policy.ts';
import type { RouteErrorCodes, ValidationCodes } from '../errors.ts';
import type { ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { serviceMetadata } from '../wire/cinder-wire.ts';
import { microsNoZone } from '../wire/time.ts';
import { NullableString as NullStr } from '../wire/schemas.ts';

const SHARE_ERRORS: RouteErrorCodes = {
  [ErrorCode.BackupNotFound]: ['VolumeBackup.0110', 404],
  [ErrorCode.BackupInvalidState]: ['VolumeBackup.0089', 400],
  [ErrorCode.ProjectNotFound]: ['VolumeBackup.0002', 400],
  [ErrorCode.InvalidArgument]: ['VolumeBackup.0002', 400],
  [ErrorCode.SharingNotFound]: ['VolumeBackup.0110', 404],
};
const SHARE_VALIDATION: ValidationCodes = { fallback: 'VolumeBackup.0002' };

function sharingJson(s: Sharing) {
  return {
    id: s.id, backup_id: s.backupId, from_project_id: s.fromProjectId, to_project_id: s.toProjectId,
    created_at: microsNoZone(s.createdAt), updated_at: microsNoZone(s.updatedAt), deleted_at: null, deleted: null,
  };
}

function sharedBackupJson(b: Backup) {
  return {
    availability_zone: b.availabilityZone, container: b.id, created_at: microsNoZone(b.createdAt), data_timestamp: microsNoZone(b.dataTimestamp),
    description: b.description, fail_reason: b.failReason, has_dependent_backups: false, id: b.id, is_incremental: !b.fullBackup, name: b.name,
    object_count: b.objectCount, size: b.sizeGb, snapshot_id: b.snapshotId, status: b.status, updated_at: microsNoZone(b.updatedAt), volume_id: b.volumeId,
    service_metadata: serviceMetadata(b),
  };
}

const ListQuery = Type.Object({
  share_to_me: Type.Optional(Type.Boolean()),
  volume_id: Type.Optional(Type.String()),
  name: Type.Optional(Type.String()),
  status: Type.Optional(Type.String()),
  backup_id: Type.Optional(Type.String()),
  from_project_id: Type.Optional(Type.String()),
  to_project_id: Type.Optional(Type.String()),
  availability_zone: Type.Optional(Type.String()),
  avalilability_zone: Type.Optional(Type.String()),
  sort_dir: Type.Optional(Type.Union([Type.Literal('asc'), Type.Literal('desc')])),
  sort_key: Type.Optional(Type.Union([Type.Literal('name'), Type.Literal('status'), Type.Literal('container_format'), Type.Literal('disk_format'), Type.Literal('size'), Type.Literal('id'), Type.Literal('created_at'), Type.Literal('updated_at')])),
  limit: Type.Optional(Type.Integer({ minimum: 0 })),
  offset: Type.Optional(Type.Integer({ minimum: 0 })),
});
type ListQuery = Static<typeof ListQuery>;
const SharingParams = Type.Object({ projectId: PathParam, id: PathParam });
// What the sharing operations answer (OpenAPI; the tests check real answers against these).
const SharingJson = Type.Object({
  id: Type.String(), backup_id: Type.String(), from_project_id: Type.String(), to_project_id: Type.String(),
  created_at: NullStr, updated_at: NullStr, deleted_at: Type.Null(), deleted: Type.Null(),
});
const SharedBackupJson = Type.Object({
  availability_zone: Type.String(), container: Type.String(), created_at: NullStr, data_timestamp: NullStr, description: NullStr, fail_reason: NullStr,
  has_dependent_backups: Type.Boolean(), id: Type.String(), is_incremental: Type.Boolean(), name: NullStr, object_count: Type.Integer(), size: Type.Integer(),
  snapshot_id: NullStr, status: Type.String(), updated_at: NullStr, volume_id: Type.String(), service_metadata: Type.String({ description: 'JSON in a string' }),
});
const SharingWithBackup = Type.Intersect([SharingJson, Type.Object({ backup: Type.Union([SharedBackupJson, Type.Null()]) })]);

export function registerSharingRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const pid = (req: { params: { projectId: string } }) => req.params.projectId;
  const cfg = { envelope: 'vbs' as const, auth: 'project' as const, errorCodes: SHARE_ERRORS, validation: SHARE_VALIDATION };
  const tags = ['backup sharing'];
  const Share = Type.Object({ shared: Type.Object({ backup_id: Type.String({ minLength: 1 }), to_project_ids: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 1, maxItems: 100 }) }) });

  app.post('/v2/:projectId/os-vendor-backup-sharing', { config: cfg, schema: { params: ProjectParams, body: Share, tags, summary: 'Share a backup with other projects (S1)', response: { 200: Type.Object({ shared: Type.Array(SharingJson) }) } } }, async (req) => {
    const b = req.body.shared;
    const list = await s.sharing.share(pid(req), b.backup_id, b.to_project_ids);
    return { shared: list.map(sharingJson) };
  });

  const list = async (projectId: string, q: ListQuery) => {
    let rows = await s.sharing.list(projectId, {
      shareToMe: q.share_to_me === true, backupId: q.backup_id, fromProjectId: q.from_project_id, toProjectId: q.to_project_id, volumeId: q.volume_id, name: q.name, status: q.status,
      availabilityZone: q.availability_zone ?? q.avalilability_zone,
    });
    const key = q.sort_key ?? 'created_at';
    const val = (r: (typeof rows)[number]): string | number => {
      const b = r.backup;
      switch (key) {
        case 'name': return b?.name ?? '';
        case 'status': return b?.status ?? '';
        case 'size': return b?.sizeGb ?? 0;
        case 'id': return r.sharing.id;
        case 'updated_at': return r.sharing.updatedAt;
        default: return r.sharing.createdAt;
      }
    };
    const dir = q.sort_dir === 'asc' ? 1 : -1;
    rows = rows.sort((a, b) => (val(a) < val(b) ? -dir : val(a) > val(b) ? dir : 0));
    const offset = q.offset ?? 0;
    return q.limit === undefined ? rows.slice(offset) : rows.slice(offset, offset + q.limit);
  };
  app.get('/v2/:projectId/os-vendor-backup-sharing/detail', { config: cfg, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List sharings, by this project or to it (S3)', response: { 200: Type.Object({ shared: Type.Array(SharingWithBackup) }) } } }, async (req) => ({
    shared: (await list(pid(req), req.query)).map((r) => ({ ...sharingJson(r.sharing), backup: r.backup ? sharedBackupJson(r.backup) : null })),
  }));
  app.get('/v2/:projectId/os-vendor-backup-sharing/count', { config: cfg, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'Count sharings (S4)', response: { 200: Type.Object({ count: Type.Integer() }) } } }, async (req) => {
    const { limit: _l, offset: _o, ...filters } = req.query;
    return { count: (await list(pid(req), filters)).length };
  });
  app.get('/v2/:projectId/os-vendor-backup-sharing/:id', { config: cfg, schema: { params: SharingParams, tags, summary: 'Show a sharing (S5)', response: { 200: Type.Object({ shared: SharingWithBackup }) } } }, async (req) => {
    const r = await s.sharing.get(pid(req), req.params.id);
    return { shared: { ...sharingJson(r.sharing), backup: r.backup ? sharedBackupJson(r.backup) : null } };
  });
  app.delete('/v2/:projectId/os-vendor-backup-sharing/:id', {
    config: cfg,
    schema: { params: SharingParams, querystring: Type.Object({ is_backup_id: Type.Optional(Type.Boolean()) }), tags, summary: 'Cancel a sharing, or all sharings of a backup with is_backup_id=true (S2)', response: { 200: Type.Unknown({ description: 'done: no body' }) } },
  }, async (req, reply) => {
    await s.sharing.cancel(pid(req), req.params.id, req.query.is_backup_id === true);
    return reply.code(200).send();
  });
}
