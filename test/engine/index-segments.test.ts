/**
 * Volumes with more chunks than one index segment holds (INDEX_SEGMENT_CHUNKS): the index is split,
 * and backup, restore, verify and gc handle the boundary. A synthetic volume source (zeros plus a
 * few data blocks, computed on the fly) keeps this fast: 4 GiB at 4 KiB chunks is over 1 M chunks.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { writeBackup } from '../../src/engine/backup-writer.ts';
import { collectGarbage } from '../../src/engine/garbage-collector.ts';
import { INDEX_SEGMENT_CHUNKS } from '../../src/engine/repository.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { verifyRepository } from '../../src/engine/verifier.ts';
import type { VolumeSource } from '../../src/engine/volume-source.ts';
import { initRepo, reopenRepo, engineTestContext } from '../helpers/repo.ts';
import { allocatedBytes, assertExtents, MiB, randomBytesSeeded } from '../helpers/volumes.ts';
import { volumeDigestOfExtents } from '../helpers/volume-digest.ts';

const CHUNK = 4096;

/** A volume that is zero except for `extents`, generated on read. */
class SyntheticVolume implements VolumeSource {
  readonly sizeBytes: number;
  readonly extents: { offset: number; data: Buffer }[];

  constructor(sizeBytes: number, extents: { offset: number; data: Buffer }[]) {
    this.sizeBytes = sizeBytes;
    this.extents = extents;
  }

  async read(into: Uint8Array, length: number, position: number): Promise<number> {
    return this.fill(into, length, position);
  }

  private fill(into: Uint8Array, length: number, position: number): number {
    const n = Math.max(0, Math.min(length, this.sizeBytes - position));
    into.fill(0, 0, n);
    for (const e of this.extents) {
      const from = Math.max(position, e.offset);
      const to = Math.min(position + n, e.offset + e.data.length);
      if (from < to) into.set(e.data.subarray(from - e.offset, to - e.offset), from - position);
    }
    return n;
  }

  async close(): Promise<void> {}
}

const { temp, pool } = engineTestContext('haven-segments-');

describe('multi-segment indexes', () => {
  it('a volume of more than INDEX_SEGMENT_CHUNKS chunks round-trips, with data on both sides of the segment boundary', { timeout: 300_000 }, async () => {
    const chunks = INDEX_SEGMENT_CHUNKS + 5;
    const size = (chunks - 1) * CHUNK + 100; // last chunk partial
    const at = (chunk: number, seed: number, len = CHUNK): { offset: number; data: Buffer } => ({ offset: chunk * CHUNK, data: randomBytesSeeded(len, seed) });
    const extents = [
      at(0, 1),
      at(INDEX_SEGMENT_CHUNKS - 1, 2), // last chunk of segment 0
      at(INDEX_SEGMENT_CHUNKS, 3), // first chunk of segment 1
      at(INDEX_SEGMENT_CHUNKS + 2, 2), // same content as an earlier chunk: deduplicated
      at(chunks - 1, 4, 100),
    ];
    const source = new SyntheticVolume(size, extents);

    const dir = temp.make();
    const repoDir = path.join(dir, 'repo');
    const repo = await initRepo(repoDir, { encrypted: true, chunkSizeBytes: CHUNK });
    const { manifest, stats } = await writeBackup(repo, source, { volume: { id: 'big', name: 'big' }, pool });
    assert.equal(manifest.volumeDigest, volumeDigestOfExtents(repo, size, extents));
    assert.equal(manifest.chunkCount, chunks);
    assert.equal(manifest.indexSegments.length, 2);
    assert.deepEqual(manifest.indexSegments.map((s) => s.chunks), [INDEX_SEGMENT_CHUNKS, 5]);
    assert.equal(stats.newChunks, 4);
    assert.equal(stats.reusedChunks, 1);
    assert.equal(stats.holeChunks, chunks - 5);
    assert.equal(stats.newBytes, 3 * CHUNK + 100);

    const target = path.join(dir, 'restored.img');
    const r = await restoreBackup(await reopenRepo(repoDir, true), manifest, target, { pool });
    assert.equal('volumeDigest' in r && r.volumeDigest, manifest.volumeDigest);
    assert.equal((await fs.stat(target)).size, size);
    assert.ok(await allocatedBytes(target) <= 1 * MiB, 'the restored file should be sparse');
    await assertExtents(target, extents);
    const fh = await fs.open(target, 'r');
    try {
      // Zeros right around the boundary, too.
      const z = Buffer.alloc(CHUNK);
      await fh.read(z, 0, CHUNK, (INDEX_SEGMENT_CHUNKS + 1) * CHUNK);
      assert.ok(z.every((x) => x === 0));
    } finally {
      await fh.close();
    }

    const v = await verifyRepository(repo, { pool });
    assert.equal(v.ok, true);
    assert.equal(v.checkedChunks, 4);
    const g = await collectGarbage(repo);
    assert.equal(g.referencedChunks, 4);
    assert.equal(g.deletedChunks, 0);
    // Lose the second segment: the backup is reported, not silently partial.
    const seg1 = path.join(repoDir, ...manifest.indexSegments[1]!.key.split('/'));
    await fs.rm(seg1);
    const bad = await verifyRepository(repo, { pool });
    assert.equal(bad.ok, false);
    assert.ok(bad.backups[0]!.problems.some((p) => p.includes(manifest.indexSegments[1]!.key)), bad.backups[0]!.problems.join('; '));
  });
});
