/**
 * The shipped systemd units (deploy/systemd/) are valid: `systemd-analyze verify` on each, with
 * /opt/haven (where docs/operations.md installs Haven) pointed at this checkout so that the Node and
 * the entry point they start exist. A unit naming a program that is not there is refused, so the
 * check can fail.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, describe, it } from 'node:test';
import { skipOutsideCi } from '../helpers/skip.ts';
import { REPO_ROOT, TempDirs } from '../helpers/volumes.ts';

const run = promisify(execFile);
const temp = new TempDirs('haven-units-');
after(() => temp.cleanup());

async function analyzeMissing(): Promise<string | false> {
  try {
    await run('systemd-analyze', ['--version']);
    return false;
  } catch {
    return 'systemd-analyze (Debian package systemd) is not installed';
  }
}

async function verify(file: string): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await run('systemd-analyze', ['verify', file]);
    return { ok: true, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

describe('systemd units', async () => {
  const skip = skipOutsideCi(await analyzeMissing());
  for (const unit of ['haven.service', 'haven-agent.service']) {
    it(`${unit} passes systemd-analyze verify and starts bin/haven.js on the npm-installed Node`, { skip }, async () => {
      const text = await fs.readFile(path.join(REPO_ROOT, 'deploy', 'systemd', unit), 'utf8');
      assert.match(text, /^ExecStart=\/opt\/haven\/node_modules\/node\/bin\/node \/opt\/haven\/bin\/haven\.js (serve|agent)$/m);
      const dir = temp.make();
      const here = path.join(dir, unit);
      await fs.writeFile(here, text.replaceAll('/opt/haven', REPO_ROOT.replace(/\/$/, '')));
      const r = await verify(here);
      assert.ok(r.ok, r.out);
      const broken = path.join(dir, `broken-${unit}`);
      await fs.writeFile(broken, text.replaceAll('/opt/haven', path.join(dir, 'nowhere')));
      const b = await verify(broken);
      assert.equal(b.ok, false, 'a unit whose program is missing must fail verification');
      assert.match(b.out, /is not executable|No such file/);
    });
  }
});
