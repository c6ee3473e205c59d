/**
 * The S3 object store against real S3 HTTP servers: s3rver (test/helpers/s3-server.ts) and OpenStack
 * Swift's s3api (test/helpers/swift.ts, which checks signatures and refuses what a production
 * gateway refuses). On each: the conformance suite every store passes, then what is S3's own:
 * prefixes keep repositories apart, listings page past 1,000 keys, a missing bucket is named. Then
 * creating a repository where conditional writes are ignored (s3rver as it is) or refused (Swift).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { loadConfig, s3Settings, s3SettingsFromEnv } from '../../src/config/config.ts';
import { collectKeys } from '../../src/storage/object-store.ts';
import { openObjectStore } from '../../src/storage/open-store.ts';
import { S3ObjectStore } from '../../src/storage/s3-store.ts';
import { parseS3Url } from '../../src/storage/s3-url.ts';
import { describeObjectStore } from '../../src/storage/store-conformance.ts';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Repository } from '../../src/engine/repository.ts';
import { startS3, type TestS3 } from '../helpers/s3-server.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { ACCESS_LOG_MARK, startSwift, swiftMissing, type SwiftS3 } from '../helpers/swift.ts';
import { makeLoopbackCert } from '../helpers/tls.ts';
import { TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-s3-');
after(() => temp.cleanup());

const SERVERS: { name: string; start: (t: TempDirs) => Promise<TestS3>; skip: string | false }[] = [
  { name: 's3rver', start: (t) => startS3(t), skip: false },
  { name: 'swift', start: startSwift, skip: skipOutsideCi(swiftMissing()) },
];

for (const server of SERVERS) {
  describe(`S3ObjectStore on ${server.name}`, { skip: server.skip }, () => {
    let s3: TestS3;
    before(async () => {
      s3 = await server.start(temp);
    });
    after(() => s3?.close());

    // A short settle time for create claims: both servers here list a finished PUT at once.
    describeObjectStore(server.name, () => s3.store(`conf-${randomBytes(4).toString('hex')}`, { claimSettleMs: 100 }));
    describeS3Specifics(() => s3);
    if (server.name === 'swift') describeRefusedConditionalWrites(() => s3);
  });
}

function describeS3Specifics(server: () => TestS3): void {
  describe('S3ObjectStore specifics', () => {
    let s3: TestS3;
    before(() => {
      s3 = server();
    });

    it('counts its requests by kind, one for each call here', async () => {
      const s = s3.store('counted');
      await s.put('a', new Uint8Array(10));
      await s.get('a');
      await s.get('a', { offset: 2, length: 3 });
      await s.head('a');
      await collectKeys(s, '');
      await s.delete('a');
      assert.deepEqual(s.stats, { getWhole: 1, getRange: 1, put: 1, head: 1, list: 1, delete: 1 });
    });

    it('keeps repositories under different prefixes of one bucket apart', async () => {
      const a = s3.store('repo-a');
      const b = s3.store('repo-a-b'); // a prefix that extends the other one's name
      await a.put('config', new Uint8Array([1]));
      await b.put('config', new Uint8Array([2]));
      await a.put('packs/ab/x', new Uint8Array([3]));
      assert.deepEqual((await collectKeys(a, '')).map((o) => o.key).sort(), ['config', 'packs/ab/x']);
      assert.deepEqual((await collectKeys(b, '')).map((o) => o.key), ['config']);
      assert.deepEqual([...(await b.get('config'))], [2]);
      await a.delete('config');
      assert.deepEqual([...(await b.get('config'))], [2]);
    });

    it('lists past one page of keys, each once', async () => {
      const s = s3.store('many');
      const keys = Array.from({ length: s3.listPageKeys + 150 }, (_, i) => `locks/k${String(i).padStart(5, '0')}`);
      for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((k) => s.put(k, new Uint8Array(0))));
      const listed = (await collectKeys(s, 'locks/')).map((o) => o.key);
      assert.equal(listed.length, keys.length);
      assert.deepEqual([...new Set(listed)].sort(), keys);
    });

    it('reports a server it cannot reach as an error, not as a missing object', async () => {
      const s = new S3ObjectStore({ url: 's3://nowhere/x', endpoint: 'http://127.0.0.1:9', credentials: { accessKeyId: 'a', secretAccessKey: 'b' } });
      try {
        await assert.rejects(s.head('config'), (err: Error) => !/not found/.test(err.message));
      } finally {
        s.close();
      }
    });

    it('accepts s3://bucket and s3://bucket/prefix, and refuses anything else with the reason', () => {
      assert.deepEqual(parseS3Url('s3://backups'), { bucket: 'backups', prefix: '' });
      assert.deepEqual(parseS3Url('s3://backups/haven/site-1/'), { bucket: 'backups', prefix: 'haven/site-1/' });
      for (const bad of ['s3://', 's3://UPPER', 'http://x/y', 's3://b/../x', 's3://b/a//c', 's3:/b']) {
        assert.throws(() => parseS3Url(bad), /S3 repository URL|invalid object key/, bad);
      }
    });

    it('a missing bucket is an error saying so, never "no such object" (which would read as "no repository yet")', async () => {
      const s = new S3ObjectStore({ url: 's3://no-such-bucket/x', endpoint: s3.endpoint, credentials: s3.credentials });
      try {
        await assert.rejects(s.head('config'), /bucket no-such-bucket does not exist/);
        await assert.rejects(s.get('config'), /bucket no-such-bucket does not exist/);
      } finally {
        s.close();
      }
    });

    it('keys that are not Haven\'s (a console\'s folder marker, spaces) are left out of listings', async () => {
      const s = s3.store('foreign');
      await s.put('packs/ab/real', new Uint8Array([1]));
      const raw = new S3Client({ region: 'us-east-1', endpoint: s3.endpoint, forcePathStyle: true, credentials: s3.credentials });
      try {
        await raw.send(new PutObjectCommand({ Bucket: s3.bucket, Key: 'foreign/packs/ab/not ours', Body: 'x' }));
        assert.deepEqual((await collectKeys(s, 'packs/')).map((o) => o.key), ['packs/ab/real']);
      } finally {
        raw.destroy();
      }
    });
  });
}

describe('S3ObjectStore on Swift over HTTPS', { skip: skipOutsideCi(swiftMissing()) }, () => {
  const t = new TempDirs('haven-s3tls-');
  let swift: SwiftS3;
  let ca: Buffer;
  before(async () => {
    const tls = makeLoopbackCert(t.make());
    ca = readFileSync(tls.certFile);
    swift = await startSwift(t, { tls });
  });
  after(async () => {
    await swift?.close();
    t.cleanup();
  });

  describeObjectStore('swift over https', () => swift.store(`tls-${randomBytes(4).toString('hex')}`, { claimSettleMs: 100, ca }));

  /** The X-Amz-Content-Sha256 header of the last PUT of `key` in Swift's access log (s3api checks the signature over it). */
  const loggedHash = (log: string, key: string): string | undefined => {
    const line = readFileSync(log, 'utf8').split('\n').filter((l) => l.includes(`${ACCESS_LOG_MARK} PUT `) && l.includes(key)).at(-1);
    return line && /X-Amz-Content-Sha256:%20(\S+)/i.exec(line)?.[1];
  };

  it('sends PUT bodies unhashed over TLS (UNSIGNED-PAYLOAD) and hashed over plain HTTP, each accepted by the server', async () => {
    const body = randomBytes(100_000);
    const tls = swift.store('unsigned', { ca });
    await tls.put('over/tls', body);
    assert.deepEqual(Buffer.from(await tls.get('over/tls')), body);
    assert.equal(loggedHash(swift.proxyLog, 'over/tls'), 'UNSIGNED-PAYLOAD');
    const plainSwift = await startSwift(t);
    try {
      const plain = plainSwift.store('signed');
      await plain.put('over/http', body);
      assert.deepEqual(Buffer.from(await plain.get('over/http')), body);
      assert.equal(loggedHash(plainSwift.proxyLog, 'over/http'), createHash('sha256').update(body).digest('hex'));
    } finally {
      await plainSwift.close();
    }
  });

  it('still signs every request: a wrong secret is refused over TLS and stores nothing', async () => {
    const wrong = new S3ObjectStore({ url: `s3://${swift.bucket}/wrong`, endpoint: swift.endpoint, region: 'us-east-1', credentials: { accessKeyId: swift.credentials.accessKeyId, secretAccessKey: 'not-the-secret' }, ca });
    try {
      await assert.rejects(wrong.put('x', new Uint8Array(10)), (err: Error) => /signature|denied|forbidden/i.test(`${err.name} ${err.message}`));
    } finally {
      wrong.close();
    }
    assert.equal(await swift.store('wrong', { ca }).head('x'), null);
  });
});

describe('S3ObjectStore on a server that ignores conditional writes', () => {
  const t = new TempDirs('haven-s3plain-');
  let plain: TestS3;
  before(async () => {
    plain = await startS3(t, { conditionalWrites: false });
  });
  after(async () => {
    await plain.close();
    t.cleanup();
  });

  it('refuses to create a repository there, with the reason, and leaves nothing behind', async () => {
    const store = plain.store('repo');
    await assert.rejects(Repository.init(store, {}), /ignores conditional writes \(If-None-Match: \*\).*HAVEN_S3_CONDITIONAL_WRITES=false/);
    assert.deepEqual(await collectKeys(store, ''), []);
    // The store itself still reads and writes; only the exclusive create is refused.
    await store.put('x', new Uint8Array([1]));
    assert.deepEqual([...(await store.get('x'))], [1]);
  });

  it('with conditional writes off, creates it with a claim (and only once)', async () => {
    const store = plain.store('claimed', { conditionalWrites: false, claimSettleMs: 100 });
    const repo = await Repository.init(store, {});
    await assert.rejects(Repository.init(plain.store('claimed', { conditionalWrites: false, claimSettleMs: 100 }), {}), /already exists/);
    assert.equal((await Repository.open(store)).config.id, repo.config.id);
    assert.deepEqual((await collectKeys(store, '')).map((o) => o.key), ['config'], 'no claim is left behind');
  });
});

describe('S3 settings', () => {
  it('HAVEN_S3_CONCURRENCY sets the pack uploads in flight (default 3), HAVEN_S3_CONDITIONAL_WRITES the create; bad values are refused naming the setting', async () => {
    assert.deepEqual(s3SettingsFromEnv({}), { endpoint: '', region: '', conditionalWrites: true, concurrency: 3 });
    const settings = s3SettingsFromEnv({ HAVEN_S3_CONCURRENCY: '6', HAVEN_S3_CONDITIONAL_WRITES: 'false', HAVEN_S3_ENDPOINT: 'http://127.0.0.1:9' });
    assert.equal(settings.concurrency, 6);
    assert.equal(settings.conditionalWrites, false);
    const store = await openObjectStore('s3://bucket/p', settings);
    try {
      assert.equal(store.writeConcurrency, 6);
    } finally {
      await store.close?.();
    }
    assert.throws(() => s3SettingsFromEnv({ HAVEN_S3_CONCURRENCY: '0' }), /invalid HAVEN_S3_CONCURRENCY: must be at least 1/);
    assert.throws(() => s3SettingsFromEnv({ HAVEN_S3_CONCURRENCY: '17' }), /invalid HAVEN_S3_CONCURRENCY: must be at most 16/);
    assert.throws(() => s3SettingsFromEnv({ HAVEN_S3_CONDITIONAL_WRITES: 'no' }), /invalid HAVEN_S3_CONDITIONAL_WRITES: expected true or false/);
    // The service reads the same settings through its configuration.
    assert.deepEqual(s3Settings(loadConfig({ HAVEN_DATA_DIR: temp.make('data'), HAVEN_S3_CONCURRENCY: '8', HAVEN_S3_CONDITIONAL_WRITES: 'false' })), { endpoint: '', region: '', conditionalWrites: false, concurrency: 8 });
    // The local store keeps one pack write at a time.
    assert.equal((await openObjectStore(temp.make('local'), settings)).writeConcurrency, undefined);
  });
});

/** Swift's s3api answers `If-None-Match: *` on PUT with 501 Not Implemented. */
function describeRefusedConditionalWrites(server: () => TestS3): void {
  describe('creating a repository where conditional writes are refused', () => {
    let swift: TestS3;
    before(() => {
      swift = server();
    });

    it('without HAVEN_S3_CONDITIONAL_WRITES=false: refused, naming the location and the setting, leaving nothing behind', async () => {
      const store = swift.store('strict', { conditionalWrites: true });
      await assert.rejects(Repository.init(store, {}), (err: Error) => {
        assert.match(err.message, /^the S3 server of s3:\/\/haven-test\/strict\/ does not support conditional writes/);
        assert.match(err.message, /Set HAVEN_S3_CONDITIONAL_WRITES=false/);
        return true;
      });
      assert.deepEqual(await collectKeys(store, ''), []);
    });

    it('with it, a claim left by a crashed creator holds creation back with an error naming it, and nothing is written', async () => {
      const store = swift.store('left', { claimSettleMs: 20 });
      await store.put('create-claims/config/0000000000000000', new Uint8Array(0));
      await assert.rejects(Repository.init(store, {}), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'REPOSITORY_LOCKED');
        assert.match(err.message, /another process is creating s3:\/\/haven-test\/left\/config \(create claims s3:\/\/haven-test\/left\/create-claims\/config\/0000000000000000\).*delete those claims/);
        return true;
      });
      assert.deepEqual((await collectKeys(store, '')).map((o) => o.key), ['create-claims/config/0000000000000000']);
    });

    it('with it: of four concurrent creators (own clients, as separate processes) exactly one creates, the others are told it exists, and all open the same config', async () => {
      const stores = [1, 2, 3, 4].map(() => swift.store('race', { claimSettleMs: 250 }));
      const results = await Promise.allSettled(stores.map((s) => Repository.init(s, {})));
      const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      assert.equal(won.length, 1, JSON.stringify(results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'created'))));
      for (const r of results) if (r.status === 'rejected') assert.equal((r.reason as { code?: string }).code, 'REPOSITORY_EXISTS', (r.reason as Error).message);
      for (const s of stores) assert.equal((await Repository.open(s)).config.id, won[0]!.config.id);
      assert.deepEqual((await collectKeys(stores[0]!, '')).map((o) => o.key), ['config'], 'no claim is left behind');
    });
});
}
