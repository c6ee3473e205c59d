/**
 * /healthz checks the repository, not just the process: its config must be readable where it was
 * opened. A repository emptied under the service, or a store that cannot be reached, makes it 503
 * with the reason; mended, it is 200 again.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import type { ObjectInfo } from '../../src/storage/object-store.ts';
import { DelegatingStore } from '../helpers/delegating-store.ts';
import { startService } from '../helpers/service.ts';
import { TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-healthz-');
after(() => temp.cleanup());

/** A store whose HEAD fails while `down` is set (a network outage). */
class OutageStore extends DelegatingStore {
  down = false;
  override head(key: string): Promise<ObjectInfo | null> {
    if (this.down) return Promise.reject(new Error('connect ECONNREFUSED 10.0.0.9:443'));
    return super.head(key);
  }
}

const PROBE_TTL_MS = 3000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('/healthz and the repository', () => {
  it('is 503 naming the repository when its config is gone or its store unreachable, 200 once mended', async () => {
    let store: OutageStore | undefined;
    const svc = await startService(temp, {}, { wrapStore: (s) => (store = new OutageStore(s)) });
    try {
      const health = async (): Promise<{ code: number; body: Record<string, string> }> => {
        const r = await svc.req({ method: 'GET', url: '/healthz' });
        return { code: r.statusCode, body: r.json() as Record<string, string> };
      };
      let h = await health();
      assert.equal(h.code, 200, JSON.stringify(h.body));
      assert.equal(h.body.repository, 'ok');

      const config = path.join(svc.dataDir, 'repository', 'config');
      await fs.rename(config, `${config}.away`);
      await sleep(PROBE_TTL_MS + 100);
      h = await health();
      assert.equal(h.code, 503);
      assert.equal(h.body.status, 'degraded');
      assert.match(h.body.reason!, /repository: the repository config is gone/);
      await fs.rename(`${config}.away`, config);

      store!.down = true;
      await sleep(PROBE_TTL_MS + 100);
      h = await health();
      assert.equal(h.code, 503);
      assert.match(h.body.repository!, /^unreachable: connect ECONNREFUSED/);

      store!.down = false;
      await sleep(PROBE_TTL_MS + 100);
      h = await health();
      assert.equal(h.code, 200, JSON.stringify(h.body));
    } finally {
      await svc.close();
    }
  });
});
