/**
 * The shipped alert rules (deploy/prometheus/haven-rules.yml) are valid Prometheus rules, and fire
 * when they should and only then (promtool's unit tests, haven-rules.test.yml); every metric they
 * use is one Haven exports (checked against a live service's /metrics).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, describe, it } from 'node:test';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { TempDirs } from '../helpers/volumes.ts';

const run = promisify(execFile);
const dir = path.resolve(import.meta.dirname, '..', '..', 'deploy', 'prometheus');
const rules = path.join(dir, 'haven-rules.yml');
const temp = new TempDirs('haven-rules-');
after(() => temp.cleanup());

async function promtoolMissing(): Promise<string | false> {
  try {
    await run('promtool', ['--version']);
    return false;
  } catch {
    return 'promtool (Debian package prometheus) is not installed';
  }
}

describe('Prometheus alert rules', async () => {
  const skip = skipOutsideCi(await promtoolMissing());

  it('pass promtool check rules', { skip }, async () => {
    const r = await run('promtool', ['check', 'rules', rules]);
    assert.match(r.stdout, /SUCCESS: 7 rules found/);
  });

  it('fire as their unit tests say (promtool test rules)', { skip }, async () => {
    const r = await run('promtool', ['test', 'rules', 'haven-rules.test.yml'], { cwd: dir });
    assert.match(r.stdout, /SUCCESS/);
  });

  it('use only metrics Haven exports', async () => {
    const text = readFileSync(rules, 'utf8');
    const used = new Set([...text.matchAll(/\bhaven_[a-z_]+/g)].map((m) => m[0]));
    assert.ok(used.size >= 8, [...used].join(' '));
    const svc = await startService(temp);
    try {
      const who = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const r = await svc.req({ method: 'GET', url: '/metrics', token: who.token });
      const exported = new Set([...r.body.matchAll(/^# TYPE (haven_[a-z_]+) /gm)].map((m) => m[1]!));
      for (const name of used) assert.ok(exported.has(name), `${name} is used by the rules but not exported`);
    } finally {
      await svc.close();
    }
  });
});
