/**
 * VBS backups (vbs.md §5-7): create (B1), delete (B2, POST and DELETE), restore (B3), quotas (Q1)
 * and jobs (J1, under /v1 and, for otcextensions, /v2). Every validation rule of the reference maps
 * to its own error code (the `validation` tables below).
 */
import type { FastifyInstance } from 'fastify';
import { Type, type Static } from 'typebox';
import { ErrorCode } from '../../domain/errors.ts';
import { UUID_RE } from '../../domain/ids.ts';
import type { RouteErrorCodes, ValidationCodes } from '../errors.ts';
import type { ApiServices } from '../server.ts';
import { PathParam, ProjectParams, typed } from '../typed-routes.ts';
import { jobJson } from '../wire/vbs-wire.ts';
import { millisZ } from '../wire/time.ts';
import type { ExportInfo } from '../../services/export-service.ts';

const UUID = UUID_RE.source;
/** Tag keys and values: no ASCII control characters and none of = * < > \ , | / (vbs.md B1). */
const TAG_CHARS = '^[^\\u0000-\\u001f=*<>\\\\,|/]*$';
export const TagSchema = Type.Object({
  key: Type.String({ minLength: 1, maxLength: 36, pattern: TAG_CHARS }),
  value: Type.String({ maxLength: 43, pattern: TAG_CHARS }),
});

const CreateBody = Type.Object({
  backup: Type.Object({
    volume_id: Type.String({ minLength: 1, pattern: UUID }),
    snapshot_id: Type.Optional(Type.Union([Type.String({ pattern: UUID }), Type.Null()])),
    name: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$', not: { pattern: '^[Aa][Uu][Tt][Oo]' } }),
    description: Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 64, pattern: '^[^<>]*$' }), Type.Null()])),
    tags: Type.Optional(Type.Array(TagSchema, { maxItems: 10 })),
    extend_param: Type.Optional(Type.Union([Type.Object({ FullBackup: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Boolean()])) }), Type.Null()])),
  }),
});
const CREATE_VALIDATION: ValidationCodes = {
  fallback: 'VolumeBackup.0002',
  paths: {
    '/backup/volume_id': { required: 'VolumeBackup.0010', minLength: 'VolumeBackup.0010', '*': 'VolumeBackup.0011' },
    '/backup/name': { required: 'VolumeBackup.0007', minLength: 'VolumeBackup.0007', maxLength: 'VolumeBackup.0003', not: ['VolumeBackup.0005', 'must not start with "auto" (reserved for policy backups)'], pattern: ['VolumeBackup.0004', 'may contain only letters, digits, "_" and "-"'], '*': 'VolumeBackup.0004' },
    '/backup/description': { '*': 'VolumeBackup.0006' },
    '/backup/tags': { maxItems: 'VolumeBackup.0050', '*': 'VolumeBackup.0049' },
    '/backup/tags/*': { '*': 'VolumeBackup.0049' },
    '/backup/tags/*/key': { '*': 'VolumeBackup.0049' },
    '/backup/tags/*/value': { '*': 'VolumeBackup.0049' },
  },
};
const CREATE_ERRORS: RouteErrorCodes = {
  [ErrorCode.VolumeNotFound]: ['VolumeBackup.0021', 404],
  [ErrorCode.VolumeInvalidState]: ['VolumeBackup.0012', 400],
  [ErrorCode.BackupInProgress]: ['VolumeBackup.0013', 400],
  [ErrorCode.SnapshotNotFound]: ['VolumeBackup.0020', 404],
  [ErrorCode.SnapshotInvalidState]: ['VolumeBackup.0062', 400],
  [ErrorCode.QuotaBackupsExceeded]: ['VolumeBackup.0080', 400],
  [ErrorCode.QuotaGigabytesExceeded]: ['VolumeBackup.0081', 400],
};
const DELETE_ERRORS: RouteErrorCodes = {
  [ErrorCode.BackupNotFound]: ['VolumeBackup.0110', 404],
  [ErrorCode.BackupInvalidState]: ['VolumeBackup.0102', 400],
  [ErrorCode.BackupNotOwned]: ['VolumeBackup.0042', 403],
};
const RestoreBody = Type.Object({ restore: Type.Object({
  volume_id: Type.String({ minLength: 1, pattern: UUID }),
  live: Type.Optional(Type.Boolean({ description: 'Haven extension: the volume is usable at once, served over NBD (the answer\'s export) while the backup is copied into it; the copy never overwrites what the user writes' })),
}) });
const RESTORE_VALIDATION: ValidationCodes = { fallback: 'VolumeBackup.0210', paths: { '/restore/volume_id': { '*': 'VolumeBackup.0208' } } };
const RESTORE_ERRORS: RouteErrorCodes = {
  [ErrorCode.BackupNotFound]: ['VolumeBackup.0111', 404],
  [ErrorCode.VolumeNotFound]: ['VolumeBackup.0207', 404],
  [ErrorCode.VolumeTooSmall]: ['VolumeBackup.0209', 400],
  [ErrorCode.BackupInProgress]: ['VolumeBackup.0206', 400],
  [ErrorCode.BackupInvalidState]: ['VolumeBackup.0089', 400],
  [ErrorCode.VolumeInvalidState]: ['VolumeBackup.0205', 400],
  [ErrorCode.BackupNotOwned]: ['VolumeBackup.0042', 403],
};
const ExportBody = Type.Object({
  export: Type.Optional(Type.Object({
    expires_in: Type.Optional(Type.Integer({ minimum: 60, description: 'seconds until the export ends (default 3600; at most HAVEN_EXPORT_MAX_HOURS)' })),
    writable: Type.Optional(Type.Boolean({ description: 'accept writes, each connection into its own copy-on-write overlay, discarded when it ends; the backup never changes' })),
  }, { additionalProperties: false })),
}, { additionalProperties: false });
const EXPORT_VALIDATION: ValidationCodes = { fallback: 'VolumeBackup.0002' };
const EXPORT_ERRORS: RouteErrorCodes = {
  [ErrorCode.BackupNotFound]: ['VolumeBackup.0111', 404],
  [ErrorCode.BackupInvalidState]: ['VolumeBackup.0089', 400],
  [ErrorCode.ExportNotFound]: ['VolumeBackup.0111', 404],
};
const ExportJson = Type.Object({
  id: Type.String(),
  backup_id: Type.String(),
  uri: Type.String({ description: 'nbd://host:port/<export name> (nbds:// when the service has TLS: NBD_OPT_STARTTLS)' }),
  export_name: Type.String({ description: 'secret: whoever has it can read the backup until the export ends' }),
  writable: Type.Boolean(),
  tls: Type.Boolean(),
  created_at: Type.String(),
  expires_at: Type.String(),
  volume_id: Type.Union([Type.String(), Type.Null()], { description: 'a live restore\'s: the volume served' }),
  live: Type.Union([Type.Object({ settled_bytes: Type.Integer(), written_bytes: Type.Union([Type.Integer(), Type.Null()]), total_bytes: Type.Integer(), finished: Type.Boolean() }), Type.Null()], { description: 'a live restore\'s progress: bytes in place (copied or written), bytes the user wrote (once the copy has ended), the volume\'s size, whether the copy has ended' }),
});
const exportJson = (e: ExportInfo) => ({
  id: e.id, backup_id: e.backupId, uri: e.uri, export_name: e.exportName, writable: e.writable, tls: e.tls, created_at: millisZ(e.createdAt)!, expires_at: millisZ(e.expiresAt)!,
  volume_id: e.volumeId, live: e.live ? { settled_bytes: e.live.settledBytes, written_bytes: e.live.writtenBytes, total_bytes: e.live.totalBytes, finished: e.live.finished } : null,
});
// What the operations answer (documented in the OpenAPI document; the tests check real answers).
const JobRef = Type.Object({ job_id: Type.String({ description: 'poll GET /v1/{project_id}/jobs/{job_id}' }) });
const JobJson = Type.Object({
  status: Type.Union([Type.Literal('INIT'), Type.Literal('RUNNING'), Type.Literal('SUCCESS'), Type.Literal('FAIL')]),
  entities: Type.Record(Type.String(), Type.String(), { description: 'results, all values strings: backup_id, volume_id, progress (percent, while running), …' }),
  job_id: Type.String(),
  job_type: Type.String({ description: 'bksCreateBackup, bksDeleteBackup, bksRestoreBackup, …' }),
  begin_time: Type.Union([Type.String(), Type.Null()]),
  end_time: Type.Union([Type.String(), Type.Null()]),
  error_code: Type.Union([Type.String(), Type.Null()]),
  fail_reason: Type.Union([Type.String(), Type.Null()]),
});
const QuotaJson = Type.Object({ quotas: Type.Object({ resources: Type.Array(Type.Object({ type: Type.String(), used: Type.Integer(), reserved: Type.Integer(), quota: Type.Integer() })) }) });
const JOB_ERRORS: RouteErrorCodes = { [ErrorCode.JobNotFound]: ['common.0011', 404] };
const BackupParams = Type.Object({ projectId: PathParam, backupId: PathParam });
const JobParams = Type.Object({ projectId: PathParam, jobId: PathParam });

export function registerVbsBackupRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);
  const pid = (req: { params: { projectId: string } }) => req.params.projectId;
  const tags = ['vbs backups'];
  const base = { envelope: 'vbs' as const, auth: 'project' as const };

  app.post('/v2/:projectId/cloudbackups', {
    config: { ...base, validation: CREATE_VALIDATION, errorCodes: CREATE_ERRORS },
    schema: { params: ProjectParams, body: CreateBody, tags, summary: 'Create a backup (B1); returns a job', response: { 200: JobRef } },
  }, async (req) => {
    const b = req.body.backup;
    const full = String(b.extend_param?.FullBackup ?? 'false') === 'true';
    const { job } = await s.backups.createBackup(pid(req), { volumeId: b.volume_id, snapshotId: b.snapshot_id, name: b.name, description: b.description, tags: b.tags, full, origin: 'vbs' });
    return { job_id: job.id };
  });

  const del = async (req: { params: Static<typeof BackupParams> }) => ({ job_id: (await s.backups.deleteBackup(pid(req), req.params.backupId)).id });
  app.post('/v2/:projectId/cloudbackups/:backupId', { config: { ...base, errorCodes: DELETE_ERRORS }, schema: { params: BackupParams, tags, summary: 'Delete a backup (B2, deprecated); returns a job', response: { 200: JobRef } } }, del);
  app.delete('/v2/:projectId/cloudbackups/:backupId', { config: { ...base, errorCodes: DELETE_ERRORS }, schema: { params: BackupParams, tags, summary: 'Delete a backup (B2, old clients); returns a job', response: { 200: JobRef } } }, del);

  app.post('/v2/:projectId/cloudbackups/:backupId/restore', {
    config: { ...base, validation: RESTORE_VALIDATION, errorCodes: { ...RESTORE_ERRORS, [ErrorCode.ExportUnavailable]: ['VolumeBackup.0900', 503] } },
    schema: { params: BackupParams, body: RestoreBody, tags, summary: 'Restore a disk from a backup (B3); returns a job', response: { 200: Type.Object({ job_id: Type.String(), export: Type.Optional(ExportJson) }, { description: 'export: with "live": true, the volume served over NBD while it is copied' }) } },
  }, async (req) => {
    const live = req.body.restore.live === true;
    const { job, volume } = await s.backups.restoreBackup(pid(req), req.params.backupId, req.body.restore.volume_id, { live });
    if (!live) return { job_id: job.id };
    // Served from now on; the job copies behind it (a failure here fails the job too).
    const e = await s.exports.beginLive(pid(req), req.params.backupId, volume, job.id);
    return { job_id: job.id, export: exportJson(e) };
  });

  // Haven extension: a backup served as an NBD disk (docs: README "Instant recovery").
  const exportTags = ['haven extensions'];
  app.post('/v2/:projectId/cloudbackups/:backupId/export', {
    config: { ...base, validation: EXPORT_VALIDATION, errorCodes: { ...EXPORT_ERRORS, [ErrorCode.ExportUnavailable]: ['VolumeBackup.0900', 503] } },
    // No body at all (curl -X POST) means the defaults.
    preValidation: async (req: { body: unknown }) => {
      req.body ??= {};
    },
    schema: { params: BackupParams, body: ExportBody, tags: exportTags, summary: 'Serve a backup as an NBD disk (Haven extension): an nbd:// URI with a secret export name, until it expires or is deleted', response: { 200: Type.Object({ export: ExportJson }) } },
  }, async (req) => {
    const e = await s.exports.create(pid(req), req.params.backupId, { expiresInSeconds: req.body?.export?.expires_in, writable: req.body?.export?.writable });
    return { export: exportJson(e) };
  });
  app.get('/v2/:projectId/cloudbackups/:backupId/export', {
    config: { ...base, errorCodes: EXPORT_ERRORS },
    schema: { params: BackupParams, tags: exportTags, summary: 'The backup\'s exports (Haven extension)', response: { 200: Type.Object({ exports: Type.Array(ExportJson) }) } },
  }, async (req) => {
    await s.backups.getBackup(pid(req), req.params.backupId, { includeShared: true });
    return { exports: s.exports.exportsOf(pid(req), req.params.backupId).map(exportJson) };
  });
  app.delete('/v2/:projectId/cloudbackups/:backupId/export', {
    config: { ...base, errorCodes: EXPORT_ERRORS },
    schema: { params: BackupParams, tags: exportTags, summary: 'End the backup\'s exports (Haven extension): their connections close; 204', response: { 204: Type.Unknown({ description: 'done: no body' }) } },
  }, async (req, reply) => {
    await s.exports.end(pid(req), req.params.backupId);
    return reply.code(204).send();
  });

  app.get('/v2/:projectId/cloudbackups/quota', { config: base, schema: { params: ProjectParams, tags, summary: 'Backup quotas (Q1)', response: { 200: QuotaJson } } }, async (req) => {
    const u = await s.backups.usage(pid(req));
    return {
      quotas: {
        resources: [
          { type: 'backups', used: u.backups, reserved: 0, quota: u.quotas.backups },
          { type: 'backup_gigabytes', used: u.gigabytes, reserved: 0, quota: u.quotas.backupGigabytes },
        ],
      },
    };
  });

  for (const v of ['v1', 'v2']) {
    app.get(`/${v}/:projectId/jobs/:jobId`, { config: { ...base, errorCodes: JOB_ERRORS }, schema: { params: JobParams, tags: ['jobs'], summary: 'Query a job (J1)', response: { 200: JobJson } } }, async (req) => jobJson(await s.backups.getJob(pid(req), req.params.jobId)));
  }
}
