/**
 * The whole engine on the S3 object store, against real S3 HTTP servers (s3rver, and OpenStack
 * Swift's s3api, which checks signatures and has no conditional writes): full and incremental
 * backups deduplicate, restores are bit-identical (sparse), verify finds a flipped byte, delete + gc
 * give the space back while the other backup still restores; the CLI works on an s3:// repository
 * as on a folder, and on Swift creates it with HAVEN_S3_CONDITIONAL_WRITES=false. The crash test
 * runs on s3rver only: what it proves is Haven's write order, not the server's.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { collectGarbage, deleteBackup } from '../../src/engine/garbage-collector.ts';
import { Repository } from '../../src/engine/repository.ts';
import { BackupEngine } from '../../src/services/backup-engine.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { collectKeys, type ObjectStore } from '../../src/storage/object-store.ts';
import { backupFile, engineTestContext, restoreTo, TEST_PASSWORD } from '../helpers/repo.ts';
import { startS3, type TestS3 } from '../helpers/s3-server.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { startSwift, swiftMissing } from '../helpers/swift.ts';
import { allocatedBytes, cliErrorMessage, collectCli, makeSparseFile, MiB, overwrite, randomBytesSeeded, runCli, runCliJson, sha256File, sleep, spawnCli, TEST_KDF, type TempDirs, writeVolume } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-s3repo-');

const SERVERS: { name: string; start: (t: TempDirs) => Promise<TestS3>; skip: string | false }[] = [
  { name: 's3rver', start: (t) => startS3(t), skip: false },
  { name: 'swift', start: startSwift, skip: skipOutsideCi(swiftMissing()) },
];

async function storedBytes(store: ObjectStore): Promise<number> {
  return (await collectKeys(store, '')).reduce((n, o) => n + o.sizeBytes, 0);
}

for (const server of SERVERS) {
  describe(`a repository in S3 (${server.name})`, { skip: server.skip }, () => {
    let s3: TestS3;
    before(async () => {
      s3 = await server.start(temp);
    });
    after(() => s3?.close());

    it('backs up, deduplicates, restores bit-identical, verifies, deletes and collects garbage', async () => {
      const dir = temp.make();
      const store = s3.store('engine');
      const repo = await Repository.init(store, { password: TEST_PASSWORD, kdf: TEST_KDF, packTargetBytes: 4 * MiB });
      // Two volumes with data between holes; b shares a's first 8 MiB.
      const shared = randomBytesSeeded(8 * MiB, 1);
      const a = path.join(dir, 'a.img');
      const b = path.join(dir, 'b.img');
      await makeSparseFile(a, 64 * MiB, [{ offset: 0, data: shared }, { offset: 40 * MiB, data: randomBytesSeeded(4 * MiB, 2) }]);
      await makeSparseFile(b, 32 * MiB, [{ offset: 0, data: shared }, { offset: 20 * MiB, data: randomBytesSeeded(2 * MiB, 3) }]);
      const fullA = await backupFile(repo, a, 'a', { pool });
      assert.equal(fullA.stats.newBytes, 12 * MiB);
      const fullB = await backupFile(repo, b, 'b', { pool });
      assert.equal(fullB.stats.newBytes, 2 * MiB, 'the shared 8 MiB are stored once');
      await overwrite(a, 41 * MiB, randomBytesSeeded(MiB, 4));
      const incrA = await backupFile(repo, a, 'a', { pool, previous: fullA.manifest });
      assert.equal(incrA.stats.newBytes, MiB);
      assert.equal(incrA.manifest.kind, 'incremental');

      // Opened afresh, as another host would.
      const other = await Repository.open(s3.store('engine'), { password: TEST_PASSWORD });
      for (const [m, file] of [[incrA.manifest, a], [fullB.manifest, b]] as const) {
        const target = path.join(dir, `restored-${m.id}.img`);
        await restoreTo(other, m.id, target, pool);
        assert.equal(await sha256File(target), await sha256File(file));
        assert.ok((await allocatedBytes(target)) <= 14 * MiB, 'restored sparse');
      }
      assert.equal((await verifyRepository(other, { pool })).ok, true);

      // One flipped byte in a stored pack: verify names exactly the backups that use that chunk.
      const packs = (await collectKeys(store, 'packs/')).sort((x, y) => y.sizeBytes - x.sizeBytes);
      const victim = packs[0]!;
      const body = Buffer.from(await store.get(victim.key));
      await store.put(victim.key, Buffer.concat([body.subarray(0, 100), Buffer.from([body[100]! ^ 1]), body.subarray(101)]));
      const damaged = await verifyRepository(other, { pool });
      assert.equal(damaged.ok, false);
      assert.equal(damaged.damagedChunks, 1);
      await store.put(victim.key, body);
      assert.equal((await verifyRepository(other, { pool })).ok, true);

      // Delete both backups of a, collect: a's own data goes, b still restores.
      const before = await storedBytes(store);
      await deleteBackup(other, incrA.manifest.id);
      await deleteBackup(other, fullA.manifest.id);
      const gc = await collectGarbage(other);
      assert.equal(gc.deferred, false);
      assert.equal(gc.backups, 1);
      const after = await storedBytes(store);
      assert.ok(before - after >= 4 * MiB, `gc reclaimed ${before - after} bytes`);
      const target = path.join(dir, 'b-after-gc.img');
      await restoreTo(other, fullB.manifest.id, target, pool);
      assert.equal(await sha256File(target), await sha256File(b));
      assert.equal((await verifyRepository(other, { pool })).ok, true);
    });

    it('the CLI takes s3://bucket/prefix for --repo: init once, backup, list, restore, verify', async () => {
      const dir = temp.make();
      const url = `s3://${s3.bucket}/cli/site-1`;
      const env = s3.env;
      const vol = path.join(dir, 'v.img');
      await makeSparseFile(vol, 24 * MiB, [{ offset: 3 * MiB, data: randomBytesSeeded(5 * MiB, 9) }]);
      const init = await runCliJson<{ repo: string; encrypted: boolean }>(['init', '--repo', url, '--json'], { env });
      assert.deepEqual(init.repo, url);
      const again = await runCli(['init', '--repo', url], { env });
      assert.match(cliErrorMessage(again), /already exists/);
      const bk = await runCliJson<{ id: string; newBytes: number }>(['backup', '--repo', url, '--volume', vol, '--json'], { env });
      assert.equal(bk.newBytes, 5 * MiB);
      const list = await runCliJson<{ id: string }[]>(['list', '--repo', url, '--json'], { env });
      assert.deepEqual(list.map((b) => b.id), [bk.id]);
      const target = path.join(dir, 'r.img');
      await runCliJson(['restore', '--repo', url, '--backup', bk.id, '--target', target, '--json'], { env });
      assert.equal(await sha256File(target), await sha256File(vol));
      assert.equal((await runCli(['verify', '--repo', url], { env })).code, 0);
      // Nothing of it is visible from another prefix, and a malformed URL is refused in one line.
      assert.equal(cliErrorMessage(await runCli(['list', '--repo', `s3://${s3.bucket}/cli/site-2`], { env })), `no Haven repository at s3://${s3.bucket}/cli/site-2 (run haven init first)`);
      assert.match(cliErrorMessage(await runCli(['list', '--repo', 's3://Bad_Bucket/x'], { env })), /not an S3 repository URL/);
      // A server that cannot be reached: one line saying where, not a bare socket error.
      const down = await runCli(['list', '--repo', url], { env: { ...env, HAVEN_S3_ENDPOINT: 'http://127.0.0.1:9' } });
      assert.match(cliErrorMessage(down), new RegExp(`^cannot open the repository at ${url}: .*ECONNREFUSED`));
    });
  

  if (server.name === 'swift') {
    it('two services starting at once on an empty location (BackupEngine.open, with a store each, as two haven serve processes) end up on one repository', async () => {
      // BackupEngine.open is what `haven serve` runs at start: open, else create, else open the one another process created.
      const engines = await Promise.all([1, 2].map(() => BackupEngine.open(s3.store('serve', { claimSettleMs: 250 }), { threads: 1 })));
      try {
        assert.equal(engines[0]!.repo.config.id, engines[1]!.repo.config.id);
        assert.deepEqual((await collectKeys(s3.store('serve'), '')).map((o) => o.key), ['config']);
      } finally {
        await Promise.all(engines.map((e) => e.close()));
      }
    });

    it('creating with the CLI needs HAVEN_S3_CONDITIONAL_WRITES=false, named in the error; with it, of two concurrent inits one creates and the other is told it exists', async () => {
      const url = `s3://${s3.bucket}/cli/race`;
      const strict = await runCli(['init', '--repo', url], { env: { ...s3.env, HAVEN_S3_CONDITIONAL_WRITES: 'true' } });
      assert.notEqual(strict.code, 0);
      assert.match(cliErrorMessage(strict), new RegExp(`the S3 server of ${url}/ does not support conditional writes.*HAVEN_S3_CONDITIONAL_WRITES=false`));
      const runs = await Promise.all([1, 2].map(() => runCli(['init', '--repo', url, '--json'], { env: s3.env })));
      const created = runs.filter((r) => r.code === 0).map((r) => JSON.parse(r.stdout) as { id: string });
      assert.equal(created.length, 1, runs.map((r) => r.stderr).join('\n'));
      assert.match(cliErrorMessage(runs.find((r) => r.code !== 0)!), /already exists/);
      const config = JSON.parse(Buffer.from(await s3.store('cli/race').get('config')).toString('utf8')) as { id: string };
      assert.equal(config.id, created[0]!.id);
      assert.deepEqual((await collectKeys(s3.store('cli/race'), '')).map((o) => o.key), ['config'], 'no claim is left behind');
    });
  }
  });
}

describe('a repository in S3, after crashes', () => {
  let s3: TestS3;
  before(async () => {
    s3 = await startS3(temp);
  });
  after(() => s3.close());

  it('CLI backups killed at several points leave it consistent: verify clean, gc tidies up, the next backup restores bit-identical', { timeout: 300_000 }, async () => {
    const dir = temp.make();
    const url = `s3://${s3.bucket}/crash`;
    const env = s3.env;
    const passwordFile = path.join(dir, 'password');
    await writeFile(passwordFile, 'crash-test-password\n');
    const args = ['--repo', url, '--password-file', passwordFile];
    assert.equal((await runCli(['init', ...args], { env })).code, 0);
    const vol = path.join(dir, 'v.img');
    const store = s3.store('crash');
    let killed = 0;
    for (const [run, delayMs] of [150, 300, 500, 800].entries()) {
      await writeVolume(vol, randomBytesSeeded(64 * MiB, 700 + run)); // new data each time: packs get written
      const child = spawnCli(['backup', ...args, '--volume', vol, '--json'], { env });
      const done = collectCli(child, 120_000);
      await sleep(delayMs);
      child.kill('SIGKILL');
      const r = await done;
      if (r.signal === 'SIGKILL') killed++;
      else assert.equal(r.code, 0, r.stderr);
      // Whatever the moment: nothing half-written is visible, verify is clean.
      const verify = await runCliJson<{ ok: boolean }>(['verify', ...args, '--json'], { env });
      assert.equal(verify.ok, true, `verify after run ${run}`);
    }
    assert.ok(killed >= 2, `only ${killed} of 4 backups were killed mid-run`);
    // gc removes the dead backups' locks and orphans; then a backup and its restore work.
    const gc = await runCliJson<{ deferred: boolean }>(['gc', ...args, '--json'], { env });
    assert.equal(gc.deferred, false);
    assert.deepEqual((await collectKeys(store, 'locks/')).map((o) => o.key), [], 'no lock is left behind');
    const want = await sha256File(vol);
    const bk = await runCliJson<{ id: string }>(['backup', ...args, '--volume', vol, '--json'], { env });
    const target = path.join(dir, 'r.img');
    await runCliJson(['restore', ...args, '--backup', bk.id, '--target', target, '--json'], { env });
    assert.equal(await sha256File(target), want);
    assert.equal((await runCliJson<{ ok: boolean }>(['verify', ...args, '--json'], { env })).ok, true);
  });
});
