/**
 * Haven's own read-only views for the web console (and any client), beside the OTC APIs:
 *
 *   GET  /haven/v1/jobs              the caller's project's jobs, newest first, with live progress
 *                                    (a cloud admin: every project's with all_tenants=true)
 *   POST /haven/v1/schedule/preview  the next run times of a VBS schedule or a CSBS pattern
 *                                    (scheduler/preview.ts, as `haven schedule preview`)
 *   GET  /haven/v1/repository        the repository's size, growth, ratios, last GC and verify
 *                                    (cloud admin; services/repository-service.ts)
 *
 * They change nothing. Errors come in the envelope of Haven's admin routes (the Cinder fault:
 * {"badRequest": {"code": 400, "message": …}}), as /haven/v1/agents does.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { JOB_TYPES, type Job } from '../domain/job.ts';
import { previewRuns, type PreviewFieldNames } from '../scheduler/preview.ts';
import type { RepositoryOverview } from '../services/repository-service.ts';
import { ApiError } from './errors.ts';
import type { ApiServices } from './server.ts';
import { typed } from './typed-routes.ts';
import { NullableString } from './wire/schemas.ts';
import { millisZ } from './wire/time.ts';
import { jobErrorCodeOf } from './wire/vbs-wire.ts';

const TOKEN = { auth: 'token' as const };
const ADMIN = { auth: 'cloudAdmin' as const };
const JOB_STATUSES = ['INIT', 'RUNNING', 'SUCCESS', 'FAIL'] as const;
const DEFAULT_JOB_LIMIT = 100;

const JobsQuery = Type.Object({
  status: Type.Optional(Type.Enum(JOB_STATUSES)),
  type: Type.Optional(Type.Enum(JOB_TYPES)),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: DEFAULT_JOB_LIMIT })),
  marker: Type.Optional(Type.String({ minLength: 1, maxLength: 255, description: 'the last job of the previous page: the page starts after it' })),
  all_tenants: Type.Optional(Type.Boolean({ description: 'every project\'s jobs (cloud admin only)' })),
});

// What the operations answer (OpenAPI; the tests check real answers against these).
const Time = Type.String({ description: 'ISO 8601' });
const NullableTime = Type.Union([Time, Type.Null()]);
const JobJson = Type.Object({
  id: Type.String(), project_id: Type.String(), job_type: Type.String({ description: JOB_TYPES.join(', ') }),
  status: Type.Enum(JOB_STATUSES),
  progress: Type.Object({ done: Type.Integer({ minimum: 0 }), total: Type.Integer({ minimum: 0 }) }, { description: 'bytes done of the total (a backup: read; a restore: written); done equals total once a job succeeded' }),
  entities: Type.Record(Type.String(), Type.String(), { description: 'results, all values strings: backup_id, volume_id, …' }),
  error_code: Type.Union([Type.String(), Type.Null()], { description: 'a failed job\'s code as the VBS jobs API reports it (VolumeBackup.*, CSBS.*)' }),
  fail_reason: NullableString,
  created_at: Time, begin_time: NullableTime, end_time: NullableTime,
  request_id: Type.Union([Type.String(), Type.Null()], { description: 'the request that created it (x-openstack-request-id); null: a policy\'s run' }),
});

function jobListJson(j: Job) {
  return {
    id: j.id, project_id: j.projectId, job_type: j.type, status: j.status, progress: { done: j.progressDone, total: j.progressTotal }, entities: j.entities,
    error_code: jobErrorCodeOf(j), fail_reason: j.failReason, created_at: millisZ(j.createdAt)!, begin_time: millisZ(j.beginTime), end_time: millisZ(j.endTime), request_id: j.requestId ?? null,
  };
}

/** The body's fields, as the messages name them (the command line names them --start-time, …). */
const PREVIEW_NAMES: PreviewFieldNames = { startTime: 'start_time', pattern: 'pattern', timeZone: 'time_zone', weekFrequency: 'week_frequency', frequency: 'frequency', created: 'created', from: 'from', count: 'count' };
const MAX_PREVIEW_COUNT = 100;
const DEFAULT_PREVIEW_COUNT = 10;
/**
 * Either `start_time` (VBS, with `week_frequency` or `frequency`) or `pattern` (CSBS). Which
 * combinations make a schedule is scheduler/preview.ts's to say, with the same words as the
 * command line's, so the schema holds only types and sizes.
 */
const PreviewBody = Type.Object({
  start_time: Type.Optional(Type.String({ maxLength: 256, description: 'VBS: whole UTC hours, comma separated, e.g. "22:00,02:00"' })),
  pattern: Type.Optional(Type.String({ maxLength: 8192, description: 'CSBS: an RRULE pattern, with or without its VCALENDAR wrapper (read in UTC, or in its own DTSTART;TZID=…)' })),
  time_zone: Type.Optional(Type.Union([Type.String({ maxLength: 64 }), Type.Null()], { description: 'VBS: UTC+HH:mm or UTC-HH:mm' })),
  week_frequency: Type.Optional(Type.Union([Type.Array(Type.String({ maxLength: 16 }), { maxItems: 7 }), Type.Null()], { description: 'VBS: local days, e.g. ["MON", "THU"]' })),
  frequency: Type.Optional(Type.Union([Type.Integer(), Type.Null()], { description: 'VBS: every N local days (1 to 30), counted from created' })),
  created: Type.Optional(Type.String({ maxLength: 64, description: 'ISO 8601: when the policy was created or its schedule last changed (default: from)' })),
  from: Type.Optional(Type.String({ maxLength: 64, description: 'ISO 8601: run times at or after this (default: now)' })),
  count: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PREVIEW_COUNT, default: DEFAULT_PREVIEW_COUNT })),
}, { additionalProperties: false });

const GcJson = Type.Object({ finished_at: Time, duration_ms: Type.Integer(), reclaimed_bytes: Type.Integer(), dead_bytes: Type.Integer({ description: 'dead bytes left in packs' }), repository_bytes_after: Type.Integer() });
const VerifyJson = Type.Object({
  finished_at: Time, duration_ms: Type.Integer(), scope: Type.Enum(['all', 'backups'] as const, { description: 'all: the whole repository; backups: some backups only' }),
  backups: Type.Integer(), checked_chunks: Type.Integer(), damaged_chunks: Type.Integer(), missing_chunks: Type.Integer(), ok: Type.Boolean(),
});
const NullableRatio = Type.Union([Type.Number(), Type.Null()]);
const RepositoryJson = Type.Object({
  kind: Type.Enum(['local', 's3'] as const),
  location: Type.String({ description: 'a folder, or s3://bucket/prefix (never a credential)' }),
  encrypted: Type.Boolean(),
  bytes: Type.Integer({ description: 'bytes the repository occupies (measured at most once a minute, every 15 minutes in S3)' }),
  free_bytes: Type.Union([Type.Integer(), Type.Null()], { description: 'free space where the repository is stored (a folder; null in S3)' }),
  filesystem_bytes: Type.Union([Type.Integer(), Type.Null()], { description: 'size of that file system (a folder; null in S3)' }),
  backups: Type.Integer({ description: 'backups one can restore (available or being restored from), every project\'s' }),
  logical_bytes: Type.Integer({ description: 'their volumes\' bytes' }),
  new_bytes: Type.Integer({ description: 'bytes they added to the repository' }),
  stored_bytes: Type.Integer({ description: 'what those took once compressed (and encrypted)' }),
  dedup_ratio: NullableRatio, compression_ratio: NullableRatio,
  last_gc: Type.Union([GcJson, Type.Null()]), last_verify: Type.Union([VerifyJson, Type.Null()]),
  growth: Type.Array(Type.Object({ at: Time, bytes: Type.Integer() }), { description: 'the repository\'s size over the last 90 days, oldest first, at most ~500 points' }),
});

function repositoryJson(r: RepositoryOverview) {
  const iso = (ms: number) => millisZ(ms)!;
  return {
    kind: r.kind, location: r.location, encrypted: r.encrypted, bytes: r.bytes, free_bytes: r.freeBytes, filesystem_bytes: r.filesystemBytes,
    backups: r.backups, logical_bytes: r.logicalBytes, new_bytes: r.newBytes, stored_bytes: r.storedBytes, dedup_ratio: r.dedupRatio, compression_ratio: r.compressionRatio,
    last_gc: r.lastGc && { finished_at: iso(r.lastGc.finishedAt), duration_ms: r.lastGc.durationMs, reclaimed_bytes: r.lastGc.reclaimedBytes, dead_bytes: r.lastGc.deadBytes, repository_bytes_after: r.lastGc.repositoryBytesAfter },
    last_verify: r.lastVerify && {
      finished_at: iso(r.lastVerify.finishedAt), duration_ms: r.lastVerify.durationMs, scope: r.lastVerify.scope, backups: r.lastVerify.backups,
      checked_chunks: r.lastVerify.checkedChunks, damaged_chunks: r.lastVerify.damagedChunks, missing_chunks: r.lastVerify.missingChunks, ok: r.lastVerify.ok,
    },
    growth: r.growth.map((g) => ({ at: iso(g.takenAt), bytes: g.bytes })),
  };
}

export function registerHavenRoutes(root: FastifyInstance, s: ApiServices): void {
  const app = typed(root);

  app.get('/haven/v1/jobs', {
    config: TOKEN,
    schema: { querystring: JobsQuery, tags: ['haven views'], summary: 'List the jobs of the token\'s project, newest first, with their progress (Haven); a cloud admin: every project\'s with all_tenants=true', response: { 200: Type.Object({ jobs: Type.Array(JobJson) }) } },
  }, async (req) => {
    const q = req.query;
    const auth = req.auth!;
    let projectId: string | null;
    if (q.all_tenants) {
      if (!auth.isCloudAdmin) throw new ApiError(403, `all_tenants=true lists every project's jobs: it needs the admin role on the admin project (${s.identity.adminProject}).`);
      projectId = null;
    } else {
      if (!auth.project) throw new ApiError(403, 'The token is not scoped to a project: the jobs listed are those of the token\'s project.');
      projectId = auth.project.id;
    }
    const jobs = await s.backups.listJobs({ projectId, status: q.status, type: q.type }, { limit: q.limit ?? DEFAULT_JOB_LIMIT, marker: q.marker });
    return { jobs: jobs.map(jobListJson) };
  });

  app.post('/haven/v1/schedule/preview', {
    config: TOKEN,
    schema: { body: PreviewBody, tags: ['haven views'], summary: 'The next run times of a VBS policy schedule or a CSBS RRULE pattern, as the scheduler computes them (Haven; haven schedule preview)', response: { 200: Type.Object({ runs: Type.Array(Time, { description: 'UTC, ascending' }) }) } },
  }, async (req) => {
    const b = req.body;
    const runs = previewRuns({
      startTime: b.start_time, pattern: b.pattern, timeZone: b.time_zone ?? undefined, weekFrequency: b.week_frequency ?? undefined, frequency: b.frequency ?? undefined,
      created: b.created, from: b.from, count: b.count ?? DEFAULT_PREVIEW_COUNT,
    }, { names: PREVIEW_NAMES, maxCount: MAX_PREVIEW_COUNT, nowMs: Date.now() });
    return { runs: runs.map((t) => millisZ(t)!) };
  });

  app.get('/haven/v1/repository', {
    config: ADMIN,
    schema: { tags: ['haven views'], summary: 'The repository: where, encrypted or not, size and free space, backups and their dedup and compression ratios, last GC and verify, growth over 90 days (cloud admin)', response: { 200: Type.Object({ repository: RepositoryJson }) } },
  }, async () => ({ repository: repositoryJson(await s.repository.overview()) }));
}
