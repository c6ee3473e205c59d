/**
 * The README's flows run as written: the shell blocks of "Using the API with curl", "Server backups
 * (CSBS)" and "Using the openstack CLI" are taken from the README itself and run top to bottom, in one bash with `set -e`,
 * against a fresh `haven serve` whose data folder is `data` in the shell's folder (as `npm start`
 * makes it), with the README's clouds.yaml. Only the address is changed (the test's port). The
 * effects are then checked: the volumes exist, the backups were made, restored and deleted, the
 * policy ran, the server was backed up and restored.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, describe, it } from 'node:test';
import { ServeProcess } from '../faults/serve-process.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { REPO_ROOT, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-readme-');
after(() => temp.cleanup());

const README = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');

/** The fenced blocks of one `## ` section, with their info strings. */
function blocks(section: string): { lang: string; text: string }[] {
  const start = README.indexOf(`\n## ${section}\n`);
  assert.ok(start >= 0, `README section "${section}"`);
  const end = README.indexOf('\n## ', start + 4);
  const body = README.slice(start, end < 0 ? undefined : end);
  return [...body.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map((m) => ({ lang: m[1]!, text: m[2]! }));
}

async function openstackMissing(): Promise<string | false> {
  try {
    await promisify(execFile)('openstack', ['--version']);
    return false;
  } catch {
    return 'the openstack CLI (Debian package python3-openstackclient) is not installed';
  }
}

describe('the README flows', async () => {
  const skip = skipOutsideCi(await openstackMissing());

  it('curl, CSBS and openstack CLI sections run top to bottom in a fresh data folder', { skip, timeout: 600_000 }, async () => {
    const dir = temp.make('run');
    const data = path.join(dir, 'data');
    // No HAVEN_ADMIN_PASSWORD: the password is generated into data/admin-password, as for a new user.
    const svc = await ServeProcess.start({ HAVEN_DATA_DIR: data, HAVEN_ADMIN_PASSWORD: '' });
    try {
      const here = (text: string): string => text.replaceAll('http://127.0.0.1:8080', svc.url);
      const curl = blocks('Using the API with curl').filter((b) => b.lang === 'sh');
      const csbs = blocks('Server backups (CSBS)').filter((b) => b.lang === 'sh');
      const os = blocks('Using the openstack CLI');
      const yaml = os.find((b) => b.lang === 'yaml');
      assert.ok(curl.length >= 1 && yaml, 'the README has the curl block and clouds.yaml');
      const password = (await fs.readFile(path.join(data, 'admin-password'), 'utf8')).trim();
      const home = path.join(dir, 'home');
      await fs.mkdir(path.join(home, '.config', 'openstack'), { recursive: true });
      await fs.writeFile(path.join(home, '.config', 'openstack', 'clouds.yaml'), here(yaml.text).replace('<contents of data/admin-password>', password));
      const script = ['set -euo pipefail', ...curl.map((b) => here(b.text)), ...csbs.map((b) => here(b.text)), ...os.filter((b) => b.lang === 'sh').map((b) => here(b.text))].join('\n');
      await fs.writeFile(path.join(dir, 'flows.sh'), script);

      const run = spawn('bash', ['flows.sh'], { cwd: dir, env: { PATH: process.env.PATH, HOME: home, LANG: 'C.UTF-8' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      run.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
      run.stderr.setEncoding('utf8').on('data', (s: string) => (out += s));
      const code = await new Promise<number | null>((resolve) => run.once('close', resolve));
      assert.equal(code, 0, `the README's flows failed:\n${out.slice(-4000)}`);

      // What they did, seen from the catalog through the API.
      const who = await svc.login().catch(() => null);
      assert.equal(who, null, 'the test service has no fixed password: the README read the generated one');
      const volumes = await fs.readdir(path.join(data, 'volumes'));
      assert.equal(volumes.filter((f) => f.endsWith('.img')).length, 4, volumes.join(' ')); // web1, app1-sys, app1-data, app1
      assert.equal(volumes.filter((f) => f.endsWith('.qcow2')).length, 1, volumes.join(' ')); // db1
      assert.match(out, /^SUCCESS$/m, 'the restore job succeeded');
      assert.match(out, /"tasks":\[\{/, 'the policy ran a task');
      const jobs = svc.logs.filter((l) => l.msg === 'job succeeded').map((l) => l.jobType);
      for (const t of ['bksCreateBackup', 'bksRestoreBackup', 'bksDeleteBackup', 'csbsProtect', 'csbsRestore', 'csbsDelete']) assert.ok(jobs.includes(t), `${t} in ${jobs.join(' ')}`);
      assert.ok(jobs.filter((t) => t === 'bksCreateBackup').length >= 3, 'web1_daily, the policy run, app1_b1');
      assert.equal(svc.logs.filter((l) => l.msg === 'job failed').length, 0, JSON.stringify(svc.logs.filter((l) => l.msg === 'job failed')));
    } finally {
      await svc.stop();
    }
  });
});
