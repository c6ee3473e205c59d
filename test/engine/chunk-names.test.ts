/**
 * Chunk names: what each kind of repository files its chunks under, read back from a real backup's
 * index and compared with independent implementations; and encrypted repositories from before the
 * digest was recorded in the config (HMAC-SHA-256 names) keep working: dedup, restore, verify.
 */
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { blake3 } from '@noble/hashes/blake3.js';
import { DIGEST_BYTES } from '../../src/engine/chunk-digest.ts';
import { Repository, type RepositoryConfig } from '../../src/engine/repository.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import { LocalObjectStore } from '../../src/storage/local-store.ts';
import { backupFile, engineTestContext, initRepo, reopenRepo, restoreTo, TEST_PASSWORD } from '../helpers/repo.ts';
import { randomBytesSeeded, sha256File, TEST_KDF, writeVolume } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-names-');
const CHUNK = 64 * 1024;

/** The volume's chunks: random ones, one all-zero (a hole), a repeat. */
function volumeData(): Buffer {
  const a = randomBytesSeeded(3 * CHUNK, 11);
  return Buffer.concat([a, Buffer.alloc(CHUNK), a.subarray(0, CHUNK), randomBytesSeeded(CHUNK / 2, 12)]);
}

async function indexDigests(repo: Repository, backupId: string): Promise<string[]> {
  const m = await repo.readManifest(backupId);
  const out: string[] = [];
  for (const ref of m.indexSegments) {
    const seg = await repo.readIndexSegment(ref, backupId);
    for (let o = 0; o < seg.length; o += DIGEST_BYTES) out.push(seg.subarray(o, o + DIGEST_BYTES).toString('hex'));
  }
  return out;
}

function expectedNames(data: Buffer, name: (chunk: Buffer) => Uint8Array): string[] {
  const out: string[] = [];
  for (let o = 0; o < data.length; o += CHUNK) {
    const c = data.subarray(o, o + CHUNK);
    out.push(c.every((b) => b === 0) ? '0'.repeat(64) : Buffer.from(name(c)).toString('hex'));
  }
  return out;
}

describe('chunk names', () => {
  it('new encrypted repositories name chunks with keyed BLAKE3 under the MAC key; unencrypted ones with SHA-256', async () => {
    const dir = temp.make();
    const data = volumeData();
    const vol = path.join(dir, 'v.img');
    await writeVolume(vol, data);
    for (const encrypted of [true, false]) {
      const repo = await initRepo(path.join(dir, `repo-${encrypted}`), { encrypted });
      assert.equal(repo.config.chunkDigest, encrypted ? 'blake3-keyed' : 'sha256');
      // Format 2 exactly when the names are BLAKE3: builds that know only format 1 refuse it.
      assert.equal(repo.config.version, encrypted ? 2 : 1);
      const r = await backupFile(repo, vol, 'v', { pool });
      const key = repo.keys?.macKey;
      const want = expectedNames(data, (c) => (key ? blake3(c, { key }) : createHash('sha256').update(c).digest()));
      assert.deepEqual(await indexDigests(repo, r.manifest.id), want);
      assert.equal(r.stats.holeChunks, 1);
      assert.equal(r.stats.newChunks, 4, 'the repeated chunk is stored once');
    }
  });

  it('an encrypted repository from before chunk digests were recorded keeps its HMAC-SHA-256 names: dedup, restore and verify work', async () => {
    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const store = new LocalObjectStore(repoDir);
    await Repository.init(store, { password: TEST_PASSWORD, kdf: TEST_KDF, keyedDigest: 'hmac-sha256' });
    // Make the config look like one written before the field existed.
    const config = JSON.parse(Buffer.from(await store.get('config')).toString('utf8')) as RepositoryConfig;
    assert.equal(config.chunkDigest, 'hmac-sha256');
    assert.equal(config.version, 1);
    delete config.chunkDigest;
    await store.put('config', Buffer.from(JSON.stringify(config)));

    const data = volumeData();
    const vol = path.join(dir, 'v.img');
    await writeVolume(vol, data);
    const repo = await reopenRepo(repoDir, true);
    assert.equal(repo.chunkDigest.alg, 'hmac-sha256');
    const first = await backupFile(repo, vol, 'v', { pool });
    const key = repo.keys!.macKey;
    assert.deepEqual(await indexDigests(repo, first.manifest.id), expectedNames(data, (c) => createHmac('sha256', key).update(c).digest()));

    // A second volume sharing all but its last chunk: only that chunk is new.
    const data2 = Buffer.concat([data.subarray(0, 5 * CHUNK), randomBytesSeeded(CHUNK, 13)]);
    const vol2 = path.join(dir, 'v2.img');
    const sha2 = await writeVolume(vol2, data2);
    const again = await reopenRepo(repoDir, true);
    const second = await backupFile(again, vol2, 'v2', { pool });
    assert.equal(second.stats.newChunks, 1);
    assert.equal(second.stats.newBytes, CHUNK);
    const target = path.join(dir, 'restored.img');
    await restoreTo(again, second.manifest.id, target, pool);
    assert.equal(await sha256File(target), sha2);
    const report = await verifyRepository(again, { pool });
    assert.equal(report.ok, true);
    assert.equal(report.damagedChunks, 0);
  });

  it('a config naming an unknown digest, or a keyed one without encryption, is refused as corrupt', async () => {
    for (const [encrypted, alg] of [[true, 'md5'], [false, 'blake3-keyed'], [true, 'sha256']] as const) {
      const dir = temp.make();
      const store = new LocalObjectStore(dir);
      await Repository.init(store, encrypted ? { password: TEST_PASSWORD, kdf: TEST_KDF } : {});
      const config = JSON.parse(Buffer.from(await store.get('config')).toString('utf8')) as Record<string, unknown>;
      config.chunkDigest = alg;
      await store.put('config', Buffer.from(JSON.stringify(config)));
      await assert.rejects(reopenRepo(dir, encrypted), (err: Error & { code?: string }) => /unsupported chunk digest/.test(err.message), `${alg} encrypted=${encrypted}`);
    }
  });

  it('a repository of a newer format version is refused with a clear message, and left as it was', async () => {
    const dir = temp.make();
    const store = new LocalObjectStore(dir);
    await Repository.init(store, { password: TEST_PASSWORD, kdf: TEST_KDF });
    const config = JSON.parse(Buffer.from(await store.get('config')).toString('utf8')) as Record<string, unknown>;
    for (const version of [4, 0, '2', null]) {
      config.version = version;
      const text = Buffer.from(JSON.stringify(config));
      await store.put('config', text);
      await assert.rejects(reopenRepo(dir, true), (err: Error) => (version === 4 ? /format version 4, newer than this Haven reads \(up to 3\): upgrade Haven/ : /unsupported repository format version/).test(err.message), String(version));
      assert.deepEqual(Buffer.from(await store.get('config')), text);
    }
  });
});
