/**
 * The S3 object store against a real S3-compatible HTTP server (test/helpers/s3-server.ts): the
 * conformance suite every store passes, then what is S3's own: prefixes keep repositories apart,
 * listings page past 1,000 keys, URLs are checked.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { collectKeys } from '../../src/storage/object-store.ts';
import { S3ObjectStore } from '../../src/storage/s3-store.ts';
import { parseS3Url } from '../../src/storage/s3-url.ts';
import { describeObjectStore } from '../../src/storage/store-conformance.ts';
import { startS3, type TestS3 } from '../helpers/s3-server.ts';
import { TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-s3-');
let s3: TestS3;
before(async () => {
  s3 = await startS3(temp);
});
after(async () => {
  await s3.close();
  temp.cleanup();
});

describeObjectStore('s3', () => s3.store(`conf-${randomBytes(4).toString('hex')}`));

describe('S3ObjectStore specifics', () => {
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

  it('lists past one page of 1,000 keys, each once', async () => {
    const s = s3.store('many');
    const keys = Array.from({ length: 1150 }, (_, i) => `locks/k${String(i).padStart(5, '0')}`);
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
});
