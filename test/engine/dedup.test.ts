/**
 * Deduplication: data shared between volumes, between backups of one volume and within one volume is
 * stored once; an unchanged volume costs nothing but its index and manifest.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { DEFAULT_CHUNK_SIZE } from '../../src/engine/repository.ts';
import { backupFile, initRepo, restoreTo, engineTestContext } from '../helpers/repo.ts';
import { dirBytes, MiB, overwrite, randomBytesSeeded, sha256, sha256File, writeRandomFile, writeVolume } from '../helpers/volumes.ts';

const CHUNK = DEFAULT_CHUNK_SIZE;
/** Index, chunk map, manifest and pack framing of one backup of a few dozen MiB: well under this. */
const METADATA_SLACK = 128 * 1024;

const { temp, pool } = engineTestContext('haven-dedup-');

for (const encrypted of [false, true]) {
  describe(`deduplication (${encrypted ? 'encrypted' : 'unencrypted'})`, () => {
    it('two volumes sharing 90% of their data: the second stores only the differing 10%', async () => {
      const dir = temp.make();
      const size = 32 * MiB;
      const a = randomBytesSeeded(size, 1);
      const diffStart = Math.floor(size * 0.9); // not chunk-aligned
      assert.notEqual(diffStart % CHUNK, 0);
      const b = Buffer.concat([a.subarray(0, diffStart), randomBytesSeeded(size - diffStart, 2)]);
      const diff = size - diffStart;
      await writeVolume(path.join(dir, 'a.img'), a);
      const shaB = await writeVolume(path.join(dir, 'b.img'), b);
      const repoDir = path.join(dir, 'repo');
      const repo = await initRepo(repoDir, { encrypted });

      const ra = await backupFile(repo, path.join(dir, 'a.img'), 'a', { pool });
      assert.equal(ra.stats.newBytes, size);
      const bytesAfterA = await dirBytes(repoDir);

      const rb = await backupFile(repo, path.join(dir, 'b.img'), 'b', { pool });
      assert.equal(rb.manifest.kind, 'full');
      assert.ok(rb.stats.newBytes >= diff, `newBytes ${rb.stats.newBytes} < differing ${diff}`);
      assert.ok(rb.stats.newBytes <= diff + 2 * CHUNK, `newBytes ${rb.stats.newBytes} > differing ${diff} + 2 chunks`);
      assert.ok(rb.stats.dedupBytes >= size - diff - CHUNK, `only ${rb.stats.dedupBytes} bytes deduplicated`);
      assert.equal(rb.stats.newBytes + rb.stats.dedupBytes + rb.stats.zeroBytes, size);
      const growth = (await dirBytes(repoDir)) - bytesAfterA;
      assert.ok(growth <= diff + 2 * CHUNK + METADATA_SLACK, `repository grew by ${growth} bytes for ${diff} differing bytes`);
      assert.ok(rb.stats.storedBytes <= diff + 2 * CHUNK + METADATA_SLACK, `storedBytes ${rb.stats.storedBytes}`);

      const target = path.join(dir, 'b.restored');
      await restoreTo(repo, rb.manifest.id, target, pool);
      assert.equal(await sha256File(target), shaB);
    });

    it('incremental after rewriting one contiguous 1% of a 64 MiB volume stores about 1%', async () => {
      const dir = temp.make();
      const size = 64 * MiB;
      const vol = path.join(dir, 'vol.img');
      const shaFirst = await writeRandomFile(vol, size, 3);
      const repoDir = path.join(dir, 'repo');
      const repo = await initRepo(repoDir, { encrypted });
      const first = await backupFile(repo, vol, 'vol', { pool });
      assert.equal(first.stats.newBytes, size);

      const onePercent = Math.ceil(size / 100);
      await overwrite(vol, 20 * MiB + 4321, randomBytesSeeded(onePercent, 4));
      const shaChanged = await sha256File(vol);
      const bytesBefore = await dirBytes(repoDir);
      const inc = await backupFile(repo, vol, 'vol', { pool, previous: first.manifest });
      assert.equal(inc.manifest.kind, 'incremental');
      assert.equal(inc.manifest.parentId, first.manifest.id);
      assert.ok(inc.stats.newBytes >= onePercent, `newBytes ${inc.stats.newBytes} < 1% (${onePercent})`);
      assert.ok(inc.stats.newBytes <= onePercent + 2 * CHUNK, `newBytes ${inc.stats.newBytes} > 1% + 2 chunks`);
      const growth = (await dirBytes(repoDir)) - bytesBefore;
      assert.ok(growth <= onePercent + 2 * CHUNK + METADATA_SLACK, `repository grew by ${growth} bytes`);

      const target = path.join(dir, 'restored.img');
      await restoreTo(repo, inc.manifest.id, target, pool);
      assert.equal(await sha256File(target), shaChanged);
      // The first backup still restores the original content.
      await restoreTo(repo, first.manifest.id, target, pool);
      assert.equal(await sha256File(target), shaFirst);
      assert.notEqual(shaFirst, shaChanged);
    });

    it('an unchanged volume backed up again stores no data, incremental or --full', async () => {
      const dir = temp.make();
      const vol = path.join(dir, 'vol.img');
      await writeRandomFile(vol, 16 * MiB + 100, 5);
      const repoDir = path.join(dir, 'repo');
      const repo = await initRepo(repoDir, { encrypted });
      const first = await backupFile(repo, vol, 'vol', { pool });
      const packsBefore = (await fs.readdir(path.join(repoDir, 'packs'), { recursive: true })).length;
      for (const full of [false, true]) {
        const again = await backupFile(repo, vol, 'vol', { pool, previous: first.manifest, full });
        assert.equal(again.manifest.kind, full ? 'full' : 'incremental');
        assert.equal(again.stats.newBytes, 0);
        assert.equal(again.stats.newChunks, 0);
        assert.equal(again.stats.packsWritten, 0);
        assert.equal(again.stats.dedupBytes, 16 * MiB + 100);
        assert.ok(again.stats.storedBytes < METADATA_SLACK, `an unchanged backup stored ${again.stats.storedBytes} bytes`);
        assert.equal(again.manifest.volumeDigest, first.manifest.volumeDigest);
      }
      assert.equal((await fs.readdir(path.join(repoDir, 'packs'), { recursive: true })).length, packsBefore);
    });

    it('a block repeated throughout one volume (across batches) is stored once', async () => {
      const dir = temp.make();
      const block = randomBytesSeeded(MiB, 6);
      const data = Buffer.concat(Array.from({ length: 16 }, () => block));
      const vol = path.join(dir, 'vol.img');
      const sha = await writeVolume(vol, data);
      const repo = await initRepo(path.join(dir, 'repo'), { encrypted });
      const { manifest, stats } = await backupFile(repo, vol, 'vol', { pool });
      assert.equal(stats.newBytes, MiB);
      assert.equal(stats.newChunks, MiB / CHUNK);
      assert.equal(stats.dedupBytes, 15 * MiB);
      assert.ok(stats.storedBytes < MiB + METADATA_SLACK);
      const target = path.join(dir, 'restored.img');
      await restoreTo(repo, manifest.id, target, pool);
      assert.equal(sha256(await fs.readFile(target)), sha);
    });
  });
}
