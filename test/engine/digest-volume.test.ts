/**
 * digestVolume (`haven digest`) gives the volume digest a backup of the same bytes records, with
 * holes and a short last chunk, for keyed and unkeyed chunk digests; a changed byte changes it.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { digestVolume } from '../../src/engine/digest-volume.ts';
import { FileVolumeSource } from '../../src/engine/volume-source.ts';
import { backupFile, engineTestContext, initRepo } from '../helpers/repo.ts';
import { volumeDigestOfBytes } from '../helpers/volume-digest.ts';
import { MiB, overwrite, randomBytesSeeded, writeVolume } from '../helpers/volumes.ts';

const { temp, pool } = engineTestContext('haven-digest-');

async function digestFile(repo: Parameters<typeof digestVolume>[0], file: string): Promise<string> {
  const source = await FileVolumeSource.open(file);
  try {
    return await digestVolume(repo, source, { pool });
  } finally {
    await source.close();
  }
}

describe('digestVolume', () => {
  for (const encrypted of [false, true]) {
    it(`equals the backup's volume digest (${encrypted ? 'keyed BLAKE3' : 'SHA-256'} chunk names), holes and a short last chunk included`, async () => {
      const dir = temp.make();
      const data = Buffer.concat([randomBytesSeeded(3 * MiB, 801), Buffer.alloc(9 * MiB), randomBytesSeeded(MiB + 12345, 802)]);
      const vol = path.join(dir, 'v.img');
      await writeVolume(vol, data);
      const repo = await initRepo(path.join(dir, 'repo'), { encrypted });
      const digest = await digestFile(repo, vol);
      assert.equal(digest, volumeDigestOfBytes(repo, data));
      const { manifest, stats } = await backupFile(repo, vol, 'v', { pool });
      assert.ok(stats.holeChunks > 0);
      assert.equal(manifest.volumeDigest, digest);
      await overwrite(vol, 5 * MiB, Uint8Array.of(1)); // one byte in a hole
      assert.notEqual(await digestFile(repo, vol), digest);
    });
  }

  it('of an empty volume: its header alone, as a backup records it', async () => {
    const dir = temp.make();
    const vol = path.join(dir, 'empty.img');
    await writeVolume(vol, Buffer.alloc(0));
    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: false });
    assert.equal(await digestFile(repo, vol), (await backupFile(repo, vol, 'e', { pool })).manifest.volumeDigest);
  });
});
