/**
 * Passwords: a wrong or missing password is refused with a clear error and changes nothing; a
 * repository cannot be initialised twice; an encrypted repository does not hold the plaintext.
 */
import assert from 'node:assert/strict';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import { Repository } from '../../src/engine/repository.ts';
import { LocalObjectStore } from '../../src/storage/local-store.ts';
import {
  cliErrorMessage, listFilesRecursive, MiB, randomBytesSeeded, runCli, runCliJson, snapshotDir, TempDirs, TEST_KDF, writeVolume,
} from '../helpers/volumes.ts';

const temp = new TempDirs('haven-pw-');
after(() => temp.cleanup());

const PASSWORD = 'the right one';

describe('passwords', () => {
  let dir: string;
  let repoDir: string;
  let goodFile: string;
  let wrongFile: string;
  let vol: string;
  let volData: Buffer;
  let backupId: string;

  before(async () => {
    dir = temp.make();
    repoDir = path.join(dir, 'repo');
    goodFile = path.join(dir, 'good');
    wrongFile = path.join(dir, 'wrong');
    await fs.writeFile(goodFile, `${PASSWORD}\n`);
    await fs.writeFile(wrongFile, 'the wrong one\n');
    vol = path.join(dir, 'vol.img');
    volData = randomBytesSeeded(2 * MiB, 77);
    await writeVolume(vol, volData);
    const init = await runCliJson<{ encrypted: boolean }>(['init', '--repo', repoDir, '--password-file', goodFile, '--json']);
    assert.equal(init.encrypted, true);
    backupId = (await runCliJson<{ id: string }>(['backup', '--repo', repoDir, '--password-file', goodFile, '--volume', vol, '--json'])).id;
  });

  const commands = (): [string, string[]][] => [
    ['list', ['list', '--repo', repoDir]],
    ['backup', ['backup', '--repo', repoDir, '--volume', vol]],
    ['restore', ['restore', '--repo', repoDir, '--backup', backupId, '--target', path.join(dir, 'must-not-exist.img')]],
    ['verify', ['verify', '--repo', repoDir]],
    ['delete', ['delete', '--repo', repoDir, '--backup', backupId]],
    ['gc', ['gc', '--repo', repoDir]],
  ];

  it('a wrong password is refused by every command, with one clear line, and nothing changes', async () => {
    const before = await snapshotDir(repoDir);
    assert.ok(before.size > 4);
    for (const [name, args] of commands()) {
      const r = await runCli([...args, '--password-file', wrongFile]);
      assert.match(cliErrorMessage(r), /wrong password/, `${name}: ${r.stderr}`);
      assert.deepEqual(await snapshotDir(repoDir), before, `${name} with a wrong password changed the repository`);
    }
    assert.equal(existsSync(path.join(dir, 'must-not-exist.img')), false, 'restore with a wrong password created its target');
  });

  it('a missing password on an encrypted repository is refused, and nothing changes', async () => {
    const before = await snapshotDir(repoDir);
    for (const [name, args] of commands()) {
      const r = await runCli(args);
      assert.match(cliErrorMessage(r), /encrypted.*password/, `${name}: ${r.stderr}`);
      assert.deepEqual(await snapshotDir(repoDir), before, `${name} without a password changed the repository`);
    }
    const r = await runCli(['list', '--repo', repoDir, '--password-file', path.join(dir, 'no-such-file')]);
    assert.match(cliErrorMessage(r), /password file/);
    assert.deepEqual(await snapshotDir(repoDir), before);
  });

  it('an empty password is refused', async () => {
    const empty = path.join(dir, 'empty');
    await fs.writeFile(empty, '\n');
    const r = await runCli(['list', '--repo', repoDir, '--password-file', empty]);
    assert.match(cliErrorMessage(r), /wrong password/);
    const fresh = path.join(dir, 'fresh');
    const i = await runCli(['init', '--repo', fresh, '--password-file', empty]);
    assert.match(cliErrorMessage(i), /password/);
    assert.equal(existsSync(path.join(fresh, 'config')), false);
  });

  it('the right password works from --password-file and from HAVEN_PASSWORD_FILE', async () => {
    const noNewline = path.join(dir, 'good-no-newline');
    await fs.writeFile(noNewline, PASSWORD);
    for (const opts of [{ args: ['--password-file', goodFile], env: {} }, { args: ['--password-file', noNewline], env: {} }, { args: [], env: { HAVEN_PASSWORD_FILE: goodFile } }]) {
      const list = await runCliJson<{ id: string }[]>(['list', '--repo', repoDir, '--json', ...opts.args], { env: opts.env });
      assert.ok(list.some((b) => b.id === backupId));
    }
  });

  it('the engine refuses a wrong or missing password with typed errors', async () => {
    const store = new LocalObjectStore(repoDir);
    await assert.rejects(Repository.open(store, { password: 'nope' }), (e: unknown) => e instanceof AppError && e.code === ErrorCode.WrongPassword);
    await assert.rejects(Repository.open(store, {}), (e: unknown) => e instanceof AppError && e.code === ErrorCode.PasswordRequired);
    const repo = await Repository.open(store, { password: PASSWORD });
    assert.deepEqual(await repo.listBackupIds(), [backupId]);
  });

  it('an encrypted repository holds no plaintext, an unencrypted one does (control)', async () => {
    const probes = [volData.subarray(0, 48), volData.subarray(MiB + 999, MiB + 1047), volData.subarray(volData.length - 48)];
    const holds = async (root: string): Promise<boolean> => {
      for (const rel of await listFilesRecursive(root)) {
        const body = await fs.readFile(path.join(root, rel));
        if (probes.some((p) => body.includes(p))) return true;
      }
      return false;
    };
    assert.equal(await holds(repoDir), false, 'plaintext volume data found in the encrypted repository');
    const plainRepo = path.join(dir, 'plain-repo');
    await runCliJson(['init', '--repo', plainRepo, '--json']);
    await runCliJson(['backup', '--repo', plainRepo, '--volume', vol, '--json']);
    assert.equal(await holds(plainRepo), true, 'the probe should find plaintext in an unencrypted repository');
  });

  it('init twice is refused and leaves the first repository as it was', async () => {
    const before = await snapshotDir(repoDir);
    for (const args of [['--password-file', goodFile], ['--password-file', wrongFile], []]) {
      const r = await runCli(['init', '--repo', repoDir, ...args]);
      assert.match(cliErrorMessage(r), /already exists/);
      assert.deepEqual(await snapshotDir(repoDir), before);
    }
    const store = new LocalObjectStore(repoDir);
    await assert.rejects(Repository.init(store, { password: 'x', kdf: TEST_KDF }), (e: unknown) => e instanceof AppError && e.code === ErrorCode.RepositoryExists);
    await assert.rejects(Repository.init(store), (e: unknown) => e instanceof AppError && e.code === ErrorCode.RepositoryExists);
    assert.deepEqual(await snapshotDir(repoDir), before);
  });

  it('two concurrent inits of one directory: exactly one succeeds', async () => {
    const fresh = path.join(dir, 'race');
    const results = await Promise.allSettled(['one', 'two'].map((pw) => Repository.init(new LocalObjectStore(fresh), { password: pw, kdf: TEST_KDF })));
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  });
});
