/**
 * The `haven` command line contract: JSON output of backup/restore/list/gc, and errors as one line
 * `haven: error: ...` with a non-zero exit and never a stack trace.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLI_MAIN, cliErrorMessage, collectCli, MiB, REPO_ROOT, runCli, runCliJson, sha256File, TempDirs, writeRandomFile } from '../helpers/volumes.ts';
import { skipOutsideCi } from '../helpers/skip.ts';


const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const UNKNOWN_ID = '01234567-89ab-4def-8123-456789abcdef';

interface BackupJson {
  id: string;
  volumeId: string;
  volumeName: string;
  kind: string;
  parentId: string | null;
  sizeBytes: number;
  newBytes: number;
  storedBytes: number;
  zeroBytes: number;
  dedupBytes: number;
  durationMs: number;
  volumeDigest: string;
}

interface ListJson {
  id: string;
  volumeName: string;
  kind: string;
  parentId: string | null;
  sizeBytes: number;
  createdAt: string;
  volumeDigest: string;
  newBytes: number;
  storedBytes: number;
}

const temp = new TempDirs('haven-cli-');
after(() => temp.cleanup());

let dir: string;
let repo: string;
let volA: string;
let volB: string;
let shaB: string;

before(async () => {
  dir = temp.make();
  repo = path.join(dir, 'repo');
  volA = path.join(dir, 'a.img');
  volB = path.join(dir, 'b.img');
  await writeRandomFile(volA, 3 * MiB + 5, 1);
  shaB = await writeRandomFile(volB, 2 * MiB, 2);
  const init = await runCli(['init', '--repo', repo, '--json']);
  assert.equal(init.code, 0, init.stderr);
  const j = JSON.parse(init.stdout) as { id: string; encrypted: boolean; chunkSizeBytes: number; repo: string };
  assert.equal(j.encrypted, false);
  assert.equal(j.chunkSizeBytes, 64 * 1024);
  assert.equal(j.repo, repo);
});

describe('haven CLI: results', () => {
  const made: BackupJson[] = [];

  it('backup --json prints one JSON object with the backup id and numeric stats', async () => {
    const r = await runCli(['backup', '--repo', repo, '--volume', volA, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '', 'no progress output when stderr is not a terminal');
    assert.equal(r.stdout.trim().split('\n').length, 1);
    const b = JSON.parse(r.stdout) as BackupJson;
    assert.match(b.id, UUID_RE);
    for (const k of ['sizeBytes', 'newBytes', 'storedBytes', 'zeroBytes', 'dedupBytes', 'durationMs'] as const) {
      assert.equal(typeof b[k], 'number', k);
      assert.ok(Number.isFinite(b[k]) && b[k] >= 0, `${k} = ${b[k]}`);
    }
    assert.equal(b.sizeBytes, 3 * MiB + 5);
    assert.equal(b.newBytes, 3 * MiB + 5);
    assert.ok(b.storedBytes >= b.newBytes);
    // The backup's volume digest is the volume's, as haven digest computes it from the file alone.
    const d = await runCliJson<{ path: string; sizeBytes: number; volumeDigest: string }>(['digest', volA, '--repo', repo, '--json']);
    assert.deepEqual(d, { path: volA, sizeBytes: 3 * MiB + 5, volumeDigest: b.volumeDigest });
    assert.match(b.volumeDigest, /^[0-9a-f]{64}$/);
    assert.equal(b.volumeName, 'a.img');
    assert.equal(b.kind, 'full');
    assert.equal(b.parentId, null);
    made.push(b);
  });

  it('a second backup of the same volume is incremental; --full is not; --name names it', async () => {
    const inc = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', volA, '--json']);
    assert.equal(inc.kind, 'incremental');
    assert.equal(inc.parentId, made[0]!.id);
    assert.equal(inc.newBytes, 0);
    const full = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', volA, '--full', '--json']);
    assert.equal(full.kind, 'full');
    assert.equal(full.parentId, null);
    assert.equal(full.newBytes, 0);
    const b = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', volB, '--name', 'disk-b', '--json']);
    assert.equal(b.volumeName, 'disk-b');
    assert.equal(b.kind, 'full');
    assert.equal(b.volumeDigest, (await runCliJson<{ volumeDigest: string }>(['digest', volB, '--repo', repo, '--json'])).volumeDigest);
    assert.notEqual(b.volumeDigest, made[0]!.volumeDigest);
    made.push(inc, full, b);
  });

  it('list --json parses and lists exactly the created backups, oldest first', async () => {
    const r = await runCli(['list', '--repo', repo, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout) as ListJson[];
    assert.ok(Array.isArray(list));
    assert.deepEqual(list.map((l) => l.id), made.map((m) => m.id));
    for (const [i, l] of list.entries()) {
      assert.equal(l.sizeBytes, made[i]!.sizeBytes);
      assert.equal(l.volumeDigest, made[i]!.volumeDigest);
      assert.equal(l.kind, made[i]!.kind);
      assert.equal(l.parentId, made[i]!.parentId);
      assert.equal(typeof l.newBytes, 'number');
      assert.ok(!Number.isNaN(Date.parse(l.createdAt)));
    }
    const text = await runCli(['list', '--repo', repo]);
    assert.equal(text.code, 0);
    for (const m of made) assert.match(text.stdout, new RegExp(m.id));
    assert.match(text.stdout, /4 backup\(s\)/);
  });

  it('restore --json restores bit-identical and reports it', async () => {
    const target = path.join(dir, 'restored-b.img');
    const r = await runCliJson<{ id: string; sizeBytes: number; volumeDigest: string; verified: boolean; durationMs: number }>(['restore', '--repo', repo, '--backup', made[3]!.id, '--target', target, '--json']);
    assert.equal(r.id, made[3]!.id);
    assert.equal(r.verified, true);
    assert.equal(r.sizeBytes, 2 * MiB);
    assert.equal(r.volumeDigest, made[3]!.volumeDigest);
    assert.equal(typeof r.durationMs, 'number');
    assert.equal(await sha256File(target), shaB);
  });

  it('delete removes a backup from the list; gc --json reports numbers', async () => {
    const gone = made[3]!.id;
    const d = await runCliJson<{ id: string; deleted: boolean }>(['delete', '--repo', repo, '--backup', gone, '--json']);
    assert.deepEqual(d, { id: gone, deleted: true });
    const list = await runCliJson<ListJson[]>(['list', '--repo', repo, '--json']);
    assert.deepEqual(list.map((l) => l.id), made.slice(0, 3).map((m) => m.id));
    const gc = await runCliJson<Record<string, unknown>>(['gc', '--repo', repo, '--json']);
    assert.equal(gc.deferred, false);
    assert.equal(gc.backups, 3);
    assert.equal(gc.deletedChunks, 32);
    for (const k of ['referencedChunks', 'reclaimedBytes', 'repositoryBytesBefore', 'repositoryBytesAfter', 'durationMs']) assert.equal(typeof gc[k], 'number', k);
    const v = await runCli(['verify', '--repo', repo]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, /^OK: 3 backup\(s\) checked, 0 damaged/m);
  });
});

describe('haven CLI: errors are one line, non-zero, without a stack trace', () => {
  const cases: [string, () => string[], RegExp][] = [
    ['list on a nonexistent repository', () => ['list', '--repo', path.join(dir, 'nope')], /no Haven repository/],
    ['backup into a nonexistent repository', () => ['backup', '--repo', path.join(dir, 'nope'), '--volume', volA], /no Haven repository/],
    ['verify on a nonexistent repository', () => ['verify', '--repo', path.join(dir, 'nope')], /no Haven repository/],
    ['gc on a nonexistent repository', () => ['gc', '--repo', path.join(dir, 'nope')], /no Haven repository/],
    ['backup of a nonexistent volume', () => ['backup', '--repo', repo, '--volume', path.join(dir, 'no-such.img')], /cannot open volume .*no-such\.img/],
    ['backup of a directory', () => ['backup', '--repo', repo, '--volume', dir], /neither a file nor a block device/],
    ['restore of an unknown backup id', () => ['restore', '--repo', repo, '--backup', UNKNOWN_ID, '--target', path.join(dir, 'x.img')], new RegExp(`backup ${UNKNOWN_ID} not found`)],
    ['delete of an unknown backup id', () => ['delete', '--repo', repo, '--backup', UNKNOWN_ID], new RegExp(`backup ${UNKNOWN_ID} not found`)],
    ['verify of an unknown backup id', () => ['verify', '--repo', repo, '--backup', UNKNOWN_ID], new RegExp(`backup ${UNKNOWN_ID} not found`)],
    ['restore with a malformed backup id', () => ['restore', '--repo', repo, '--backup', '../../config', '--target', path.join(dir, 'x.img')], /not found \(backup ids are UUIDs/],
    ['delete with a malformed backup id', () => ['delete', '--repo', repo, '--backup', 'latest'], /not found \(backup ids are UUIDs/],
    ['verify with a malformed backup id', () => ['verify', '--repo', repo, '--backup', 'ABC'], /not found \(backup ids are UUIDs/],
    ['init with a bad chunk size', () => ['init', '--repo', path.join(dir, 'bad-chunk'), '--chunk-size', '3KiB'], /chunk size/],
    ['init with an unparsable chunk size', () => ['init', '--repo', path.join(dir, 'bad-chunk2'), '--chunk-size', 'huge'], /invalid chunk size/],
  ];

  for (const [what, args, message] of cases) {
    it(what, async () => {
      const r = await runCli(args());
      assert.match(cliErrorMessage(r), message);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, '');
    });
  }

  it('restore into a missing directory or onto a directory fails cleanly', async () => {
    const id = (await runCliJson<ListJson[]>(['list', '--repo', repo, '--json']))[0]!.id;
    const r1 = await runCli(['restore', '--repo', repo, '--backup', id, '--target', path.join(dir, 'no-dir', 'x.img')]);
    assert.match(cliErrorMessage(r1), /restore target/);
    const r2 = await runCli(['restore', '--repo', repo, '--backup', id, '--target', dir]);
    assert.match(cliErrorMessage(r2), /neither a file nor a block device/);
    assert.equal(existsSync(path.join(dir, 'no-dir')), false);
  });

  it('a nonexistent repository is not created by a failing command', async () => {
    await runCli(['backup', '--repo', path.join(dir, 'not-there'), '--volume', volA]);
    assert.equal(existsSync(path.join(dir, 'not-there')), false);
  });

  it('HAVEN_DEBUG adds the stack trace (and only then)', async () => {
    const r = await runCli(['list', '--repo', path.join(dir, 'nope')], { env: { HAVEN_DEBUG: '1' } });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^haven: error: no Haven repository/);
    assert.match(r.stderr, /\n\s+at /);
  });

  it('usage errors exit non-zero without a stack trace', async () => {
    for (const args of [['list'], ['list', '--repo', repo, '--bogus'], ['frobnicate'], ['restore', '--repo', repo]]) {
      const r = await runCli(args);
      assert.ok(r.code !== 0 && r.code !== null, `${args.join(' ')} exited ${r.code}`);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
      assert.equal(r.stdout, '');
    }
  });

  it(
    'usage errors follow the one-line `haven: error:` contract',
    async () => {
      for (const args of [['list'], ['list', '--repo', repo, '--bogus'], ['frobnicate']]) {
        const r = await runCli(args);
        cliErrorMessage(r);
      }
    },
  );

  it('after all these errors the repository still verifies, and takes an empty volume', async () => {
    await fs.writeFile(path.join(dir, 'empty.img'), '');
    const r = await runCliJson<BackupJson>(['backup', '--repo', repo, '--volume', path.join(dir, 'empty.img'), '--json']);
    assert.equal(r.sizeBytes, 0);
    const v = await runCli(['verify', '--repo', repo, '--json']);
    assert.equal(v.code, 0, v.stdout);
  });
});

/** util-linux `script` gives the CLI a pseudo-terminal, as a user's shell would. */
const hasScript = ((): boolean => {
  try {
    execFileSync('script', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('haven CLI: progress on a terminal', { skip: skipOutsideCi(hasScript ? false : 'util-linux script is not installed') }, () => {
  it('backup, restore and gc without --json draw bars with human sizes and throughput; with --json nothing but the JSON', async () => {
    const vol = path.join(dir, 'tty.img');
    await writeRandomFile(vol, 48 * MiB, 7);
    const shell = (args: string[]): string => [process.execPath, CLI_MAIN, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
    const onTerminal = async (args: string[]): Promise<string> => {
      const child = spawn('script', ['-qec', shell(args), '/dev/null'], { cwd: REPO_ROOT, env: { ...process.env, HAVEN_THREADS: '2', NODE_TEST_CONTEXT: undefined }, stdio: ['ignore', 'pipe', 'pipe'] });
      const r = await collectCli(child, 120_000);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      return r.stdout.replaceAll('\r', '\n');
    };
    const out = await onTerminal(['backup', '--repo', repo, '--volume', vol, '--name', 'tty']);
    assert.match(out, /backup +\[#+\] 100% \| 48\.0 MiB \/ 48\.0 MiB \| [\d.]+ [KMG]iB\/s \|/);
    assert.doesNotMatch(out, /50331648/, 'sizes are shown in units, not raw byte counts');
    const id = /backup ([0-9a-f-]{36}) \(/.exec(out)?.[1];
    assert.ok(id, out);
    const restored = await onTerminal(['restore', '--repo', repo, '--backup', id, '--target', path.join(dir, 'tty-restored.img')]);
    assert.match(restored, /restore +\[#+\] 100% \| 48\.0 MiB \/ 48\.0 MiB \|/);
    const json = await onTerminal(['backup', '--repo', repo, '--volume', vol, '--json']);
    assert.doesNotMatch(json, /\[#|%/);
    assert.equal((JSON.parse(json.trim()) as BackupJson).newBytes, 0);
    // gc: one bar while it marks what the backups use, one while it sweeps the packs.
    await onTerminal(['delete', '--repo', repo, '--backup', id]);
    const gc = await onTerminal(['gc', '--repo', repo]);
    assert.match(gc, /gc mark +\[#+\] 100% \|/);
    assert.match(gc, /gc sweep +\[#+\] 100% \|/);
    assert.match(gc, /^gc: \d+ backup\(s\)/m);
  });
});
