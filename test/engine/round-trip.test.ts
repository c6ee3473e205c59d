/**
 * backup -> restore is bit-identical: empty, odd-sized, all-zero, random, compressible, incremental
 * and a 10 GiB sparse volume, with and without encryption.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { constants as fsConstants, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { AppError, ErrorCode } from '../../src/domain/errors.ts';
import type { BackupManifest } from '../../src/engine/manifest.ts';
import { DEFAULT_CHUNK_SIZE } from '../../src/engine/repository.ts';
import { backupFile, initRepo, reopenRepo, restoreTo, engineTestContext } from '../helpers/repo.ts';
import { allocatedBytes, assertExtents, GiB, KiB, listFilesRecursive, makeSparseFile, MiB, overwrite, randomBytesSeeded, sha256, sha256File, writeRandomFile, writeVolume } from '../helpers/volumes.ts';
import { volumeDigestOfBytes, volumeDigestOfExtents } from '../helpers/volume-digest.ts';

const CHUNK = DEFAULT_CHUNK_SIZE;

const { temp, pool } = engineTestContext('haven-rt-');

/** Backs `data` up into a new repository, restores it through a freshly opened repository, compares. */
async function roundTrip(data: Buffer, opts: { encrypted: boolean; chunkSizeBytes?: number; packTargetBytes?: number }) {
  const dir = temp.make();
  const vol = path.join(dir, 'volume.img');
  const want = await writeVolume(vol, data);
  const repoDir = path.join(dir, 'repo');
  const repo = await initRepo(repoDir, opts);
  const { manifest, stats } = await backupFile(repo, vol, 'vol', { pool });
  assert.equal(manifest.sizeBytes, data.length);
  assert.equal(manifest.volumeDigest, volumeDigestOfBytes(repo, data));
  const target = path.join(dir, 'restored.img');
  const r = await restoreTo(await reopenRepo(repoDir, opts.encrypted), manifest.id, target, pool);
  assert.equal('volumeDigest' in r && r.volumeDigest, manifest.volumeDigest);
  assert.equal(r.verified, true);
  const back = await fs.readFile(target);
  assert.equal(back.length, data.length);
  assert.equal(Buffer.compare(back, data), 0, 'restored bytes differ from the volume');
  assert.equal(sha256(back), want);
  return { manifest, stats, dir, target, repoDir };
}

describe('round trip', () => {
  it('empty volume (0 bytes), encrypted', async () => {
    const { manifest, stats } = await roundTrip(Buffer.alloc(0), { encrypted: true });
    assert.equal(manifest.chunkCount, 0);
    assert.equal(stats.newBytes, 0);
    assert.equal(stats.packsWritten, 0);
  });

  it('volume smaller than one chunk (100 bytes), unencrypted', async () => {
    const { manifest, stats } = await roundTrip(randomBytesSeeded(100, 11), { encrypted: false });
    assert.equal(manifest.chunkCount, 1);
    assert.equal(stats.newBytes, 100);
  });

  it('size not a multiple of the chunk size (5 MiB + 12345 bytes), unencrypted', async () => {
    const size = 5 * MiB + 12345;
    const { manifest, stats } = await roundTrip(randomBytesSeeded(size, 12), { encrypted: false });
    assert.equal(manifest.chunkCount, Math.ceil(size / CHUNK));
    assert.equal(stats.newBytes, size);
    assert.equal(stats.newChunks, manifest.chunkCount);
  });

  it('size not a multiple of the chunk size, encrypted, 16 KiB chunks, last partial chunk all zero', async () => {
    const chunk = 16 * KiB;
    const data = Buffer.concat([randomBytesSeeded(3 * chunk, 13), Buffer.alloc(1000)]);
    const { manifest, stats } = await roundTrip(data, { encrypted: true, chunkSizeBytes: chunk });
    assert.equal(manifest.chunkSizeBytes, chunk);
    assert.equal(manifest.chunkCount, 4);
    assert.equal(stats.holeChunks, 1);
    assert.equal(stats.zeroBytes, 1000);
    assert.equal(stats.newBytes, 3 * chunk);
  });

  it('chunks larger than a pack after packs of small ones (4 MiB chunks, 1 MiB packs): pack buffers are reused only when big enough', async () => {
    // Log-like lines with a random field: ~4x compressible, so two chunks make one ~2 MiB pack.
    const text = (seed: number): Buffer => {
      const r = randomBytesSeeded(1 * MiB, seed);
      return Buffer.from(Array.from({ length: 250_000 }, (_, i) => `${i} ok ${r.toString('hex', (i * 4) % (MiB - 4), ((i * 4) % (MiB - 4)) + 4)}\n`).join('')).subarray(0, 4 * MiB);
    };
    // compressible, compressible (one pack, whose buffer is then free), random (4 MiB, larger than that buffer), ...
    const data = Buffer.concat([text(1), text(2), randomBytesSeeded(4 * MiB, 14), text(3), text(4), randomBytesSeeded(4 * MiB, 15)]);
    const { stats } = await roundTrip(data, { encrypted: false, chunkSizeBytes: 4 * MiB, packTargetBytes: 1 * MiB });
    assert.equal(stats.newChunks, 6);
    assert.ok(stats.packsWritten >= 3, `packs: ${stats.packsWritten}`);
  });

  it('all zeros (32 MiB), encrypted: nothing stored, restored sparse and identical', async () => {
    const size = 32 * MiB;
    const { stats, target } = await roundTrip(Buffer.alloc(size), { encrypted: true });
    assert.equal(stats.newBytes, 0);
    assert.equal(stats.zeroBytes, size);
    assert.equal(stats.holeChunks, size / CHUNK);
    assert.equal(stats.packsWritten, 0);
    assert.ok(await allocatedBytes(target) < MiB, `restored all-zero volume allocates ${await allocatedBytes(target)} bytes`);
  });

  it('random data (24 MiB), encrypted: stored once, incompressible', async () => {
    const size = 24 * MiB;
    const { stats } = await roundTrip(randomBytesSeeded(size, 14), { encrypted: true });
    assert.equal(stats.newBytes, size);
    assert.ok(stats.storedBytes >= size, 'random data cannot shrink');
    assert.ok(stats.storedBytes < size * 1.01, `stored ${stats.storedBytes} bytes for ${size}`);
  });

  it('compressible data with zero runs and repeated chunks, unencrypted', async () => {
    const text = Buffer.from('Lorem ipsum dolor sit amet, consectetur adipiscing elit. ');
    const repeated = randomBytesSeeded(CHUNK, 99);
    const parts: Buffer[] = [];
    let zeros = 0;
    let repeats = 0;
    for (let i = 0; i < 64; i++) {
      if (i % 5 === 0) {
        parts.push(Buffer.alloc(CHUNK));
        zeros++;
      } else if (i % 7 === 0) {
        parts.push(repeated); // the same random chunk, again and again
        repeats++;
      } else {
        const c = Buffer.alloc(CHUNK);
        for (let o = 0; o < CHUNK; o += text.length) text.copy(c, o);
        c.writeUInt32LE(i, 100); // every text chunk is different
        parts.push(c);
      }
    }
    const data = Buffer.concat(parts);
    const { stats } = await roundTrip(data, { encrypted: false });
    assert.equal(stats.holeChunks, zeros);
    assert.equal(stats.dedupBytes, (repeats - 1) * CHUNK);
    assert.equal(stats.newChunks, 64 - zeros - (repeats - 1));
    assert.ok(stats.storedBytes < data.length / 4, `stored ${stats.storedBytes} of ${data.length}`);
  });

  it('restores every backup of an incremental chain, each to its own content, over an existing target', async () => {
    const dir = temp.make();
    const vol = path.join(dir, 'vol.img');
    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: true });
    const versions: { id: string; sha: string }[] = [];
    let sha = await writeRandomFile(vol, 8 * MiB + 777, 20);
    const chain: BackupManifest[] = [];
    for (let v = 0; v < 3; v++) {
      const prev = chain.at(-1) ?? null;
      if (v > 0) {
        await overwrite(vol, v * 2 * MiB + 5, randomBytesSeeded(300 * KiB, 100 + v));
        sha = await sha256File(vol);
      }
      const { manifest } = await backupFile(repo, vol, 'vol', { pool, previous: prev });
      assert.equal(manifest.kind, v === 0 ? 'full' : 'incremental');
      assert.equal(manifest.parentId, prev?.id ?? null);
      versions.push({ id: manifest.id, sha });
      chain.push(manifest);
    }
    assert.equal(new Set(versions.map((x) => x.sha)).size, 3);
    const target = path.join(dir, 'target.img');
    await fs.writeFile(target, Buffer.alloc(12 * MiB, 0xee)); // a larger file full of junk
    for (const v of versions) {
      await restoreTo(repo, v.id, target, pool);
      assert.equal((await fs.stat(target)).size, 8 * MiB + 777);
      assert.equal(await sha256File(target), v.sha);
    }
  });

  it('a backup given an already aborted signal does nothing', async () => {
    const dir = temp.make();
    const vol = path.join(dir, 'vol.img');
    await writeRandomFile(vol, 4 * MiB, 30);
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: false });
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    await assert.rejects(backupFile(repo, vol, 'vol', { pool, signal: ac.signal }), (err: unknown) => err instanceof AppError && err.code === ErrorCode.Cancelled);
    assert.deepEqual(await repo.listBackupIds(), []);
    assert.deepEqual(await listFilesRecursive(repoDir), ['config']);
  });

  it('a restore to a file creates nothing beside its target, and writes with direct I/O where the file system allows it', async () => {
    const dir = temp.make();
    const vol = path.join(dir, 'volume.img');
    const data = Buffer.concat([randomBytesSeeded(3 * MiB, 41), Buffer.alloc(2 * MiB), randomBytesSeeded(MiB + 512, 42)]);
    const want = await writeVolume(vol, data);
    const repo = await initRepo(path.join(dir, 'repo'), { encrypted: true });
    const { manifest } = await backupFile(repo, vol, 'vol', { pool });
    const targetDir = path.join(dir, 'restore-here');
    await fs.mkdir(targetDir);
    const target = path.join(targetDir, 'restored.img');
    // Every file the restore opens in the target's folder, and how.
    const opened: { file: string; flags: unknown }[] = [];
    const realOpen = fs.open;
    fs.open = (async (file: Parameters<typeof realOpen>[0], flags?: Parameters<typeof realOpen>[1], mode?: Parameters<typeof realOpen>[2]) => {
      if (String(file).startsWith(targetDir)) opened.push({ file: String(file), flags });
      return realOpen(file, flags, mode);
    }) as typeof realOpen;
    try {
      const r = await restoreTo(repo, manifest.id, target, pool);
      assert.equal('volumeDigest' in r && r.volumeDigest, manifest.volumeDigest);
      assert.equal(sha256(await fs.readFile(target)), want);
    } finally {
      fs.open = realOpen;
    }
    assert.deepEqual(await fs.readdir(targetDir), ['restored.img']);
    assert.deepEqual([...new Set(opened.map((o) => o.file))], [target], 'no scratch or temp file beside the target');
    assert.equal(Buffer.compare(await fs.readFile(target), data), 0);
    const O_DIRECT = fsConstants.O_DIRECT;
    if (O_DIRECT) {
      const directOpen = opened.some((o) => typeof o.flags === 'number' && (o.flags & O_DIRECT) !== 0);
      const supported = await realOpen(path.join(dir, 'probe'), fsConstants.O_RDWR | fsConstants.O_CREAT | O_DIRECT).then((fh) => fh.close().then(() => true), () => false);
      assert.equal(directOpen, supported, 'the target is opened with O_DIRECT exactly when the file system supports it');
    }
  });

  it('sparse 10 GiB volume with a few MiB of data, encrypted: identical and restored sparse', { timeout: 600_000 }, async () => {
    const size = 10 * GiB;
    const extents = [
      { offset: 0, data: randomBytesSeeded(1 * MiB, 41) },
      { offset: 3 * GiB + 12345, data: randomBytesSeeded(2 * MiB + 3, 42) },
      { offset: 7 * GiB - 100, data: randomBytesSeeded(1536 * KiB, 43) },
      { offset: size - MiB, data: randomBytesSeeded(MiB, 44) }, // the very last byte is data
    ];
    const dir = temp.make('sparse');
    const vol = path.join(dir, 'sparse.img');
    await makeSparseFile(vol, size, extents);
    assert.ok(await allocatedBytes(vol) < 16 * MiB, 'the source file should itself be sparse');

    // Expected hash, computed from what was written rather than read back.
    const want = sparseSha256(size, extents);
    const chunks = new Set<number>();
    for (const e of extents) for (let c = Math.floor(e.offset / CHUNK); c * CHUNK < e.offset + e.data.length; c++) chunks.add(c);

    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true });
    const { manifest, stats } = await backupFile(repo, vol, 'sparse', { pool });
    assert.equal(manifest.volumeDigest, volumeDigestOfExtents(repo, size, extents));
    assert.equal(stats.newChunks, chunks.size);
    assert.equal(stats.newBytes, chunks.size * CHUNK);
    assert.equal(stats.zeroBytes, size - chunks.size * CHUNK);
    assert.ok(stats.storedBytes < 16 * MiB, `stored ${stats.storedBytes} bytes`);

    const target = path.join(dir, 'restored.img');
    const r = await restoreTo(await reopenRepo(repoDir, true), manifest.id, target, pool);
    assert.equal(r.writtenBytes, chunks.size * CHUNK, 'restore should write only the stored chunks');
    const st = await fs.stat(target);
    assert.equal(st.size, size);
    const alloc = st.blocks * 512;
    assert.ok(alloc <= chunks.size * CHUNK + MiB, `restored file allocates ${alloc} bytes, expected about ${chunks.size * CHUNK}`);
    // The data extents, byte for byte; then the whole file's SHA-256.
    await assertExtents(target, extents);
    assert.equal(await sha256File(target), want);
  });
});

/** SHA-256 of a volume of `size` bytes that is zero except for `extents` (sorted, disjoint). */
function sparseSha256(size: number, extents: { offset: number; data: Uint8Array }[]): string {
  const h = createHash('sha256');
  const zeros = Buffer.alloc(8 * MiB);
  let pos = 0;
  const zeroUntil = (end: number): void => {
    while (pos < end) {
      const n = Math.min(zeros.length, end - pos);
      h.update(zeros.subarray(0, n));
      pos += n;
    }
  };
  for (const e of [...extents].sort((a, b) => a.offset - b.offset)) {
    zeroUntil(e.offset);
    h.update(e.data);
    pos += e.data.length;
  }
  zeroUntil(size);
  return h.digest('hex');
}

