/**
 * Block devices as volumes and restore targets, through loop devices. Skipped where loop devices
 * cannot be attached (not root, no loop driver), except under CI, where that fails.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { isAppError, ErrorCode } from '../../src/domain/errors.ts';
import { writeBackup } from '../../src/engine/backup-writer.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { FileVolumeSource } from '../../src/engine/volume-source.ts';
import { engineTestContext, initRepo } from '../helpers/repo.ts';
import { MiB, randomBytesSeeded } from '../helpers/volumes.ts';
import { skipOutsideCi } from '../helpers/skip.ts';
import { volumeDigestOfBytes } from '../helpers/volume-digest.ts';

const { temp, pool } = engineTestContext('haven-blockdev-');
const attached: string[] = [];

function attach(file: string): string | null {
  try {
    const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    attached.push(dev);
    return dev;
  } catch {
    return null;
  }
}

function loopDevicesUsable(): boolean {
  if (process.getuid?.() !== 0) return false;
  const dir = temp.make();
  const probe = path.join(dir, 'probe.img');
  execFileSync('truncate', ['-s', '1M', probe]);
  const dev = attach(probe);
  return dev !== null;
}

after(() => {
  for (const dev of attached) {
    try {
      execFileSync('losetup', ['-d', dev], { stdio: 'ignore' });
    } catch {
      // already detached
    }
  }
});

const usable = loopDevicesUsable();

describe('block devices', { skip: skipOutsideCi(usable ? false : 'loop devices cannot be attached here') }, () => {
  it('backs up a block device and restores it onto another one holding old data, bit-identical', async () => {
    const dir = temp.make();
    // 40 MiB: random, a zero region (a hole in the backup), random again.
    const volume = Buffer.concat([randomBytesSeeded(16 * MiB, 11), Buffer.alloc(8 * MiB), randomBytesSeeded(16 * MiB, 12)]);
    const srcFile = path.join(dir, 'src.img');
    await fs.writeFile(srcFile, volume);
    const srcDev = attach(srcFile)!;

    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: true });
    const source = await FileVolumeSource.open(srcDev);
    assert.equal(source.sizeBytes, volume.length, 'device size read from sysfs');
    const { manifest, stats } = await writeBackup(repo, source, { volume: { id: 'dev', name: 'dev' }, pool });
    await source.close();
    assert.equal(manifest.volumeDigest, volumeDigestOfBytes(repo, volume));
    assert.equal(stats.zeroBytes, 8 * MiB);

    // The target device is larger and full of 0xFF: the hole must be written as zeros over it.
    const dstFile = path.join(dir, 'dst.img');
    await fs.writeFile(dstFile, Buffer.alloc(48 * MiB, 0xff));
    const dstDev = attach(dstFile)!;
    const r = await restoreBackup(repo, manifest, dstDev, { pool });
    assert.equal('volumeDigest' in r && r.volumeDigest, manifest.volumeDigest);
    assert.equal(r.writtenBytes, volume.length, 'holes are written on a device');
    const fh = await fs.open(dstDev, 'r');
    const back = Buffer.alloc(48 * MiB);
    await fh.read(back, 0, back.length, 0);
    await fh.close();
    assert.ok(back.subarray(0, volume.length).equals(volume), 'device holds the volume');
    assert.ok(back.subarray(volume.length).every((b) => b === 0xff), 'bytes past the volume are untouched');
  });

  it('refuses a block device smaller than the backup, writing nothing', async () => {
    const dir = temp.make();
    const volume = randomBytesSeeded(4 * MiB, 21);
    const srcFile = path.join(dir, 'src.img');
    await fs.writeFile(srcFile, volume);
    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: false });
    const source = await FileVolumeSource.open(srcFile);
    const { manifest } = await writeBackup(repo, source, { volume: { id: 'v', name: 'v' }, pool });
    await source.close();

    const small = path.join(dir, 'small.img');
    await fs.writeFile(small, Buffer.alloc(2 * MiB, 0xab));
    const smallDev = attach(small)!;
    await assert.rejects(restoreBackup(repo, manifest, smallDev, { pool }), (err) => isAppError(err, ErrorCode.TargetUnwritable) && /block device/.test((err as Error).message));
    const after = await fs.readFile(small);
    assert.ok(after.every((b) => b === 0xab), 'nothing was written');
  });
});
