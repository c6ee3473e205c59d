/**
 * `haven agent token create --host NAME` on the SQLite catalog of a data folder (--data-dir, which
 * the outer `agent` command also takes), and `haven agent`'s refusals without its settings.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { Catalog } from '../../src/catalog/catalog.ts';
import { SqliteDatabase } from '../../src/catalog/sqlite-database.ts';
import { AgentService } from '../../src/services/agent-service.ts';
import { systemClock } from '../../src/domain/clock.ts';
import { cliErrorMessage, runCli, runCliJson, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-agent-cli-');
after(() => temp.cleanup());

describe('haven agent (command line)', () => {
  it('token create --host --data-dir makes a token of that catalog, for that host; list shows it, revoke ends it; a bad host name is refused', async () => {
    const dataDir = temp.make('data');
    const cwd = temp.make('cwd');
    const t = await runCliJson<{ id: string; host: string; token: string }>(['agent', 'token', 'create', '--host', 'kvm-07', '--data-dir', dataDir, '--json'], { cwd });
    assert.equal(t.host, 'kvm-07');
    assert.match(t.token, /^hvagent_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$/);
    assert.equal(existsSync(path.join(cwd, 'data')), false, 'nothing written to a data folder in the working directory');
    const db = new SqliteDatabase(path.join(dataDir, 'catalog.sqlite'));
    try {
      const agents = new AgentService(new Catalog(db), systemClock, { leaseMs: 30_000 });
      assert.deepEqual(await agents.authenticate(t.token), { host: 'kvm-07', tokenId: t.id });
      await assert.rejects(agents.authenticate(t.token.slice(0, -1) + (t.token.endsWith('A') ? 'B' : 'A')), /not valid/);
    } finally {
      await db.close();
    }
    // Listed without the secret; revoked, it is refused; revoking again says so.
    const listed = await runCliJson<Array<{ id: string; host: string; revoked_at: string | null }>>(['agent', 'token', 'list', '--data-dir', dataDir, '--json']);
    assert.deepEqual(listed.map((x) => [x.id, x.host, x.revoked_at]), [[t.id, 'kvm-07', null]]);
    const rev = await runCli(['agent', 'token', 'revoke', t.id, '--data-dir', dataDir]);
    assert.equal(rev.code, 0, rev.stderr);
    const db2 = new SqliteDatabase(path.join(dataDir, 'catalog.sqlite'));
    try {
      await assert.rejects(new AgentService(new Catalog(db2), systemClock, { leaseMs: 30_000 }).authenticate(t.token), /not valid/);
    } finally {
      await db2.close();
    }
    assert.match(cliErrorMessage(await runCli(['agent', 'token', 'revoke', t.id, '--data-dir', dataDir])), /no agent token/);
    const bad = await runCli(['agent', 'token', 'create', '--host', '../evil', '--data-dir', dataDir]);
    assert.match(cliErrorMessage(bad), /invalid host name/);
  });

  it('agent refuses to start without HAVEN_CONTROL_URL or HAVEN_AGENT_TOKEN_FILE, saying which', async () => {
    const dataDir = temp.make('agent');
    const noUrl = await runCli(['agent', '--data-dir', dataDir], { env: { HAVEN_CONTROL_URL: '', HAVEN_AGENT_TOKEN_FILE: '' } });
    assert.match(cliErrorMessage(noUrl), /HAVEN_CONTROL_URL is not set/);
    const noToken = await runCli(['agent', '--data-dir', dataDir], { env: { HAVEN_CONTROL_URL: 'http://127.0.0.1:9', HAVEN_AGENT_TOKEN_FILE: '' } });
    assert.match(cliErrorMessage(noToken), /HAVEN_AGENT_TOKEN_FILE is not set/);
    const missing = await runCli(['agent', '--data-dir', dataDir], { env: { HAVEN_CONTROL_URL: 'http://127.0.0.1:9', HAVEN_AGENT_TOKEN_FILE: path.join(dataDir, 'nope') } });
    assert.match(cliErrorMessage(missing), /cannot read HAVEN_AGENT_TOKEN_FILE/);
  });
});
