/**
 * PostgreSQL connections killed in the middle of jobs (pg_terminate_backend on every connection of
 * the test database): the job still ends (SUCCESS, or FAIL with a reason), nothing stays RUNNING
 * or creating, the service keeps answering (the pool reconnects), and the next backup restores
 * bit-identical. Kill points: while the backup's engine work is held at a gate (pack writes wait),
 * and a volley of kills while a backup and a restore run to their end (their heartbeats, the
 * catalog's final transaction). Skips without PostgreSQL, except under CI=true.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { GateStore } from '../helpers/gate-store.ts';
import { freshDatabase } from '../helpers/postgres.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, Rng, sha256File, sleep, TempDirs, writeRandomFile } from '../helpers/volumes.ts';

describe('PostgreSQL connections killed mid-job', async () => {
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : false;
  const temp = new TempDirs('haven-faults-pg-');
  const roots = temp.make('roots');
  /** A volume adopted from a file of `bytes` (small, so comparing restores is quick). */
  const adoptFile = async (who: { token: string; projectId: string }, name: string, bytes: number, seed: number): Promise<{ id: string; file: string }> => {
    const file = path.join(roots, `${name}.img`);
    await writeRandomFile(file, bytes, seed);
    return { id: (await svc!.adopt(who, file, name)).id, file };
  };
  let svc: TestService | undefined;
  let gate: GateStore | undefined;
  let admin: pg.Client | undefined;
  let dbName = '';
  let killed = 0;
  before(async () => {
    if ('skip' in db) return;
    dbName = new URL(db.url).pathname.slice(1);
    const u = new URL(db.url);
    u.pathname = '/postgres';
    adminUrl = u.toString();
    admin = new pg.Client({ connectionString: adminUrl });
    admin.on('error', () => undefined);
    await admin.connect();
    svc = await startService(temp, { catalogUrl: db.url, volumeRoots: [roots] }, { wrapStore: (s) => (gate = new GateStore(s)) });
  });
  after(async () => {
    if ('skip' in db) return;
    await svc?.close();
    await admin?.end();
    await db.drop();
    temp.cleanup();
  });

  // A connection lost outside a query must not become an uncaught exception (it would end a real process).
  const uncaught: string[] = [];
  const onUncaught = (err: Error): void => {
    uncaught.push(err.message);
  };
  process.on('uncaughtException', onUncaught);
  after(() => {
    process.off('uncaughtException', onUncaught);
  });

  /** Polls a job until it ends (bounded); answers of 503 (the catalog connection was lost) are retried, a 500 is a failure. */
  const waitJob = async (who: { token: string; projectId: string }, jobId: string): Promise<Record<string, unknown>> => {
    const until = Date.now() + 90_000;
    for (;;) {
      const r = await svc!.req({ method: 'GET', url: `/v1/${who.projectId}/jobs/${jobId}`, token: who.token });
      if (r.statusCode === 200) {
        const j = r.json() as Record<string, unknown>;
        if (j.status === 'SUCCESS' || j.status === 'FAIL') return j;
      } else {
        assert.equal(r.statusCode, 503, r.body);
        assert.match(r.body, /connection was lost/);
      }
      if (Date.now() > until) assert.fail(`job ${jobId} did not end within 90 s`);
      await sleep(25);
    }
  };

  /** Terminates every connection of the test database (Haven's pool); returns how many. */
  let adminUrl = '';
  const terminate = async (): Promise<number> => {
    const sql = 'SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()';
    const r = await admin!.query(sql, [dbName]).catch(async () => {
      // The test's own connection was lost (not Haven's concern): a new one.
      admin!.end().catch(() => undefined);
      admin = new pg.Client({ connectionString: adminUrl });
      admin.on('error', () => undefined);
      await admin.connect();
      return admin.query(sql, [dbName]);
    });
    killed += r.rowCount ?? 0;
    return r.rowCount ?? 0;
  };

  /** Polls the catalog until no job is queued or running and no backup is busy (bounded); retries through reconnects. */
  const settle = async (): Promise<void> => {
    const until = Date.now() + 60_000;
    for (;;) {
      try {
        const jobs = await svc!.app.catalog.db.all<{ n: number }>("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('INIT', 'RUNNING')");
        const backups = await svc!.app.catalog.db.all<{ n: number }>("SELECT COUNT(*) AS n FROM backups WHERE status IN ('creating', 'deleting', 'restoring')");
        if (Number(jobs[0]!.n) === 0 && Number(backups[0]!.n) === 0) return;
      } catch {
        // a connection the test just terminated: the next try gets a fresh one
      }
      if (Date.now() > until) assert.fail('jobs or backups still busy after 60 s');
      await sleep(50);
    }
  };

  it('a backup whose catalog connections are killed while it writes ends, and the service keeps answering', { skip, timeout: 120_000 }, async (t) => {
    const s = svc!;
    const who = await s.login('admin', ADMIN_PASSWORD, 'admin');
    const { id: volId, file } = await adoptFile(who, 'disk', 32 * MiB, 1);
    const vol = { id: volId };
    const target = await adoptFile(who, 'target', 32 * MiB, 2);
    const rng = new Rng(5432);
    const outcomes: string[] = [];
    for (let k = 0; k < 3; k++) {
      await overwrite(file, rng.int(20) * MiB, rng.bytes(12 * MiB));
      gate!.hold();
      const r = await s.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: vol.id, name: `b${k}` } } });
      assert.equal(r.statusCode, 200, r.body);
      const jobId = (r.json() as { job_id: string }).job_id;
      // The job is mid-way: its first pack write waits at the gate.
      for (let i = 0; i < 2000 && gate!.waiting === 0; i++) await sleep(5);
      assert.ok(gate!.waiting > 0, 'the backup never reached its first pack write');
      const n = await terminate();
      await sleep(rng.int(200));
      if (k === 2) await terminate(); // twice: while the first reconnects
      gate!.release();
      const job = await waitJob(who, jobId);
      outcomes.push(`kill ${k}: ${n} connection(s) terminated; job ${String(job.status)}${job.fail_reason ? ` (${String(job.fail_reason)})` : ''}`);
      if (job.status === 'FAIL') assert.ok(String(job.fail_reason).length > 10, 'a failed job says why');
      await settle();
      // The service answers (the pool reconnected) and the next backup restores bit-identical.
      const listed = await s.req({ method: 'GET', url: `/v3/${who.projectId}/backups/detail`, token: who.token });
      assert.equal(listed.statusCode, 200, listed.body);
      const again = await s.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups`, token: who.token, payload: { backup: { volume_id: vol.id, name: `after${k}` } } });
      assert.equal(again.statusCode, 200, again.body);
      const done = await s.waitJob(who.token, who.projectId, (again.json() as { job_id: string }).job_id);
      assert.equal(done.status, 'SUCCESS', JSON.stringify(done));
      const rs = await s.req({ method: 'POST', url: `/v2/${who.projectId}/cloudbackups/${(done.entities as { backup_id: string }).backup_id}/restore`, token: who.token, payload: { restore: { volume_id: target.id } } });
      assert.equal(rs.statusCode, 200, rs.body);
      assert.equal((await s.waitJob(who.token, who.projectId, (rs.json() as { job_id: string }).job_id)).status, 'SUCCESS');
      assert.equal(await sha256File(target.file), await sha256File(file));
    }
    for (const o of outcomes) t.diagnostic(o);
    assert.deepEqual(uncaught, [], 'uncaught exceptions');
  });

  it('a volley of connection kills through a backup and a restore: both end, nothing stays running, logins still work', { skip, timeout: 120_000 }, async (t) => {
    const s = svc!;
    const who = await s.login('admin', ADMIN_PASSWORD, 'admin');
    const { id: volId, file } = await adoptFile(who, 'volley', 32 * MiB, 3);
    const vol = { id: volId };
    const target = await adoptFile(who, 'volley-target', 32 * MiB, 4);
    const run = async (url: string, payload: Record<string, unknown>): Promise<Record<string, unknown>> => {
      // The request itself may meet a terminated connection: then it is answered cleanly and retried.
      for (let i = 0; ; i++) {
        const r = await s.req({ method: 'POST', url, token: who.token, payload });
        if (r.statusCode === 200) return waitJob(who, (r.json() as { job_id: string }).job_id);
        assert.equal(r.statusCode, 503, `answered ${r.statusCode}: ${r.body}`);
        assert.match(r.body, /connection was lost/);
        assert.ok(i < 20, r.body);
        await sleep(20);
      }
    };
    let stop = false;
    const volley = (async () => {
      while (!stop) {
        await terminate();
        await sleep(40);
      }
    })();
    try {
      const b = await run(`/v2/${who.projectId}/cloudbackups`, { backup: { volume_id: vol.id, name: 'volley' } });
      t.diagnostic(`backup under a volley of kills: ${String(b.status)} ${String(b.fail_reason ?? '')}`);
      if (b.status === 'SUCCESS') {
        const r = await run(`/v2/${who.projectId}/cloudbackups/${(b.entities as { backup_id: string }).backup_id}/restore`, { restore: { volume_id: target.id } });
        t.diagnostic(`restore under a volley of kills: ${String(r.status)} ${String(r.fail_reason ?? '')}`);
      }
    } finally {
      stop = true;
      await volley;
    }
    await settle();
    // The service answers and works: a login, a backup and a bit-identical restore.
    await s.login('admin', ADMIN_PASSWORD, 'admin');
    const calm = await run(`/v2/${who.projectId}/cloudbackups`, { backup: { volume_id: vol.id, name: 'calm' } });
    assert.equal(calm.status, 'SUCCESS', JSON.stringify(calm));
    const restored = await run(`/v2/${who.projectId}/cloudbackups/${(calm.entities as { backup_id: string }).backup_id}/restore`, { restore: { volume_id: target.id } });
    assert.equal(restored.status, 'SUCCESS', JSON.stringify(restored));
    assert.equal(await sha256File(target.file), await sha256File(file));
    t.diagnostic(`connections terminated in this file: ${killed}`);
    assert.deepEqual(uncaught, [], 'uncaught exceptions');
  });
});
