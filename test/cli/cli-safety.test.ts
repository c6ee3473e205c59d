/**
 * The CLI without sharp edges: it reads the repository settings the service reads
 * (HAVEN_REPOSITORY, HAVEN_REPO_PASSWORD_FILE), `haven init` never moves into a folder that holds
 * something else, `haven restore` never overwrites data without --force, and errors name the path
 * in words, not errno codes. Every refusal is checked to have changed nothing.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { cliErrorMessage, MiB, runCli, runCliJson, sha256File, TempDirs, writeRandomFile } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-cli-safety-');
after(() => temp.cleanup());

async function listing(dir: string): Promise<string[]> {
  return (await fs.readdir(dir, { recursive: true })).map(String).sort();
}

describe('CLI safety', () => {
  it('reads HAVEN_REPOSITORY and HAVEN_REPO_PASSWORD_FILE like the service; --repo and --password-file win; the older names still work', async () => {
    const dir = temp.make();
    const repo = path.join(dir, 'repo');
    const pw = path.join(dir, 'pw');
    await fs.writeFile(pw, 'correct horse\n');
    const env = { HAVEN_REPOSITORY: repo, HAVEN_REPO_PASSWORD_FILE: pw };
    const made = await runCliJson<{ encrypted: boolean }>(['init', '--json'], { env });
    assert.equal(made.encrypted, true);
    const vol = path.join(dir, 'v.img');
    await writeRandomFile(vol, 2 * MiB, 3);
    const b = await runCliJson<{ id: string }>(['backup', '--volume', vol, '--json'], { env });
    // The older names, and the options over the settings.
    const older = await runCliJson<{ id: string }[]>(['list', '--json'], { env: { HAVEN_REPOSITORY_URL: repo, HAVEN_PASSWORD_FILE: pw } });
    assert.deepEqual(older.map((x) => x.id), [b.id]);
    const given = await runCliJson<{ id: string }[]>(['list', '--repo', repo, '--password-file', pw, '--json'], { env: { HAVEN_REPOSITORY: path.join(dir, 'elsewhere') } });
    assert.deepEqual(given.map((x) => x.id), [b.id]);

    assert.match(cliErrorMessage(await runCli(['list'])), /^no repository given: use --repo DIR .*or set HAVEN_REPOSITORY$/);
    assert.match(cliErrorMessage(await runCli(['list'], { env: { HAVEN_REPOSITORY: repo, HAVEN_REPOSITORY_URL: dir } })), /HAVEN_REPOSITORY and HAVEN_REPOSITORY_URL name the same setting but differ/);
    assert.match(cliErrorMessage(await runCli(['list'], { env: { HAVEN_REPOSITORY: repo } })), /the repository is encrypted: give --password-file or HAVEN_REPO_PASSWORD_FILE/);
    const missing = path.join(dir, 'no-such-pw');
    assert.equal(cliErrorMessage(await runCli(['list'], { env: { HAVEN_REPOSITORY: repo, HAVEN_REPO_PASSWORD_FILE: missing } })), `cannot read the password file ${missing}: it does not exist`);
  });

  it('init refuses a folder that holds something else, and changes nothing there; a missing repository is named', async () => {
    const dir = temp.make();
    const busy = path.join(dir, 'busy');
    await fs.mkdir(path.join(busy, 'photos'), { recursive: true });
    await fs.writeFile(path.join(busy, 'photos', 'cat.jpg'), 'meow');
    const before = await listing(busy);
    const msg = cliErrorMessage(await runCli(['init', '--repo', busy]));
    assert.match(msg, new RegExp(`^cannot create a repository at ${busy}: it is not empty \\(it holds photos/cat.jpg\\) and holds no Haven repository`));
    assert.deepEqual(await listing(busy), before);
    // An empty folder is fine; a second init is refused as a repository already there.
    const empty = path.join(dir, 'empty');
    await fs.mkdir(empty);
    await runCliJson(['init', '--repo', empty, '--json']);
    assert.match(cliErrorMessage(await runCli(['init', '--repo', empty])), /a repository already exists there/);
    const nowhere = path.join(dir, 'nowhere');
    assert.equal(cliErrorMessage(await runCli(['list', '--repo', nowhere])), `no Haven repository at ${nowhere} (run haven init first)`);
  });

  it('restore refuses a target holding data without --force, leaving it as it was; with --force it is the backup', async () => {
    const dir = temp.make();
    const repo = path.join(dir, 'repo');
    await runCliJson(['init', '--repo', repo, '--json']);
    const vol = path.join(dir, 'v.img');
    await writeRandomFile(vol, 3 * MiB, 9);
    const b = await runCliJson<{ id: string }>(['backup', '--repo', repo, '--volume', vol, '--json']);
    const target = path.join(dir, 'precious.img');
    await writeRandomFile(target, 1 * MiB, 10);
    const was = await sha256File(target);
    const msg = cliErrorMessage(await runCli(['restore', '--repo', repo, '--backup', b.id, '--target', target]));
    assert.equal(msg, `${target} exists and is not empty (1.00 MiB): give --force to overwrite it`);
    assert.equal(await sha256File(target), was);
    await runCliJson(['restore', '--repo', repo, '--backup', b.id, '--target', target, '--force', '--json']);
    assert.equal(await sha256File(target), await sha256File(vol));
    // An empty file that exists is no data to lose.
    const empty = path.join(dir, 'empty.img');
    await fs.writeFile(empty, '');
    await runCliJson(['restore', '--repo', repo, '--backup', b.id, '--target', empty, '--json']);
    assert.equal(await sha256File(empty), await sha256File(vol));
  });
});
