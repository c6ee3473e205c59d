/**
 * Native (Cinder-compatible) backups, /v2 and /v3 (vbs.md §8): create, list, detail, show, delete,
 * restore. Create, delete and restore are accepted with 202 and run as jobs; clients poll the
 * backup's status. Deleting a backup still being created stops its job. The cloud admin's actions
 * (POST .../backups/{id}/action): os-force_delete (any status, any project; a running job is
 * stopped) and os-reset_status (available or error).
 */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { BACKUP_SORT_KEYS, type BackupFilter, type BackupSortKey } from '../../catalog/backup-queries.ts';
import type { Backup } from '../../domain/model.ts';
import { ApiError } from '../errors.ts';
import { baseUrl, type ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { backupJson, links, type ApiVersion } from '../wire/cinder-wire.ts';
import { nextLink } from '../wire/paging.ts';
import { Link, NoBody as Accepted, NullableString } from '../wire/schemas.ts';

const CFG = { envelope: 'cinder' as const, auth: 'project' as const };
/** Cinder's osapi_max_limit: a list returns at most this many items and a next link. */
export const MAX_LIMIT = 1000;
const NAME_RE = '^[A-Za-z0-9_-]+$';

const ListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 0 })),
  // Bounded: SQLite cannot bind a larger OFFSET as an integer (an unbounded value was a 500).
  offset: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
  marker: Type.Optional(Type.String()),
  name: Type.Optional(Type.String()),
  status: Type.Optional(Type.String()),
  volume_id: Type.Optional(Type.String()),
  'name~': Type.Optional(Type.String()),
  'status~': Type.Optional(Type.String()),
  'volume_id~': Type.Optional(Type.String()),
  policy_id: Type.Optional(Type.String({ description: "Haven's own filter: the backups a VBS policy made" })),
  sort_key: Type.Optional(Type.String()),
  sort_dir: Type.Optional(Type.String()),
  sort: Type.Optional(Type.String()),
  with_count: Type.Optional(Type.Boolean()),
  all_tenants: Type.Optional(Type.String()),
});
type ListQuery = Static<typeof ListQuery>;
const BackupParams = Type.Object({ projectId: PathParam, backupId: PathParam });

/** Response schema of the summary list: also lets fastify serialize it with a compiled stringifier. */
/** A backup as the native API shows it (cinder-wire.ts backupJson); v2 adds tenant and service_metadata, v3 the project. */
const BackupJson = Type.Object({
  id: Type.String(), name: NullableString, status: Type.String({ description: 'creating, available, deleting, error, restoring' }),
  description: NullableString, links: Type.Array(Link), availability_zone: Type.String(), volume_id: Type.String(), snapshot_id: NullableString,
  fail_reason: NullableString, size: Type.Integer({ description: 'GB' }), object_count: Type.Integer(), container: Type.String(),
  created_at: NullableString, updated_at: NullableString, data_timestamp: NullableString, has_dependent_backups: Type.Boolean(), is_incremental: Type.Boolean(),
});
const DetailList = Type.Object({ backups: Type.Array(BackupJson), backups_links: Type.Optional(Type.Array(Link)), count: Type.Optional(Type.Integer()) });

const SummaryList = Type.Object({
  backups: Type.Array(Type.Object({ id: Type.String(), links: Type.Array(Link), name: Type.Union([Type.String(), Type.Null()]) })),
  backups_links: Type.Optional(Type.Array(Link)),
  count: Type.Optional(Type.Integer()),
});

const CreateBody = Type.Object({
  backup: Type.Object({
    volume_id: Type.String({ minLength: 1 }),
    snapshot_id: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    name: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 64, pattern: NAME_RE }), Type.Null()])),
    description: Type.Optional(Type.Union([Type.String({ maxLength: 255, pattern: '^[^<>]*$' }), Type.Null()])),
    container: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    incremental: Type.Optional(Type.Boolean()),
    force: Type.Optional(Type.Boolean()),
    project_id: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  }),
});
const RestoreBody = Type.Object({
  restore: Type.Object({
    volume_id: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Null()])),
    name: Type.Optional(Type.Union([Type.String({ maxLength: 255 }), Type.Null()])),
  }),
});

const ActionBody = Type.Object({
  'os-force_delete': Type.Optional(Type.Union([Type.Object({}), Type.Null()])),
  'os-reset_status': Type.Optional(Type.Object({ status: Type.Union([Type.Literal('available'), Type.Literal('error')]) })),
});
const ACTIONS = ['os-force_delete', 'os-reset_status'];

function parseSort(q: ListQuery): { sortKey: BackupSortKey; sortDir: 'asc' | 'desc' } {
  let key = q.sort_key ?? 'created_at';
  let dir = q.sort_dir ?? 'desc';
  if (q.sort) {
    const [k, d] = q.sort.split(',')[0]!.split(':');
    key = k ?? key;
    dir = d ?? dir;
  }
  if (!(key in BACKUP_SORT_KEYS)) throw new ApiError(400, `Invalid input received: sort key ${key} is not one of ${Object.keys(BACKUP_SORT_KEYS).join(', ')}.`);
  if (dir !== 'asc' && dir !== 'desc') throw new ApiError(400, `Invalid input received: sort direction ${dir} must be asc or desc.`);
  return { sortKey: key as BackupSortKey, sortDir: dir };
}

/** What the handlers read of a request (typed routes' requests all have it). */
type Req = Parameters<typeof baseUrl>[1] & { params: { projectId: string } };

export function registerNativeBackupRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  for (const version of ['v2', 'v3'] as ApiVersion[]) {
    const base = (req: Req) => baseUrl(s.config, req);
    const pid = (req: Req) => req.params.projectId;
    const tags = ['native backups'];

    app.post(`/${version}/:projectId/backups`, {
      config: CFG,
      schema: { params: ProjectParams, body: CreateBody, tags, summary: 'Create a backup (Cinder API); 202, then poll its status', response: { 202: Type.Object({ backup: Type.Object({ id: Type.String(), links: Type.Array(Link), name: NullableString }) }) } },
    }, async (req, reply) => {
      const b = req.body.backup;
      if (b.name && /^auto/i.test(b.name)) throw new ApiError(400, 'Invalid input received: backup names must not start with "auto" (reserved for policy backups).');
      const volume = await s.volumes.getVolume(pid(req), b.volume_id);
      if (volume.status === 'in-use' && !b.force && !b.snapshot_id) throw new ApiError(400, `Invalid volume: volume ${volume.id} is in-use; pass force=true to back it up while attached.`);
      const { backup } = await s.backups.createBackup(pid(req), { volumeId: b.volume_id, snapshotId: b.snapshot_id, name: b.name, description: b.description, origin: 'native' });
      return reply.code(202).send({ backup: { id: backup.id, links: links(base(req), version, backup.projectId, 'backups', backup.id), name: backup.name } });
    });

    /** A page of backups, each shown by `item` (detail rows are whole Backups). */
    const list = async <T>(req: Req & { query: ListQuery }, detail: boolean, item: (row: { id: string; name: string | null }, b0: string) => T) => {
      const q = req.query;
      const filter: BackupFilter = { name: q.name, status: q.status, volumeId: q.volume_id, nameLike: q['name~'], statusLike: q['status~'], volumeIdLike: q['volume_id~'], policyId: q.policy_id };
      const limit = Math.min(q.limit ?? MAX_LIMIT, MAX_LIMIT);
      const sort = parseSort(q);
      const pageOpts = { ...sort, limit: limit + 1, offset: q.offset ?? 0, marker: q.marker };
      const projectId = pid(req);
      const rows: { id: string; name: string | null }[] = detail ? await s.backups.listBackups(projectId, filter, pageOpts) : await s.backups.listBackupSummaries(projectId, filter, pageOpts);
      const page = rows.slice(0, limit);
      const b0 = base(req);
      const body: { backups: T[]; backups_links?: { href: string; rel: string }[]; count?: number } = { backups: page.map((b) => item(b, b0)) };
      if (rows.length > limit && page.length) {
        // An absolute next link that keeps the filters (vbs.md §12 #27).
        body.backups_links = nextLink(`${b0}/${version}/${projectId}/backups${detail ? '/detail' : ''}`, q, limit, page.at(-1)!.id);
      }
      if (q.with_count) body.count = await s.backups.countBackups(pid(req), filter);
      return body;
    };
    app.get(`/${version}/:projectId/backups`, { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List backups (id, name, links)', response: { 200: SummaryList } } }, async (req) => list(req, false, (b, b0) => ({ id: b.id, links: links(b0, version, pid(req), 'backups', b.id), name: b.name })));
    app.get(`/${version}/:projectId/backups/detail`, { config: CFG, schema: { params: ProjectParams, querystring: ListQuery, tags, summary: 'List backups with details', response: { 200: DetailList } } }, async (req) => list(req, true, (b, b0) => backupJson(b0, version, b as Backup)));
    app.get(`/${version}/:projectId/backups/:backupId`, { config: CFG, schema: { params: BackupParams, tags, summary: 'Show a backup', response: { 200: Type.Object({ backup: BackupJson }) } } }, async (req) => {
      const b = await s.backups.getBackup(pid(req), req.params.backupId, { includeShared: true });
      return { backup: backupJson(base(req), version, b) };
    });
    app.delete(`/${version}/:projectId/backups/:backupId`, { config: CFG, schema: { params: BackupParams, tags, summary: 'Delete a backup (one still being created: its job is stopped); 202, then it disappears', response: { 202: Accepted } } }, async (req, reply) => {
      await s.backups.deleteBackup(pid(req), req.params.backupId);
      return reply.code(202).send();
    });
    app.post(`/${version}/:projectId/backups/:backupId/action`, { config: CFG, schema: { params: BackupParams, body: ActionBody, tags, summary: 'Cloud admin: os-force_delete (stops a running job) or os-reset_status; 202', response: { 202: Accepted } } }, async (req, reply) => {
      const body = req.body;
      const names = Object.keys(body ?? {});
      if (names.length !== 1 || !ACTIONS.includes(names[0]!)) throw new ApiError(400, `Invalid input received: the body must name exactly one action of ${ACTIONS.join(', ')}.`);
      const action = names[0]!;
      // Cross-project powers belong to the cloud admin (admin role on the admin project) alone.
      if (!req.auth!.isCloudAdmin) throw new ApiError(403, `Policy doesn't allow ${action === 'os-force_delete' ? 'backup:force_delete' : 'volume_extension:backup_admin_actions:reset_status'} to be performed.`);
      const backupId = req.params.backupId;
      if (body['os-reset_status']) await s.backups.resetBackupStatus(backupId, body['os-reset_status'].status);
      else await s.backups.forceDeleteBackup(backupId);
      return reply.code(202).send();
    });
    app.post(`/${version}/:projectId/backups/:backupId/restore`, { config: CFG, schema: { params: BackupParams, body: RestoreBody, tags, summary: 'Restore a backup onto a volume (or a new one)', response: { 202: Type.Object({ restore: Type.Object({ backup_id: Type.String(), volume_id: Type.String(), volume_name: Type.String() }) }) } } }, async (req, reply) => {
      const r = req.body.restore;
      const backupId = req.params.backupId;
      let volumeId = r.volume_id;
      if (!volumeId) {
        // Cinder semantics: without a volume, restore into a new one of the backup's size.
        const b = await s.backups.getBackup(pid(req), backupId, { includeShared: true });
        if (b.status !== 'available') throw new ApiError(400, `Invalid backup: backup ${b.id} is ${b.status}; only available backups can be restored.`);
        const v = await s.volumes.createVolume(pid(req), { sizeGb: b.sizeGb, name: r.name ?? `restore_backup_${b.id}` });
        volumeId = v.id;
      }
      const { volume } = await s.backups.restoreBackup(pid(req), backupId, volumeId);
      return reply.code(202).send({ restore: { backup_id: backupId, volume_id: volume.id, volume_name: volume.name ?? '' } });
    });
  }
}
