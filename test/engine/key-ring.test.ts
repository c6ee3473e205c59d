/**
 * Several passwords for one encrypted repository (engine/key-ring.ts, `haven key ...`): a backup
 * made under one password restores bit-identical under another; passwd replaces exactly the
 * password given; refused removals change nothing.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { Repository } from '../../src/engine/repository.ts';
import { openObjectStore } from '../../src/storage/open-store.ts';
import { cliErrorMessage, MiB, runCli, runCliJson, sha256File, TempDirs, writeRandomFile } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-keys-');
after(() => temp.cleanup());

interface Key { id: string; current: boolean; host: string | null }

describe('repository keys', () => {
  it('add, list, passwd and remove passwords; every password opens the same data', async () => {
    const dir = temp.make();
    const repo = path.join(dir, 'repo');
    const pw = async (name: string, text: string): Promise<string> => {
      const f = path.join(dir, name);
      await fs.writeFile(f, text);
      return f;
    };
    const [p1, p2, p3] = [await pw('p1', 'first password\n'), await pw('p2', 'second'), await pw('p3', 'third')];
    const as = (file: string): string[] => ['--repo', repo, '--password-file', file];
    await runCliJson(['init', ...as(p1), '--json']);
    const vol = path.join(dir, 'v.img');
    await writeRandomFile(vol, 3 * MiB, 21);
    const b = await runCliJson<{ id: string }>(['backup', ...as(p1), '--volume', vol, '--json']);

    const added = await runCliJson<{ id: string }>(['key', 'add', ...as(p1), '--new-password-file', p2, '--json']);
    assert.match(added.id, /^[0-9a-f]{16}$/);
    const keys = await runCliJson<Key[]>(['key', 'list', ...as(p2), '--json']);
    assert.deepEqual(keys.map((k) => [k.id, k.current]), [['config', false], [added.id, true]]);
    // The second password restores the first one's backup bit-identical.
    const out = path.join(dir, 'out.img');
    await runCliJson(['restore', ...as(p2), '--backup', b.id, '--target', out, '--json']);
    assert.equal(await sha256File(out), await sha256File(vol));
    // The engine (and so the service) opens with an added password too.
    const opened = await Repository.open(await openObjectStore(repo), { password: 'second' });
    assert.equal(opened.keyId, added.id);

    // Refused removals change nothing.
    const before = await fs.readdir(path.join(repo, 'keys'));
    assert.match(cliErrorMessage(await runCli(['key', 'remove', added.id, ...as(p2)])), /is the one this password opened/);
    assert.match(cliErrorMessage(await runCli(['key', 'remove', 'config', ...as(p2)])), /the config's key cannot be removed/);
    assert.match(cliErrorMessage(await runCli(['key', 'remove', 'ffffffffffffffff', ...as(p1)])), /no key ffffffffffffffff in this repository/);
    assert.deepEqual(await fs.readdir(path.join(repo, 'keys')), before);

    // passwd changes the password given, and only it.
    await runCliJson(['key', 'passwd', ...as(p1), '--new-password-file', p3, '--json']);
    assert.match(cliErrorMessage(await runCli(['list', ...as(p1)])), /wrong password/);
    assert.equal((await runCliJson<unknown[]>(['list', ...as(p3), '--json'])).length, 1);
    assert.equal((await runCliJson<unknown[]>(['list', ...as(p2), '--json'])).length, 1);
    const p4 = await pw('p4', 'fourth');
    await runCliJson(['key', 'passwd', ...as(p2), '--new-password-file', p4, '--json']);
    assert.match(cliErrorMessage(await runCli(['list', ...as(p2)])), /wrong password/);
    assert.deepEqual((await runCliJson<Key[]>(['key', 'list', ...as(p4), '--json'])).map((k) => [k.id, k.current]), [['config', false], [added.id, true]]);

    // Removed: that password no longer opens it; the other still restores the backup.
    await runCliJson(['key', 'remove', added.id, ...as(p3), '--json']);
    assert.match(cliErrorMessage(await runCli(['list', ...as(p4)])), /wrong password/);
    await runCliJson(['restore', ...as(p3), '--backup', b.id, '--target', out, '--force', '--json']);
    assert.equal(await sha256File(out), await sha256File(vol));
    assert.equal((await runCli(['verify', ...as(p3)])).code, 0);
  });

  it('an unencrypted repository has no passwords to manage', async () => {
    const repo = path.join(temp.make(), 'repo');
    await runCliJson(['init', '--repo', repo, '--json']);
    assert.match(cliErrorMessage(await runCli(['key', 'list', '--repo', repo])), /not encrypted/);
  });
});
