/**
 * SIGKILL of a real `haven serve` process at seeded random points of its backup, restore, delete
 * and GC work, then a restart on the same data folder. After every kill:
 * - every job ends (SUCCESS, or FAIL with a reason) and no backup or volume stays
 *   creating/restoring/deleting: the catalog is polled until it settles (bounded);
 * - the service is stopped (SIGTERM, which waits for its background GC) and `haven verify` on the
 *   repository is clean;
 * - the next backup of the volume (or, after a killed restore, the restore itself again) restores
 *   bit-identical (sha256 equal).
 * Kill points: a delay drawn from a seeded RNG (HAVEN_FAULT_SEED, default below) within the job's
 * duration measured on this machine, counted from the job's "job started" log line; GC kill points
 * count from the moment its lock appears in the repository. At the end every backup killed or
 * failed is deleted and the repository holds one volume's worth of packs, no lock and no orphan.
 */
import assert from 'node:assert/strict';
import { existsSync, promises as fs, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { listFilesRecursive, MiB, overwrite, Rng, sha256File, sleep, TempDirs, writeRandomFile } from '../helpers/volumes.ts';
import { readCatalog, ServeProcess, verifyRepo, type Who } from './serve-process.ts';

const SEED = Number(process.env.HAVEN_FAULT_SEED ?? 20261202);
const VOLUME_BYTES = 16 * MiB;
const BACKUP_KILLS = 3;
const RESTORE_KILLS = 3;
const DELETE_KILLS = 2;
const GC_KILLS = 2;

describe('SIGKILL of haven serve during jobs', () => {
  const temp = new TempDirs('haven-faults-kill-');
  const dataDir = temp.make('data');
  const roots = temp.make('roots');
  const repoDir = path.join(dataDir, 'repository');
  const vol = path.join(roots, 'disk.img');
  const target = path.join(roots, 'target.img');
  const env = { HAVEN_DATA_DIR: dataDir, HAVEN_VOLUME_ROOTS: roots, HAVEN_JOB_CONCURRENCY: '2' };
  const rng = new Rng(SEED);
  const log: string[] = [];
  const t0 = Date.now();
  const note = (line: string): void => {
    log.push(line);
    trace(line);
  };
  /** HAVEN_FAULT_DEBUG=1: each step with its time, as it happens. */
  const trace = (what: string): void => {
    if (process.env.HAVEN_FAULT_DEBUG) process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${what}\n`);
  };
  let svc: ServeProcess | undefined;
  let who: Who;
  let volumeId = '';
  let targetId = '';
  let volumeSha = '';
  let seed = SEED;
  after(async () => {
    await svc?.kill();
    temp.cleanup();
  });

  const start = async (): Promise<ServeProcess> => {
    trace('start');
    svc = await ServeProcess.start(env);
    who = await svc.login();
    trace('started');
    return svc;
  };

  /** New content in about half of the volume's 1 MiB regions, so a backup writes new packs and the last one's packs get dead space. */
  const mutate = async (): Promise<void> => {
    const r = new Rng(++seed);
    for (let off = 0; off < VOLUME_BYTES; off += MiB) if (r.int(2) === 0) await overwrite(vol, off, r.bytes(MiB));
    volumeSha = await sha256File(vol);
  };

  /** Polls the catalog (read directly) until no job is queued or running and no backup or volume is busy; bounded. */
  const settle = async (): Promise<ReturnType<typeof readCatalog>> => {
    trace('settle');
    const until = Date.now() + 90_000;
    for (;;) {
      const c = readCatalog(dataDir);
      const busyJobs = c.jobs.filter((j) => j.status === 'INIT' || j.status === 'RUNNING');
      const busyBackups = c.backups.filter((b) => ['creating', 'deleting', 'restoring'].includes(b.status));
      const busyVolumes = c.volumes.filter((v) => ['creating', 'deleting', 'restoring-backup'].includes(v.status));
      if (!busyJobs.length && !busyBackups.length && !busyVolumes.length) {
        for (const j of c.jobs.filter((x) => x.status === 'FAIL')) assert.ok(j.fail_reason && j.fail_reason.length > 10, `job ${j.id} failed without a reason`);
        for (const b of c.backups.filter((x) => x.status === 'error')) assert.ok(b.fail_reason, `backup ${b.id} is error without a reason`);
        assert.deepEqual(c.jobs.filter((j) => !['SUCCESS', 'FAIL'].includes(j.status)), []);
        return c;
      }
      if (Date.now() > until) assert.fail(`still busy after 90 s: ${JSON.stringify({ busyJobs, busyBackups, busyVolumes })}`);
      await sleep(50);
    }
  };

  /** `haven verify` on the repository while no process uses it (the service was killed or stopped): clean. */
  const verifyDown = async (what: string): Promise<{ id: string }[]> => {
    assert.ok(svc!.exited);
    trace('verify');
    const v = await verifyRepo(repoDir);
    assert.equal(v.code, 0, `verify after ${what}: ${v.raw}`);
    assert.equal(v.report.ok, true, `verify after ${what}: ${v.raw}`);
    return v.report.backups;
  };

  /** Deletes every backup but `keep` (each delete job must succeed), so verify stays quick. */
  const prune = async (keep: string): Promise<void> => {
    for (const b of readCatalog(dataDir).backups) {
      if (b.id !== keep) assert.equal((await svc!.waitJob(who, await svc!.startDelete(who, b.id))).status, 'SUCCESS');
    }
  };

  /** After a kill: verify, restart, settle; returns the settled catalog. */
  const recover = async (what: string): Promise<ReturnType<typeof readCatalog>> => {
    await verifyDown(what);
    await start();
    return settle();
  };

  /** Backs up the (changed) volume; returns the backup id. */
  const backup = async (what: string): Promise<string> => {
    await mutate();
    trace('backup');
    const job = await svc!.waitJob(who, await svc!.startBackup(who, volumeId, `after-${log.length}`));
    assert.equal(job.status, 'SUCCESS', `backup after ${what}: ${JSON.stringify(job)}`);
    return (job.entities as { backup_id: string }).backup_id;
  };

  /** Backs up the (changed) volume and restores it onto the target: bit-identical. Returns the backup id. */
  const backupAndRestore = async (what: string): Promise<string> => {
    const backupId = await backup(what);
    trace('restore');
    const r = await svc!.waitJob(who, await svc!.startRestore(who, backupId, targetId));
    assert.equal(r.status, 'SUCCESS', `restore after ${what}: ${JSON.stringify(r)}`);
    assert.equal(await sha256File(target), volumeSha, `restore after ${what} is not bit-identical`);
    trace('restored');
    return backupId;
  };

  /** Kills the service `delayMs` after the "job started" line of `jobId`; says whether the job was still running. */
  const killDuring = async (jobId: string, delayMs: number): Promise<boolean> => {
    const s = svc!;
    await s.waitLog((l) => l.msg === 'job started' && l.jobId === jobId);
    await sleep(delayMs);
    const finished = s.logs.some((l) => (l.msg === 'job succeeded' || l.msg === 'job failed') && l.jobId === jobId);
    await s.kill();
    trace(`killed ${delayMs} ms after job ${jobId} started`);
    return !finished;
  };

  const gcLocks = (): string[] => (existsSync(path.join(repoDir, 'locks')) ? readdirSync(path.join(repoDir, 'locks')).filter((n) => n.startsWith('gc-')) : []);

  /** Waits (bounded) for a GC lock to appear; returns false when none did (the GC ran too quickly to see, or not at all). */
  const waitGcLock = async (ms: number): Promise<boolean> => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (gcLocks().length) return true;
      await sleep(1);
    }
    return false;
  };

  const durations = { backupMs: 0, restoreMs: 0, gcMs: 0 };
  const midway = { backup: 0, restore: 0, delete: 0, gc: 0 };
  let killPoints = 0;

  it('setup: adopts a volume and a target, measures a backup, a restore and a GC here', { timeout: 120_000 }, async () => {
    await writeRandomFile(vol, VOLUME_BYTES, SEED);
    await writeRandomFile(target, VOLUME_BYTES, SEED + 1);
    await start();
    volumeId = await svc!.adopt(who, vol, 'disk');
    targetId = await svc!.adopt(who, target, 'target');
    const first = await backupAndRestore('setup');
    durations.restoreMs = Number(svc!.logs.find((l) => l.msg === 'job succeeded' && l.jobType === 'bksRestoreBackup')?.durationMs);
    // A second backup sharing about half the chunks (as the killed ones will), then deleting the
    // first: GC rewrites its pack.
    await backup('setup 2');
    durations.backupMs = Number(svc!.logs.filter((l) => l.msg === 'job succeeded' && l.jobType === 'bksCreateBackup').at(-1)?.durationMs);
    const del = await svc!.startDelete(who, first);
    const seen = await waitGcLock(30_000);
    const gcStart = Date.now();
    while (gcLocks().length) await sleep(2);
    durations.gcMs = seen ? Date.now() - gcStart : 50;
    assert.equal((await svc!.waitJob(who, del)).status, 'SUCCESS');
    await settle();
    await svc!.stop();
    await verifyDown('setup');
    await start();
    assert.ok(durations.backupMs > 0 && durations.restoreMs > 0, JSON.stringify(durations));
    note(`seed ${SEED}; measured: backup ${durations.backupMs} ms, restore ${durations.restoreMs} ms, gc ${durations.gcMs} ms`);
  });

  it(`backups killed at ${BACKUP_KILLS} points: each ends, verify is clean, the next backup restores bit-identical`, { timeout: 180_000 }, async () => {
    for (let k = 0; k < BACKUP_KILLS; k++) {
      // Stratified: kill k falls in slice k of [5 %, 85 %] of the measured duration; a job that
      // outran the measurement (the machine was less busy) is tried again, earlier.
      const fraction = 0.05 + 0.8 * ((k + rng.int(1000) / 1000) / BACKUP_KILLS);
      for (let attempt = 0; attempt < 3; attempt++) {
        await mutate();
        const jobId = await svc!.startBackup(who, volumeId, `killed-${k}`);
        const delay = Math.round(durations.backupMs * fraction * 0.5 ** attempt);
        const running = await killDuring(jobId, delay);
        killPoints++;
        if (running) midway.backup++;
        const c = await recover(`backup kill ${k}`);
        const job = c.jobs.find((j) => j.id === jobId)!;
        note(`backup kill ${k}.${attempt}: after ${delay} ms: ${running ? 'mid-job' : 'job had finished'}; after restart the job is ${job.status}${job.fail_reason ? ` (${job.fail_reason})` : ''}`);
        if (running && job.status === 'FAIL') assert.match(String(job.fail_reason), /interrupted/);
        await prune(await backupAndRestore(`backup kill ${k}`));
        if (running) break;
      }
    }
    assert.ok(midway.backup >= BACKUP_KILLS - 1, `only ${midway.backup} kills landed inside a backup:\n${log.join('\n')}`);
  });

  it(`restores killed at ${RESTORE_KILLS} points: each ends, the backup stays available, restoring again is bit-identical`, { timeout: 180_000 }, async () => {
    // The latest backup holds the volume as it is now.
    const latest = readCatalog(dataDir).backups.filter((b) => b.status === 'available').at(-1)!.id;
    for (let k = 0; k < RESTORE_KILLS; k++) {
      const fraction = 0.05 + 0.8 * ((k + rng.int(1000) / 1000) / RESTORE_KILLS);
      for (let attempt = 0; attempt < 3; attempt++) {
        await writeRandomFile(target, VOLUME_BYTES, SEED + 100 + k); // something else on the target first
        const jobId = await svc!.startRestore(who, latest, targetId);
        const delay = Math.round(durations.restoreMs * fraction * 0.5 ** attempt);
        const running = await killDuring(jobId, delay);
        killPoints++;
        if (running) midway.restore++;
        const c = await recover(`restore kill ${k}`);
        const job = c.jobs.find((j) => j.id === jobId)!;
        const backup = c.backups.find((b) => b.id === latest)!;
        const volume = c.volumes.find((v) => v.id === targetId)!;
        note(`restore kill ${k}.${attempt}: after ${delay} ms: ${running ? 'mid-job' : 'job had finished'}; job ${job.status}, backup ${backup.status}, volume ${volume.status}`);
        assert.equal(backup.status, 'available', 'an interrupted restore leaves its backup available');
        if (job.status === 'FAIL') assert.equal(volume.status, 'error_restoring');
        const again = await svc!.waitJob(who, await svc!.startRestore(who, latest, targetId));
        assert.equal(again.status, 'SUCCESS', JSON.stringify(again));
        assert.equal(await sha256File(target), volumeSha, `restore after restore kill ${k} is not bit-identical`);
        if (running) break;
      }
    }
    assert.ok(midway.restore >= RESTORE_KILLS - 1, `only ${midway.restore} kills landed inside a restore:\n${log.join('\n')}`);
  });

  it(`deletes killed at ${DELETE_KILLS} points and their GC at ${GC_KILLS} points: each ends, verify is clean, the next backup restores bit-identical`, { timeout: 180_000 }, async () => {
    for (let k = 0; k < DELETE_KILLS + GC_KILLS; k++) {
      const inGc = k >= DELETE_KILLS;
      // The latest backup and a newer one sharing about half its chunks: deleting the older leaves its pack half dead.
      const older = readCatalog(dataDir).backups.filter((b) => b.status === 'available').at(-1)!.id;
      await backup(`delete setup ${k}`);
      const jobId = await svc!.startDelete(who, older);
      let what: string;
      if (!inGc) {
        // A delete takes a few ms: kill at its start, or up to 30 ms into it.
        const running = await killDuring(jobId, k === 0 ? 0 : rng.int(30));
        killPoints++;
        if (running) midway.delete++;
        what = running ? 'mid-job' : 'job had finished';
      } else {
        const seen = await waitGcLock(30_000);
        const delay = Math.round(durations.gcMs * ((k - DELETE_KILLS + rng.int(1000) / 1000) / GC_KILLS) * 0.6);
        await sleep(delay);
        const running = seen && gcLocks().length > 0;
        await svc!.kill();
        killPoints++;
        if (running) midway.gc++;
        what = running ? `GC running, ${delay} ms after its lock appeared` : 'GC had finished';
      }
      const c = await recover(`${inGc ? 'gc' : 'delete'} kill ${k}`);
      const job = c.jobs.find((j) => j.id === jobId)!;
      const left = c.backups.find((b) => b.id === older);
      note(`${inGc ? 'gc' : 'delete'} kill ${k}: ${what}; delete job ${job.status}, backup ${left ? left.status : 'gone'}`);
      // An interrupted delete leaves the backup error (or available again once verified whole): deleting it again works.
      if (left) assert.ok(['error', 'available'].includes(left.status), left.status);
      await prune(await backupAndRestore(`${inGc ? 'gc' : 'delete'} kill ${k}`));
    }
    assert.ok(midway.delete + midway.gc >= 2, `only ${midway.delete + midway.gc} kills landed inside a delete or GC:\n${log.join('\n')}`);
  });

  it('at the end: one backup left, verify clean, one volume of packs, no lock, no orphan', { timeout: 120_000 }, async (t) => {
    const c = await settle();
    const keep = c.backups.filter((b) => b.status === 'available').at(-1)!.id;
    await prune(keep);
    await settle();
    await svc!.stop(); // waits for the GC the deletes started
    const backups = await verifyDown('the last deletes');
    assert.deepEqual(backups.map((b) => b.id), [keep]);
    const files = (await listFilesRecursive(repoDir)).filter((f) => !path.basename(f).startsWith('.tmp-'));
    assert.deepEqual(files.filter((f) => f.startsWith(`locks${path.sep}`)), []);
    assert.deepEqual(files.filter((f) => f.startsWith(`indexes${path.sep}`)).map((f) => f.split(path.sep)[1]), [keep]);
    let packBytes = 0;
    for (const f of files.filter((x) => x.startsWith(`packs${path.sep}`))) packBytes += (await fs.stat(path.join(repoDir, f))).size;
    assert.ok(packBytes < VOLUME_BYTES * 1.3, `${packBytes} bytes of packs for one ${VOLUME_BYTES}-byte backup`);
    note(`${killPoints} kills; mid-job: backup ${midway.backup}/${BACKUP_KILLS}, restore ${midway.restore}/${RESTORE_KILLS}, delete ${midway.delete}/${DELETE_KILLS}, gc ${midway.gc}/${GC_KILLS}; packs at the end: ${packBytes} bytes`);
    for (const line of log) t.diagnostic(line);
  });
});
