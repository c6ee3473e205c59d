/**
 * The data folder holds the catalog (password hashes), the generated admin password and volume
 * images: at start Haven makes the folder 0700 and the catalog files 0600, also when they existed
 * before with looser modes (a folder made 0755 by hand, a catalog created under a 022 umask).
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { runCli, TempDirs } from '../helpers/volumes.ts';

const modeOf = async (p: string): Promise<string> => ((await fs.stat(p)).mode & 0o777).toString(8).padStart(4, '0');

describe('data folder permissions', () => {
  const temp = new TempDirs('haven-perms-');
  after(() => temp.cleanup());

  it('an existing 0755 data folder with a 0644 catalog becomes 0700 and 0600 at start', async () => {
    const svc = await startService(temp, {}, { runJobs: false });
    await svc.login('admin', ADMIN_PASSWORD, 'admin');
    await svc.close();
    const dir = svc.dataDir;
    // What an earlier start left behind under umask 022 in a folder the operator made.
    await fs.chmod(dir, 0o755);
    for (const f of ['catalog.sqlite', 'catalog.sqlite-wal', 'catalog.sqlite-shm']) {
      const p = path.join(dir, f);
      if (await fs.stat(p).catch(() => null)) await fs.chmod(p, 0o644);
    }
    await fs.chmod(path.join(dir, 'catalog.sqlite'), 0o644);
    await svc.restart({}, { runJobs: false });
    assert.equal(await modeOf(dir), '0700');
    assert.equal(await modeOf(path.join(dir, 'catalog.sqlite')), '0600');
    for (const f of ['catalog.sqlite-wal', 'catalog.sqlite-shm']) {
      const p = path.join(dir, f);
      if (await fs.stat(p).catch(() => null)) assert.equal(await modeOf(p), '0600', f);
    }
    // And it still works: the catalog is the same.
    await svc.login('admin', ADMIN_PASSWORD, 'admin');
    await svc.close();
  });

  it('a new catalog is 0600 from the start, whatever the umask', async () => {
    const dir = path.join(temp.make('fresh'), 'data');
    await fs.mkdir(dir, { mode: 0o755 });
    await fs.chmod(dir, 0o755);
    const old = process.umask(0o022);
    try {
      const r = await runCli(['user', 'list', '--data-dir', dir]);
      assert.equal(r.code, 0, r.stderr);
    } finally {
      process.umask(old);
    }
    assert.equal(await modeOf(dir), '0700');
    assert.equal(await modeOf(path.join(dir, 'catalog.sqlite')), '0600');
  });
});
