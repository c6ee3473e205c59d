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
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Repository } from '../../src/engine/repository.ts';
import { S3_BUCKET, S3_CREDENTIALS, startS3, type TestS3 } from '../helpers/s3-server.ts';
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

  it('a missing bucket is an error saying so, never "no such object" (which would read as "no repository yet")', async () => {
    const s = new S3ObjectStore({ url: 's3://no-such-bucket/x', endpoint: s3.endpoint, credentials: S3_CREDENTIALS });
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
    const raw = new S3Client({ region: 'us-east-1', endpoint: s3.endpoint, forcePathStyle: true, credentials: S3_CREDENTIALS });
    try {
      await raw.send(new PutObjectCommand({ Bucket: S3_BUCKET, Key: 'foreign/packs/ab/not ours', Body: 'x' }));
      assert.deepEqual((await collectKeys(s, 'packs/')).map((o) => o.key), ['packs/ab/real']);
    } finally {
      raw.destroy();
    }
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
    await assert.rejects(Repository.init(store, {}), /ignores conditional writes \(If-None-Match: \*\)/);
    assert.deepEqual(await collectKeys(store, ''), []);
    // The store itself still reads and writes; only the exclusive create is refused.
    await store.put('x', new Uint8Array([1]));
    assert.deepEqual([...(await store.get('x'))], [1]);
  });
});
