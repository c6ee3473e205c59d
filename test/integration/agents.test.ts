/**
 * Several hosts: one control plane (haven serve, HAVEN_LOCAL_AGENT=false) on PostgreSQL, two
 * `haven agent` processes with disjoint volume roots and data folders (hosts "alpha" and "beta"),
 * one S3 repository (OpenStack Swift's s3api). Every file operation of a volume runs on its host's
 * agent and never on the other; a backup taken on one host restores bit-identical onto the other's
 * volume; an agent killed mid-backup fails its job within the lease; a drained host gets no work.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freshDatabase } from '../helpers/postgres.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { SWIFT_BUCKET, SWIFT_CREDENTIALS, startSwift, swiftMissing, type SwiftS3 } from '../helpers/swift.ts';
import { ADMIN_PASSWORD, startService, type TestService } from '../helpers/service.ts';
import { MiB, overwrite, randomBytesSeeded, sha256File, TempDirs } from '../helpers/volumes.ts';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const LEASE_SECONDS = 4;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface AgentProc {
  host: string;
  roots: string;
  dataDir: string;
  child: ChildProcess;
  log: () => string;
}

describe('agents: two hosts, one control plane on PostgreSQL, an S3 repository', async () => {
  const db = await freshDatabase();
  const skip = 'skip' in db ? db.skip : skipOutsideCi(swiftMissing());
  const dbUrl = 'url' in db ? db.url : '';
  const temp = new TempDirs('haven-agents-');
  let swift: SwiftS3;
  let cp: TestService;
  let url = '';
  let admin: { token: string; projectId: string };
  const agents = new Map<string, AgentProc>();
  const tokenFiles = new Map<string, string>();
  let env: NodeJS.ProcessEnv = {};

  const startAgent = async (host: string): Promise<AgentProc> => {
    const prev = agents.get(host);
    const roots = prev?.roots ?? temp.make(`roots-${host}`);
    const dataDir = prev?.dataDir ?? temp.make(`data-${host}`);
    let out = '';
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'haven.js'), 'agent'], {
      env: { ...env, HAVEN_AGENT_TOKEN_FILE: tokenFiles.get(host)!, HAVEN_VOLUME_ROOTS: roots, HAVEN_DATA_DIR: dataDir, HAVEN_HOST_NAME: `${host}-ignored`, HAVEN_NBD_LISTEN: '127.0.0.1:0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const a: AgentProc = { host, roots, dataDir, child, log: () => out };
    agents.set(host, a);
    for (let i = 0; i < 400 && !out.includes('working for'); i++) {
      if (child.exitCode !== null) throw new Error(`agent ${host} exited: ${out}`);
      await sleep(50);
    }
    assert.match(out, new RegExp(`Haven agent of host ${host} working for`), out);
    return a;
  };

  const listAgents = async (): Promise<Record<string, unknown>[]> => {
    const r = await cp.req({ method: 'GET', url: '/haven/v1/agents', token: admin.token });
    assert.equal(r.statusCode, 200, r.body);
    return (r.json() as { agents: Record<string, unknown>[] }).agents;
  };

  /** Work the control plane queued, by host (the catalog's record of where each operation ran). */
  const workHosts = async (): Promise<{ host: string; kind: string; status: string; job_id: string | null }[]> =>
    cp.app.catalog.db.all('SELECT host, kind, status, job_id FROM agent_work ORDER BY created_at');

  before(async () => {
    if (skip) return;
    swift = await startSwift(temp);
    // S3 credentials from the environment, as the agents get them.
    process.env.AWS_ACCESS_KEY_ID = SWIFT_CREDENTIALS.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = SWIFT_CREDENTIALS.secretAccessKey;
    cp = await startService(temp, {
      catalogUrl: dbUrl, repositoryUrl: `s3://${SWIFT_BUCKET}/haven`, s3Endpoint: swift.endpoint, s3ConditionalWrites: false, localAgent: false, agentLeaseSeconds: LEASE_SECONDS, hostName: 'control',
    });
    await cp.app.server.listen({ host: '127.0.0.1', port: 0 });
    const addr = cp.app.server.server.address() as { port: number };
    url = `http://127.0.0.1:${addr.port}`;
    admin = await cp.login('admin', ADMIN_PASSWORD, 'admin');
    env = {
      PATH: process.env.PATH, HOME: process.env.HOME, HAVEN_CONTROL_URL: url, HAVEN_REPOSITORY_URL: `s3://${SWIFT_BUCKET}/haven`, HAVEN_S3_ENDPOINT: swift.endpoint, HAVEN_S3_CONDITIONAL_WRITES: 'false',
      AWS_ACCESS_KEY_ID: SWIFT_CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: SWIFT_CREDENTIALS.secretAccessKey, HAVEN_LOG_LEVEL: 'info', HAVEN_JOB_CONCURRENCY: '2',
    };
    const secrets = temp.make('secrets');
    for (const host of ['alpha', 'beta']) {
      // Tokens through the admin API (the CLI's `haven agent token create` is tested below).
      const t = await cp.req({ method: 'POST', url: '/haven/v1/agents/tokens', token: admin.token, payload: { host } });
      assert.equal(t.statusCode, 201, t.body);
      const file = path.join(secrets, `${host}.token`);
      await fs.writeFile(file, `${(t.json() as { agent_token: { token: string } }).agent_token.token}\n`, { mode: 0o600 });
      tokenFiles.set(host, file);
      await startAgent(host);
    }
  });

  after(async () => {
    if (skip) return;
    for (const a of agents.values()) a.child.kill('SIGKILL');
    await cp?.close();
    await swift?.close();
    if ('drop' in db) await db.drop();
    temp.cleanup();
  });

  it('lists both agents online with their roots; the token is checked', { skip }, async () => {
    const list = await listAgents();
    assert.deepEqual(list.map((a) => [a.host, a.online, a.draining, a.embedded]), [['alpha', true, false, false], ['beta', true, false, false]]);
    assert.deepEqual(list.find((a) => a.host === 'alpha')!.volume_roots, [agents.get('alpha')!.roots]);
    // No token, a bad token, a user's token: 401, nothing registered.
    for (const headers of [{}, { authorization: 'Bearer hvagent_00000000000000000000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }, { authorization: `Bearer ${admin.token}` }]) {
      const r = await cp.req({ method: 'POST', url: '/haven/v1/agent/register', headers, payload: { version: '0', volume_roots: [], capabilities: [] } });
      assert.equal(r.statusCode, 401, r.body);
    }
    // A project member sees no agents.
    const member = await cp.tenant('agents-member');
    assert.equal((await cp.req({ method: 'GET', url: '/haven/v1/agents', token: member.token })).statusCode, 403);
    assert.equal((await listAgents()).length, 2);
  });

  it('every volume operation runs on its host: adoption checks that host\'s roots; backups and a cross-host restore are bit-identical', { skip, timeout: 240_000 }, async () => {
    const alpha = agents.get('alpha')!;
    const beta = agents.get('beta')!;
    const file = path.join(alpha.roots, 'disk-a.img');
    await fs.writeFile(file, Buffer.alloc(0));
    await fs.truncate(file, 64 * MiB);
    await overwrite(file, 3 * MiB, randomBytesSeeded(5 * MiB, 7));
    const manage = (host: string, p: string) => cp.req({ method: 'POST', url: `/v3/${admin.projectId}/os-volume-manage`, token: admin.token, payload: { volume: { host: `${host}@adopted#pool`, ref: { 'source-name': p }, name: path.basename(p) } } });
    // beta's agent checks beta's roots: alpha's file is not under them.
    const refused = await manage('beta', file);
    assert.equal(refused.statusCode, 400, refused.body);
    assert.match(refused.body, /not under a volume root of host/);
    assert.equal((await cp.req({ method: 'GET', url: `/v3/${admin.projectId}/volumes`, token: admin.token })).json().volumes.length, 0);
    const adopted = await manage('alpha', file);
    assert.equal(adopted.statusCode, 202, adopted.body);
    const volA = (adopted.json() as { volume: { id: string; 'os-vol-host-attr:host': string } }).volume;
    assert.match(volA['os-vol-host-attr:host'], /^alpha@/);

    // A created volume lands on the host with fewer volumes: beta; its file is in beta's data folder.
    const volB = await cp.createVolume(admin, 'copy-on-beta', 1);
    const bPath = await cp.volumePath(volB.id);
    assert.ok(bPath.startsWith(beta.dataDir), bPath);
    assert.equal((await cp.app.catalog.volumes.getVolumeById(volB.id))!.host, 'beta');

    const want = await sha256File(file);
    const b = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups`, token: admin.token, payload: { backup: { volume_id: volA.id, name: 'on-alpha' } } });
    assert.equal(b.statusCode, 200, b.body);
    const job = await cp.waitJob(admin.token, admin.projectId, (b.json() as { job_id: string }).job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    const backupId = (job.entities as { backup_id: string }).backup_id;

    // Cross-host restore: alpha's backup onto beta's volume.
    const r = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups/${backupId}/restore`, token: admin.token, payload: { restore: { volume_id: volB.id } } });
    assert.equal(r.statusCode, 200, r.body);
    assert.equal((await cp.waitJob(admin.token, admin.projectId, (r.json() as { job_id: string }).job_id)).status, 'SUCCESS');
    const restored = Buffer.alloc(64 * MiB);
    const fh = await fs.open(bPath, 'r');
    await fh.read(restored, 0, restored.length, 0);
    await fh.close();
    const { createHash } = await import('node:crypto');
    assert.equal(createHash('sha256').update(restored).digest('hex'), want);

    // Where each operation ran: the backup on alpha, the volume's file and the restore on beta.
    const work = await workHosts();
    assert.deepEqual(work.filter((w) => w.status === 'done').map((w) => `${w.kind}@${w.host}`), ['inspectAdoption@alpha', 'createVolumeFile@beta', 'backup@alpha', 'restore@beta']);
    assert.match(alpha.log(), /"kind":"backup".*"msg":"work done"/);
    assert.doesNotMatch(beta.log(), /"kind":"backup"/);
    assert.match(beta.log(), /"kind":"restore".*"msg":"work done"/);
  });

  it('a live restore onto a volume of an agent\'s host is served by that agent at once; the copy there keeps the user\'s writes', { skip, timeout: 240_000 }, async () => {
    const alpha = agents.get('alpha')!;
    const file = path.join(alpha.roots, 'disk-live.img');
    await fs.writeFile(file, Buffer.alloc(0));
    await fs.truncate(file, 32 * MiB);
    await overwrite(file, MiB, randomBytesSeeded(6 * MiB, 21));
    const adopted = await cp.req({ method: 'POST', url: `/v3/${admin.projectId}/os-volume-manage`, token: admin.token, payload: { volume: { host: 'alpha@adopted#pool', ref: { 'source-name': file }, name: 'disk-live' } } });
    assert.equal(adopted.statusCode, 202, adopted.body);
    const src = (adopted.json() as { volume: { id: string } }).volume.id;
    const b = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups`, token: admin.token, payload: { backup: { volume_id: src, name: 'live-src' } } });
    const bj = await cp.waitJob(admin.token, admin.projectId, (b.json() as { job_id: string }).job_id);
    assert.equal(bj.status, 'SUCCESS', JSON.stringify(bj));
    const backupId = (bj.entities as { backup_id: string }).backup_id;
    const target = await cp.createVolume(admin, 'live-target', 1);
    const row = (await cp.app.catalog.volumes.getVolumeById(target.id))!;
    assert.ok(row.host === 'alpha' || row.host === 'beta', String(row.host));
    const r = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups/${backupId}/restore`, token: admin.token, payload: { restore: { volume_id: target.id, live: true } } });
    assert.equal(r.statusCode, 200, r.body);
    const body = r.json() as { job_id: string; export: { uri: string } };
    // Served by the volume's agent (its own listener), with the backup's bytes at once.
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const run = promisify(execFile);
    const backedUp = path.join(temp.make('live-exp'), 'src.raw');
    await run('cp', ['--sparse=always', file, backedUp]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', backedUp, body.export.uri]);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 2000 3000', '-c', 'flush', body.export.uri]);
    await overwrite(backedUp, 2000, Buffer.alloc(3000, 0x5a));
    const job = await cp.waitJob(admin.token, admin.projectId, body.job_id);
    assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
    // The volume (1 GB: the backup, then zeros) on its host is the backup plus the write.
    const vf = await fs.open(row.path, 'r');
    const got = Buffer.alloc(32 * MiB);
    await vf.read(got, 0, got.length, 0);
    const tail = Buffer.alloc(MiB);
    await vf.read(tail, 0, tail.length, 512 * MiB);
    await vf.close();
    assert.ok(got.equals(await fs.readFile(backedUp)), 'the live-restored volume is the backup plus the user\'s write');
    assert.ok(tail.equals(Buffer.alloc(MiB)), 'past the backup the volume reads as zeros');
    const d = await cp.req({ method: 'DELETE', url: `/v2/${admin.projectId}/cloudbackups/${backupId}/export`, token: admin.token });
    assert.equal(d.statusCode, 204, d.body);
    await assert.rejects(run('nbdinfo', [body.export.uri]));
    const work = (await workHosts()).filter((w) => ['openLive', 'liveCopy', 'endLive'].includes(w.kind));
    assert.deepEqual(work.map((w) => `${w.kind}@${w.host}:${w.status}`), [`openLive@${row.host}:done`, `liveCopy@${row.host}:done`, `endLive@${row.host}:done`]);
  });

  it('an agent killed mid-backup fails the job within its lease; back again, the next backup restores bit-identical on the other host', { skip, timeout: 240_000 }, async () => {
    const alpha = agents.get('alpha')!;
    const file = path.join(alpha.roots, 'disk-big.img');
    await fs.writeFile(file, Buffer.alloc(0));
    await fs.truncate(file, 1024 * MiB);
    for (let i = 0; i < 8; i++) await overwrite(file, i * 128 * MiB, randomBytesSeeded(96 * MiB, 100 + i));
    const m = await cp.req({ method: 'POST', url: `/v3/${admin.projectId}/os-volume-manage`, token: admin.token, payload: { volume: { host: 'alpha', ref: { 'source-name': file }, name: 'big' } } });
    assert.equal(m.statusCode, 202, m.body);
    const vol = (m.json() as { volume: { id: string } }).volume;
    const b = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups`, token: admin.token, payload: { backup: { volume_id: vol.id, name: 'killed' } } });
    const jobId = (b.json() as { job_id: string }).job_id;
    // Wait until alpha reports progress on it, then kill it.
    for (let i = 0; i < 600; i++) {
      const running = (await listAgents()).find((a) => a.host === 'alpha')!.running_jobs as { job_id: string; progress_done: number }[];
      if (running.some((w) => w.job_id === jobId && w.progress_done > 0)) break;
      await sleep(50);
    }
    alpha.child.kill('SIGKILL');
    const killedAt = Date.now();
    const job = await cp.waitJob(admin.token, admin.projectId, jobId);
    const took = (Date.now() - killedAt) / 1000;
    assert.equal(job.status, 'FAIL', JSON.stringify(job));
    assert.match(String(job.fail_reason), /stopped renewing its lease/);
    assert.ok(took < LEASE_SECONDS * 3 + 5, `failed ${took} s after the kill`);
    const failed = (await cp.req({ method: 'GET', url: `/v3/${admin.projectId}/backups/detail`, token: admin.token })).json().backups.find((x: { name: string }) => x.name === 'killed');
    assert.equal(failed.status, 'error');
    // While alpha is gone, its volumes' work is refused at once (503), not queued forever.
    assert.equal((await listAgents()).find((a) => a.host === 'alpha')!.online, false);
    const refused = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups`, token: admin.token, payload: { backup: { volume_id: vol.id, name: 'while-away' } } });
    if (refused.statusCode === 200) assert.equal((await cp.waitJob(admin.token, admin.projectId, (refused.json() as { job_id: string }).job_id)).status, 'FAIL');

    // alpha comes back; the next backup succeeds and restores bit-identical onto a volume on beta.
    await startAgent('alpha');
    const want = await sha256File(file);
    const b2 = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups`, token: admin.token, payload: { backup: { volume_id: vol.id, name: 'after' } } });
    assert.equal(b2.statusCode, 200, b2.body);
    const j2 = await cp.waitJob(admin.token, admin.projectId, (b2.json() as { job_id: string }).job_id);
    assert.equal(j2.status, 'SUCCESS', JSON.stringify(j2));
    const dst = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/volumes`, token: admin.token, payload: { volume: { size: 1, name: 'big-copy' } } });
    const dstVol = (dst.json() as { volume: { id: string } }).volume;
    assert.equal((await cp.app.catalog.volumes.getVolumeById(dstVol.id))!.host, 'beta');
    const r = await cp.req({ method: 'POST', url: `/v2/${admin.projectId}/cloudbackups/${(j2.entities as { backup_id: string }).backup_id}/restore`, token: admin.token, payload: { restore: { volume_id: dstVol.id } } });
    assert.equal((await cp.waitJob(admin.token, admin.projectId, (r.json() as { job_id: string }).job_id)).status, 'SUCCESS');
    assert.equal(await sha256File(await cp.volumePath(dstVol.id)), want);
  });

  it('a drained host gets no new work and no new volumes; undrained, it works again', { skip, timeout: 120_000 }, async () => {
    const d = await cp.req({ method: 'POST', url: '/haven/v1/agents/beta/drain', token: admin.token });
    assert.equal(d.statusCode, 200, d.body);
    assert.equal((d.json() as { agent: { draining: boolean } }).agent.draining, true);
    // New volumes go to alpha only.
    const v = await cp.createVolume(admin, 'while-beta-drained', 1);
    assert.equal((await cp.app.catalog.volumes.getVolumeById(v.id))!.host, 'alpha');
    // Work for beta's volumes is refused with the reason.
    const betaVol = (await cp.app.catalog.db.all<{ id: string }>("SELECT id FROM volumes WHERE host = 'beta' AND adopted = 0 ORDER BY created_at LIMIT 1"))[0]!;
    const del = await cp.req({ method: 'DELETE', url: `/v2/${admin.projectId}/volumes/${betaVol.id}`, token: admin.token });
    assert.equal(del.statusCode, 503, del.body);
    assert.match(del.body, /drained/);
    assert.equal((await cp.app.catalog.volumes.getVolumeById(betaVol.id))!.status, 'available', 'refused: the volume is as it was');
    assert.equal((await cp.req({ method: 'POST', url: '/haven/v1/agents/beta/undrain', token: admin.token })).statusCode, 200);
    assert.equal((await cp.req({ method: 'POST', url: '/haven/v1/agents/nowhere/drain', token: admin.token })).statusCode, 404);
  });

  it('haven agent token create --host makes a token the API accepts', { skip, timeout: 60_000 }, async () => {
    const out = await new Promise<string>((resolve, reject) => {
      let s = '';
      const c = spawn(process.execPath, [path.join(ROOT, 'bin', 'haven.js'), 'agent', 'token', 'create', '--host', 'gamma', '--json'], { env: { ...env, HAVEN_CATALOG_URL: dbUrl }, stdio: ['ignore', 'pipe', 'inherit'] });
      c.stdout!.on('data', (d: Buffer) => (s += d.toString()));
      c.on('exit', (code) => (code === 0 ? resolve(s) : reject(new Error(`exit ${code}`))));
    });
    const t = JSON.parse(out) as { host: string; token: string };
    assert.equal(t.host, 'gamma');
    const r = await cp.req({ method: 'POST', url: '/haven/v1/agent/register', headers: { authorization: `Bearer ${t.token}` }, payload: { version: 'test', volume_roots: [], capabilities: ['raw'] } });
    assert.equal(r.statusCode, 200, r.body);
    assert.equal((r.json() as { host: string }).host, 'gamma');
  });

  it('an agent sees and ends only its own host\'s work, only while its session holds it; a restarted agent abandons its old work at once', { skip, timeout: 60_000 }, async () => {
    const mk = await cp.req({ method: 'POST', url: '/haven/v1/agents/tokens', token: admin.token, payload: { host: 'delta' } });
    const auth = { authorization: `Bearer ${(mk.json() as { agent_token: { token: string } }).agent_token.token}` };
    const call = (url: string, payload: object) => cp.req({ method: 'POST', url, headers: auth, payload });
    const reg = async (): Promise<string> => {
      const r = await call('/haven/v1/agent/register', { version: 'test', volume_roots: [], capabilities: ['raw'] });
      assert.equal(r.statusCode, 200, r.body);
      return (r.json() as { session: string }).session;
    };
    const s1 = await reg();
    // Work of another host (one with no agent running, so nobody else takes it) is neither handed out nor ended nor renewed by delta.
    const now = Date.now();
    await cp.app.catalog.agents.insertWork({ id: 'work-of-alpha', host: 'epsilon', jobId: null, kind: 'removeSnapshotFile', request: { path: '/nowhere' }, createdAt: now });
    await cp.app.catalog.agents.insertWork({ id: 'work-of-delta', host: 'delta', jobId: null, kind: 'removeSnapshotFile', request: { path: '/nowhere' }, createdAt: now });
    const claimed = await call('/haven/v1/agent/claim', { session: s1, slots: 8, quick_slots: 4 });
    assert.deepEqual((claimed.json() as { work: { id: string }[] }).work.map((w) => w.id), ['work-of-delta']);
    const foreign = await call('/haven/v1/agent/work/work-of-alpha/result', { session: s1, ok: true, result: null });
    assert.equal(foreign.statusCode, 409, foreign.body);
    const beat = await call('/haven/v1/agent/heartbeat', { session: s1, work: [{ id: 'work-of-alpha', done: 1, total: 2 }, { id: 'work-of-delta', done: 1, total: 2 }] });
    assert.equal(beat.statusCode, 200, beat.body);
    assert.deepEqual((beat.json() as { stop: { id: string }[] }).stop.map((x) => x.id), ['work-of-alpha']);
    const alphaWork = await cp.app.catalog.agents.getWork('work-of-alpha');
    assert.deepEqual([alphaWork!.status, alphaWork!.session, alphaWork!.progressDone], ['queued', null, 0]);
    assert.equal((await cp.app.catalog.agents.getWork('work-of-delta'))!.progressDone, 1);
    // Bad input is a 400 in the envelope, never a 500; a wrong session is refused.
    assert.equal((await call('/haven/v1/agent/claim', { session: 'nope', slots: 1 })).statusCode, 400);
    assert.equal((await call('/haven/v1/agent/heartbeat', { session: '0'.repeat(32), work: [] })).statusCode, 409);
    // Another agent process for the same host, while this one is online: refused (one agent per host).
    const second = await call('/haven/v1/agent/register', { version: 'test', volume_roots: [], capabilities: ['raw'], instance: 'a'.repeat(32) });
    assert.equal(second.statusCode, 409, second.body);
    assert.match(second.body, /another agent of host delta is online/);
    // The agent restarts: a new session; the old one's work fails now, with the reason, and its result is refused.
    const s2 = await reg();
    assert.notEqual(s2, s1);
    const abandoned = await cp.app.catalog.agents.getWork('work-of-delta');
    assert.equal(abandoned!.status, 'failed');
    assert.match(String(abandoned!.error?.message), /restarted before it finished/);
    assert.equal((await call('/haven/v1/agent/work/work-of-delta/result', { session: s1, ok: true, result: null })).statusCode, 409);
    assert.equal((await call('/haven/v1/agent/heartbeat', { session: s1, work: [] })).statusCode, 409, 'the old session is superseded');
    assert.equal((await cp.app.catalog.agents.getWork('work-of-delta'))!.status, 'failed');
    await cp.app.catalog.db.run("DELETE FROM agent_work WHERE id = 'work-of-alpha'");
  });
});
