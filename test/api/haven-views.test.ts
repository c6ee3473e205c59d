/**
 * Haven's own views for the console (api/haven.routes.ts), on a real service after real work:
 * GET /haven/v1/jobs (a project's jobs, never another's; the cloud admin's all_tenants; filters and
 * paging), POST /haven/v1/schedule/preview (the same runs and the same refusals as `haven schedule
 * preview`), GET /haven/v1/repository (cloud admin: the figures after a backup, a verify, a delete
 * and its GC; the growth samples at start, hourly across processes, and after each GC), on SQLite,
 * on PostgreSQL, and on S3 (whose location never shows a credential).
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freshDatabase } from '../helpers/postgres.ts';
import { assertCinderError, jobCount } from '../helpers/api.ts';
import { startS3, S3_BUCKET, S3_CREDENTIALS } from '../helpers/s3-server.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, runCli, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-views-');
after(() => temp.cleanup());

type Who = { token: string; projectId: string };
interface JobJson {
  id: string; project_id: string; job_type: string; status: string; progress: { done: number; total: number }; entities: Record<string, string>;
  error_code: string | null; fail_reason: string | null; created_at: string; begin_time: string | null; end_time: string | null; request_id: string | null;
}

/** A 1 GB volume with 2 MiB of data, backed up through VBS; returns the job (finished) and the request's id. */
async function backUp(svc: TestService, who: Who, name: string, seed: number): Promise<{ jobId: string; backupId: string; requestId: string; volumeId: string }> {
  const vol = await svc.createVolume(who, name, 1);
  await overwrite(await svc.volumePath(vol.id), 0, randomBytesSeeded(2 * MiB, seed));
  const r = await svc.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: vol.id, name } } });
  assert.equal(r.statusCode, 200, r.body);
  const jobId = (r.json() as { job_id: string }).job_id;
  const job = await svc.waitJob(who.token, who.projectId, jobId);
  assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
  return { jobId, backupId: String((job.entities as Record<string, string>).backup_id), requestId: String(r.headers['x-openstack-request-id']), volumeId: vol.id };
}

async function listJobs(svc: TestService, who: Who, query = ''): Promise<JobJson[]> {
  const r = await svc.req({ method: 'GET', url: `/haven/v1/jobs${query}`, token: who.token });
  assert.equal(r.statusCode, 200, r.body);
  return (r.json() as { jobs: JobJson[] }).jobs;
}

describe('GET /haven/v1/jobs', () => {
  it('lists the token\'s project\'s jobs newest first with progress, never another project\'s; all_tenants for the cloud admin only', async () => {
    const svc = await startService(temp);
    try {
      const admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const alpha = await svc.tenant('alpha');
      const beta = await svc.tenant('beta');
      const first = await backUp(svc, alpha, 'a1', 1);

      const [job, ...rest] = await listJobs(svc, alpha);
      assert.equal(rest.length, 0);
      assert.equal(job!.id, first.jobId);
      assert.equal(job!.project_id, alpha.projectId);
      assert.equal(job!.job_type, 'bksCreateBackup');
      assert.equal(job!.status, 'SUCCESS');
      assert.ok(job!.progress.total > 0, JSON.stringify(job));
      assert.equal(job!.progress.done, job!.progress.total);
      assert.equal(job!.entities.backup_id, first.backupId);
      assert.equal(job!.error_code, null);
      assert.equal(job!.fail_reason, null);
      assert.equal(job!.request_id, first.requestId);
      for (const t of [job!.created_at, job!.begin_time, job!.end_time]) assert.match(String(t), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.ok(Date.parse(job!.created_at) <= Date.parse(job!.begin_time!) && Date.parse(job!.begin_time!) <= Date.parse(job!.end_time!));

      // Another project sees none of it: not in its list, not through a marker, not by asking for all.
      assert.deepEqual(await listJobs(svc, beta), []);
      assert.match(assertCinderError(await svc.req({ method: 'GET', url: `/haven/v1/jobs?marker=${first.jobId}`, token: beta.token }), 400), /marker .* could not be found/);
      assert.match(assertCinderError(await svc.req({ method: 'GET', url: '/haven/v1/jobs?all_tenants=true', token: beta.token }), 403), /admin role on the admin project/);
      assert.match(assertCinderError(await svc.req({ method: 'GET', url: '/haven/v1/jobs?all_tenants=true', token: alpha.token }), 403), /admin role/);
      assertCinderError(await svc.req({ method: 'GET', url: '/haven/v1/jobs' }), 401);
      // The cloud admin: its own project's by default, every project's with all_tenants.
      assert.deepEqual(await listJobs(svc, admin), []);
      assert.deepEqual((await listJobs(svc, admin, '?all_tenants=true')).map((j) => j.id), [first.jobId]);
      assert.deepEqual(await listJobs(svc, admin, '?all_tenants=false'), []);

      // More work: a second backup, a delete, and a backup that fails (its volume's file is gone).
      const second = await backUp(svc, alpha, 'a2', 2);
      const del = await svc.req({ method: 'DELETE', url: `/v2/${alpha.projectId}/cloudbackups/${first.backupId}`, token: alpha.token });
      assert.equal(del.statusCode, 200, del.body);
      const delJob = (del.json() as { job_id: string }).job_id;
      assert.equal((await svc.waitJob(alpha.token, alpha.projectId, delJob)).status, 'SUCCESS');
      const broken = await svc.createVolume(alpha, 'broken', 1);
      await fs.rm(await svc.volumePath(broken.id));
      const bad = await svc.req({ method: 'POST', url: `/v2/${alpha.projectId}/cloudbackups`, token: alpha.token, payload: { backup: { volume_id: broken.id, name: 'broken' } } });
      assert.equal(bad.statusCode, 200, bad.body);
      const badJob = (bad.json() as { job_id: string }).job_id;
      const failed = await svc.waitJob(alpha.token, alpha.projectId, badJob);
      assert.equal(failed.status, 'FAIL');
      const betaOwn = await backUp(svc, beta, 'b1', 3);

      const all = await listJobs(svc, alpha);
      assert.deepEqual(all.map((j) => j.id), [badJob, delJob, second.jobId, first.jobId], 'newest first');
      // A failed job's code and reason are those of the VBS jobs API.
      const f = all[0]!;
      assert.equal(f.status, 'FAIL');
      assert.equal(f.error_code, failed.error_code);
      assert.match(String(f.error_code), /^VolumeBackup\.\d{4}$/);
      assert.equal(f.fail_reason, failed.fail_reason);
      assert.deepEqual((await listJobs(svc, alpha, '?status=SUCCESS')).map((j) => j.id), [delJob, second.jobId, first.jobId]);
      assert.deepEqual((await listJobs(svc, alpha, '?status=FAIL&type=bksCreateBackup')).map((j) => j.id), [badJob]);
      assert.deepEqual((await listJobs(svc, alpha, '?type=bksDeleteBackup')).map((j) => j.id), [delJob]);
      assert.deepEqual(await listJobs(svc, alpha, '?type=csbsProtect'), []);
      // Pages of one, each after the previous page's last job: every job once, in order.
      const paged: string[] = [];
      for (let marker = ''; ;) {
        const page = await listJobs(svc, alpha, `?limit=1${marker ? `&marker=${marker}` : ''}`);
        if (!page.length) break;
        assert.equal(page.length, 1);
        paged.push(page[0]!.id);
        marker = page[0]!.id;
      }
      assert.deepEqual(paged, all.map((j) => j.id));
      assert.deepEqual((await listJobs(svc, alpha, `?limit=2&marker=${delJob}`)).map((j) => j.id), [second.jobId, first.jobId]);
      // The cloud admin's list holds both projects', newest first; its marker may be any project's.
      const every = await listJobs(svc, admin, '?all_tenants=true');
      assert.deepEqual(every.map((j) => j.id), [betaOwn.jobId, ...all.map((j) => j.id)]);
      assert.deepEqual((await listJobs(svc, admin, `?all_tenants=true&marker=${betaOwn.jobId}&limit=1`)).map((j) => j.id), [badJob]);
      assert.deepEqual((await listJobs(svc, beta)).map((j) => j.id), [betaOwn.jobId]);

      // Bad queries: 400 in the envelope of the admin routes, and nothing changes.
      const jobsBefore = await jobCount(svc);
      for (const q of ['status=DONE', 'status=success', 'type=backup', 'limit=0', 'limit=1001', 'limit=ten', 'limit=1.5', 'all_tenants=maybe', 'marker=no-such-job', 'marker=']) {
        const msg = assertCinderError(await svc.req({ method: 'GET', url: `/haven/v1/jobs?${q}`, token: alpha.token }), 400);
        assert.match(msg, /^Invalid input received: /, q);
      }
      assert.equal(await jobCount(svc), jobsBefore);
      assert.equal((await listJobs(svc, alpha)).length, 4);
    } finally {
      await svc.close();
    }
  });
});

describe('POST /haven/v1/schedule/preview', () => {
  let svc: TestService;
  let who: Who;
  before(async () => {
    svc = await startService(temp);
    who = await svc.tenant('planner'); // any user: no project data is touched
  });
  after(async () => {
    await svc.close();
  });
  const preview = (body: object) => svc.req({ method: 'POST', url: '/haven/v1/schedule/preview', token: who.token, payload: body });

  it('gives the runs `haven schedule preview` gives, for VBS schedules and CSBS patterns', async () => {
    const cases: Array<{ body: Record<string, unknown>; cli: string[] }> = [
      { body: { start_time: '22:00,00:00,02:00', time_zone: 'UTC+02:00', week_frequency: ['MON'], frequency: null, from: '2026-11-29T00:00:00Z', count: 4 }, cli: ['--start-time', '22:00,00:00,02:00', '--time-zone', 'UTC+02:00', '--week-frequency', 'MON', '--from', '2026-11-29T00:00:00Z', '--count', '4'] },
      { body: { start_time: '02:00', time_zone: 'UTC+08:00', week_frequency: null, frequency: 3, created: '2026-11-25T15:00:00Z', from: '2026-11-25T15:00:00Z', count: 3 }, cli: ['--start-time', '02:00', '--time-zone', 'UTC+08:00', '--frequency', '3', '--created', '2026-11-25T15:00:00Z', '--from', '2026-11-25T15:00:00Z', '--count', '3'] },
      { body: { pattern: 'RRULE:FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=2;BYMINUTE=0', from: '2026-11-26T00:00:00Z', count: 4 }, cli: ['--pattern', 'RRULE:FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=2;BYMINUTE=0', '--from', '2026-11-26T00:00:00Z', '--count', '4'] },
      { body: { pattern: 'BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;TZID=Europe/Berlin:20260101T000000\r\nRRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=0\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n', from: '2026-11-26T00:00:00Z', count: 2 }, cli: ['--pattern', 'BEGIN:VCALENDAR\\nBEGIN:VEVENT\\nDTSTART;TZID=Europe/Berlin:20260101T000000\\nRRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=0\\nEND:VEVENT\\nEND:VCALENDAR', '--from', '2026-11-26T00:00:00Z', '--count', '2'] },
    ];
    for (const c of cases) {
      const r = await preview(c.body);
      assert.equal(r.statusCode, 200, r.body);
      const cli = await runCli(['schedule', 'preview', ...c.cli, '--json']);
      assert.equal(cli.code, 0, cli.stderr);
      assert.deepEqual((r.json() as { runs: string[] }).runs, JSON.parse(cli.stdout), JSON.stringify(c.body));
    }
    assert.deepEqual((await preview(cases[0]!.body)).json(), { runs: ['2026-11-29T22:00:00.000Z', '2026-11-30T00:00:00.000Z', '2026-11-30T02:00:00.000Z', '2026-12-06T22:00:00.000Z'] });
    assert.deepEqual((await preview(cases[3]!.body)).json(), { runs: ['2026-11-26T01:00:00.000Z', '2026-11-27T01:00:00.000Z'] });
  });

  it('counts 10 runs from now by default', async () => {
    const before = Date.now();
    const r = await preview({ start_time: '03:00', week_frequency: ['MON', 'THU'] });
    assert.equal(r.statusCode, 200, r.body);
    const runs = (r.json() as { runs: string[] }).runs;
    assert.equal(runs.length, 10);
    assert.ok(Date.parse(runs[0]!) >= before - 1000, runs[0]);
    assert.ok(runs.every((t, i) => i === 0 || Date.parse(t) > Date.parse(runs[i - 1]!)));
    assert.ok(runs.every((t) => /T03:00:00\.000Z$/.test(t)));
  });

  it('refuses a bad schedule with a 400 that says what is wrong, in the schedule\'s own words', async () => {
    const from = '2026-11-29T00:00:00Z';
    const refusals: Array<[Record<string, unknown>, RegExp]> = [
      [{ start_time: '12:30', week_frequency: ['MON'], from }, /^start time 12:30 is not a whole UTC hour HH:00$/],
      [{ start_time: '12:00', time_zone: 'UTC+8', week_frequency: ['MON'], from }, /^time zone UTC\+8 is not UTC±HH:mm$/],
      [{ pattern: 'RRULE:FREQ=HOURLY;BYHOUR=1', from }, /^FREQ must be WEEKLY or DAILY, got HOURLY$/],
      [{ start_time: '12:00', pattern: 'RRULE:FREQ=DAILY;BYHOUR=1', from }, /^give either start_time \(VBS\) or pattern \(CSBS\)$/],
      [{ from }, /^give either start_time \(VBS\) or pattern \(CSBS\)$/],
      [{ start_time: '12:00', week_frequency: ['MON'], frequency: 2, created: from, from }, /^give either week_frequency or frequency \(with created\)$/],
      [{ start_time: '12:00', frequency: 2, from }, /^frequency needs created/],
      [{ start_time: '12:00', frequency: 0, created: from, from }, /^frequency must be a whole number of days from 1 to 30, got 0$/],
      // Bounded so that no token can hold the event loop (the computation walks day by day).
      [{ start_time: '02:00', frequency: 10_000_000_000, created: from, count: 2 }, /^frequency must be a whole number of days from 1 to 30/],
      [{ pattern: 'RRULE:FREQ=DAILY;INTERVAL=2;BYHOUR=2;BYMINUTE=0', created: '9999-12-31T00:00:00Z', from: '1000-01-01T00:00:00Z' }, /must be a time in the years 2000 to 2099/],
      [{ start_time: '02:00', week_frequency: [], from }, /^week_frequency must name at least one day/],
      [{ start_time: '12:00', week_frequency: ['MONDAY'], from }, /^week_frequency: MONDAY is not one of SUN, MON, TUE, WED, THU, FRI, SAT$/],
      [{ pattern: 'RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=0', time_zone: 'UTC+01:00', from }, /^time_zone does not apply to pattern: CSBS patterns are read in UTC.*DTSTART;TZID=Europe\/Berlin/],
      [{ pattern: 'RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=0', week_frequency: ['MON'], from }, /^pattern carries its own days; leave out week_frequency and frequency$/],
      [{ start_time: '12:00', week_frequency: ['MON'], from: 'tomorrow' }, /^from must be an ISO 8601 time such as 2026-11-30T00:00:00Z, got tomorrow$/],
      [{ start_time: '12:00', week_frequency: ['MON'], from, count: 101 }, /^Invalid input received: body\.count must be <= 100\.$/],
      [{ start_time: '12:00', week_frequency: ['MON'], from, count: 0 }, /count must be >= 1/],
      [{ start_time: '12:00', week_frequency: 'MON', from }, /week_frequency/],
      [{ start_time: '12:00', week_frequency: ['MON'], from, starttime: 'x' }, /additional properties/],
    ];
    for (const [body, want] of refusals) assert.match(assertCinderError(await preview(body), 400), want, JSON.stringify(body));
    assertCinderError(await svc.req({ method: 'POST', url: '/haven/v1/schedule/preview', payload: { start_time: '12:00', week_frequency: ['MON'] } }), 401);
  });
});

describe('GET /haven/v1/repository', () => {
  it('shows the cloud admin the repository after real work: size, backups, ratios, last verify and GC, growth', async () => {
    let offsetMs = 0;
    const clock = { now: () => Date.now() + offsetMs };
    const svc = await startService(temp, {}, { clock });
    try {
      const admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const alpha = await svc.tenant('alpha');
      type Repo = Record<string, unknown> & { growth: { at: string; bytes: number }[]; last_gc: Record<string, unknown> | null; last_verify: Record<string, unknown> | null };
      const show = async (): Promise<Repo> => {
        const r = await svc.req({ method: 'GET', url: '/haven/v1/repository', token: admin.token });
        assert.equal(r.statusCode, 200, r.body);
        return (r.json() as { repository: Repo }).repository;
      };
      // Only the cloud admin.
      assert.match(assertCinderError(await svc.req({ method: 'GET', url: '/haven/v1/repository', token: alpha.token }), 403), /admin role on the admin project/);
      assertCinderError(await svc.req({ method: 'GET', url: '/haven/v1/repository' }), 401);

      await svc.app.repository.sampleSoon(); // the start's sample is in
      const empty = await show();
      assert.equal(empty.kind, 'local');
      assert.equal(empty.location, path.join(svc.dataDir, 'repository'));
      assert.equal(empty.encrypted, false);
      assert.equal(empty.backups, 0);
      assert.equal(empty.logical_bytes, 0);
      assert.equal(empty.dedup_ratio, null);
      assert.equal(empty.compression_ratio, null);
      assert.equal(empty.last_gc, null);
      assert.equal(empty.last_verify, null);
      assert.equal(empty.growth.length, 1);
      assert.ok(empty.growth[0]!.bytes > 0);
      const st = await fs.statfs(path.join(svc.dataDir, 'repository'));
      assert.equal(empty.filesystem_bytes, Number(st.blocks) * Number(st.bsize));
      assert.ok(typeof empty.free_bytes === 'number' && empty.free_bytes > 0);

      const { backupId } = await backUp(svc, alpha, 'r1', 11);
      const row = (await svc.app.catalog.backups.getBackupById(backupId))!;
      await svc.app.engine.verify([backupId]);
      const one = await show();
      assert.equal(one.backups, 1);
      assert.ok((one.bytes as number) > 0);
      assert.equal(one.logical_bytes, row.sizeBytes);
      assert.equal(one.new_bytes, row.newBytes);
      assert.equal(one.stored_bytes, row.storedBytes);
      assert.ok(row.newBytes > 0 && row.storedBytes > 0);
      assert.equal(one.compression_ratio, row.newBytes / row.storedBytes);
      // Deduplication from the measured size: disk bytes per byte held before compression.
      assert.equal(one.dedup_ratio, row.sizeBytes / ((one.bytes as number) * (row.newBytes / row.storedBytes)));
      assert.equal(one.last_gc, null);
      assert.equal(one.last_verify!.scope, 'backups');
      assert.equal(one.last_verify!.ok, true);
      assert.equal(one.last_verify!.backups, 1);
      assert.equal(one.growth.length, 1, 'no new sample within the hour');

      // Hourly: a sample is due again once the last is 50 minutes old, and taken once.
      assert.equal(await svc.app.repository.sampleIfDue(), false);
      offsetMs += 61 * 60_000;
      assert.equal(await svc.app.repository.sampleIfDue(), true);
      assert.equal(await svc.app.repository.sampleIfDue(), false);
      // A restart within the hour takes none; the series survives it.
      await svc.restart({}, { clock });
      await svc.app.repository.sampleSoon();
      const admin2 = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const afterRestart = await svc.req({ method: 'GET', url: '/haven/v1/repository', token: admin2.token });
      const grown = (afterRestart.json() as { repository: Repo }).repository.growth;
      assert.equal(grown.length, 2);
      assert.ok(grown[1]!.bytes > grown[0]!.bytes, JSON.stringify(grown));
      assert.ok(Date.parse(grown[1]!.at) > Date.parse(grown[0]!.at));

      // Deleting the backup runs GC; its size after is a sample.
      const alpha2 = await svc.login('alpha-user', 'tenant-password', 'alpha');
      const del = await svc.req({ method: 'DELETE', url: `/v2/${alpha2.projectId}/cloudbackups/${backupId}`, token: alpha2.token });
      assert.equal(del.statusCode, 200, del.body);
      assert.equal((await svc.waitJob(alpha2.token, alpha2.projectId, (del.json() as { job_id: string }).job_id)).status, 'SUCCESS');
      await svc.app.engine.gcIdle();
      const r = await svc.req({ method: 'GET', url: '/haven/v1/repository', token: admin2.token });
      const gone = (r.json() as { repository: Repo }).repository;
      assert.equal(gone.backups, 0);
      assert.ok(gone.last_gc, r.body);
      assert.match(String(gone.last_gc.finished_at), /Z$/);
      assert.equal(gone.growth.length, 3);
      assert.equal(gone.growth[2]!.bytes, gone.last_gc.repository_bytes_after);
      assert.ok(Date.parse(gone.growth[2]!.at) >= Date.parse(gone.growth[1]!.at));
      assert.ok(gone.growth[2]!.bytes < gone.growth[1]!.bytes, JSON.stringify(gone.growth));
      // The console sees 90 days: older samples are left out.
      await svc.app.catalog.repositorySamples.insertSample({ takenAt: clock.now() - 91 * 24 * 3600_000, bytes: 1 });
      const later = (((await svc.req({ method: 'GET', url: '/haven/v1/repository', token: admin2.token })).json()) as { repository: Repo }).repository;
      assert.equal(later.growth.length, 3);
    } finally {
      await svc.close();
    }
  });

  it('thins a long series to about 500 points, evenly over time', async () => {
    const svc = await startService(temp, {}, { runJobs: false }); // no sampling of its own
    try {
      const admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const now = Date.now();
      // 90 days of hourly samples, and a burst of 300 (GCs after many deletes) yesterday.
      for (let h = 89 * 24; h >= 0; h--) await svc.app.catalog.repositorySamples.insertSample({ takenAt: now - h * 3600_000, bytes: 1000 + h });
      for (let i = 0; i < 300; i++) await svc.app.catalog.repositorySamples.insertSample({ takenAt: now - 24 * 3600_000 + i * 1000, bytes: 7 });
      const r = await svc.req({ method: 'GET', url: '/haven/v1/repository', token: admin.token });
      assert.equal(r.statusCode, 200, r.body);
      const growth = (r.json() as { repository: { growth: { at: string; bytes: number }[] } }).repository.growth;
      assert.ok(growth.length > 400 && growth.length <= 500, `${growth.length} points`);
      assert.equal(growth.at(-1)!.at, new Date(now).toISOString(), 'the newest sample stays');
      const times = growth.map((g) => Date.parse(g.at));
      assert.ok(times.every((t, i) => i === 0 || t > times[i - 1]!));
      // Evenly over time: the burst (five minutes) takes one point, as any other few hours.
      assert.ok(growth.filter((g) => g.bytes === 7).length <= 1);
      const gaps = times.slice(1).map((t, i) => t - times[i]!);
      assert.ok(Math.max(...gaps) <= 2 * ((89 * 24 * 3600_000) / 500) + 3600_000, `largest gap ${Math.max(...gaps)} ms`);
    } finally {
      await svc.close();
    }
  });
});

describe('the views on PostgreSQL', async () => {
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : false;
  after(async () => {
    if (!('skip' in db)) await db.drop();
  });

  it('lists jobs (a project\'s, every project\'s, after a marker) and keeps one sample an hour across two processes', { skip }, async () => {
    if ('skip' in db) return;
    const a = await startService(temp, { catalogUrl: db.url });
    let b: TestService | null = null;
    try {
      const alpha = await a.tenant('alpha');
      const beta = await a.tenant('beta');
      const j1 = await backUp(a, alpha, 'p1', 21);
      const j2 = await backUp(a, beta, 'p2', 22);
      const j3 = await backUp(a, alpha, 'p3', 23);
      const admin = await a.login('admin', ADMIN_PASSWORD, 'admin');
      assert.deepEqual((await listJobs(a, alpha)).map((j) => j.id), [j3.jobId, j1.jobId]);
      assert.deepEqual((await listJobs(a, beta)).map((j) => j.id), [j2.jobId]);
      assert.deepEqual((await listJobs(a, admin, '?all_tenants=true')).map((j) => j.id), [j3.jobId, j2.jobId, j1.jobId]);
      assert.deepEqual((await listJobs(a, admin, `?all_tenants=true&marker=${j2.jobId}`)).map((j) => j.id), [j1.jobId]);
      assert.deepEqual((await listJobs(a, alpha, `?marker=${j3.jobId}&status=SUCCESS&type=bksCreateBackup`)).map((j) => j.id), [j1.jobId]);
      assertCinderError(await a.req({ method: 'GET', url: `/haven/v1/jobs?marker=${j2.jobId}`, token: alpha.token }), 400);

      // A second process on the same catalog (and repository) takes no sample of its own within the hour.
      await a.app.repository.sampleSoon();
      b = await startService(temp, { catalogUrl: db.url, repositoryUrl: a.app.config.repositoryUrl, hostName: 'views-b' });
      await b.app.repository.sampleSoon();
      assert.equal(await b.app.repository.sampleIfDue(), false);
      const adminB = await b.login('admin', ADMIN_PASSWORD, 'admin');
      const r = await b.req({ method: 'GET', url: '/haven/v1/repository', token: adminB.token });
      assert.equal(r.statusCode, 200, r.body);
      const repo = (r.json() as { repository: { backups: number; growth: unknown[]; bytes: number } }).repository;
      assert.equal(repo.backups, 3);
      assert.equal(repo.growth.length, 1);
      assert.ok(repo.bytes > 0);
    } finally {
      await b?.close();
      await a.close();
    }
  });
});

describe('the repository view on S3', () => {
  it('names the bucket and prefix, never a credential, the endpoint or the password; no free space', async () => {
    const s3 = await startS3(temp);
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = S3_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = S3_CREDENTIALS.secretAccessKey;
    const passwordFile = path.join(temp.make('pw'), 'password');
    const password = 'repository-password-7f3a';
    await fs.writeFile(passwordFile, `${password}\n`);
    let svc: TestService | null = null;
    try {
      svc = await startService(temp, { repositoryUrl: `s3://${S3_BUCKET}/console/views/`, s3Endpoint: s3.endpoint, repoPasswordFile: passwordFile });
      const admin = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      await backUp(svc, admin, 's1', 31);
      await svc.app.repository.sampleSoon();
      const r = await svc.req({ method: 'GET', url: '/haven/v1/repository', token: admin.token });
      assert.equal(r.statusCode, 200, r.body);
      const repo = (r.json() as { repository: Record<string, unknown> & { growth: unknown[] } }).repository;
      assert.equal(repo.kind, 's3');
      assert.equal(repo.location, `s3://${S3_BUCKET}/console/views`);
      assert.equal(repo.encrypted, true);
      assert.equal(repo.free_bytes, null);
      assert.equal(repo.filesystem_bytes, null);
      assert.equal(repo.backups, 1);
      assert.ok((repo.bytes as number) > 0);
      assert.equal(repo.growth.length, 1);
      for (const secret of [S3_CREDENTIALS.accessKeyId, S3_CREDENTIALS.secretAccessKey, s3.endpoint, password, passwordFile]) assert.ok(!r.body.includes(secret), `the answer shows ${secret}`);
    } finally {
      await svc?.close();
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
      await s3.close();
    }
  });
});
