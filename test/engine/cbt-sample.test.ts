/**
 * Changed-block tracking is not taken on trust: before a backup uses a source's changes it reads
 * a random sample of the chunks they call unchanged and compares them with the previous backup. A
 * tracker that missed a change (here a stand-in that claims nothing changed while the whole file
 * did: a fake of QEMU's dirty bitmap, named as one) makes the backup read everything, and say why.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { writeBackup } from '../../src/engine/backup-writer.ts';
import type { ChangedBlocks } from '../../src/engine/changed-blocks.ts';
import { Repository } from '../../src/engine/repository.ts';
import { restoreBackup } from '../../src/engine/restore-reader.ts';
import { FileVolumeSource, type VolumeSource } from '../../src/engine/volume-source.ts';
import { ChunkWorkerPool } from '../../src/engine/worker-pool.ts';
import { LocalObjectStore } from '../../src/storage/local-store.ts';

const MiB = 1024 * 1024;

/** A file read as it is, with the changes a tracker reports (the fake dirty bitmap). */
class TrackedFile implements VolumeSource {
  readonly sizeBytes: number;
  private readonly file: FileVolumeSource;
  private readonly changes: ChangedBlocks;
  constructor(file: FileVolumeSource, changes: ChangedBlocks) {
    this.file = file;
    this.sizeBytes = file.sizeBytes;
    this.changes = changes;
  }
  read(into: Uint8Array, length: number, position: number): Promise<number> {
    return this.file.read(into, length, position);
  }
  async changedBlocks(): Promise<ChangedBlocks> {
    return this.changes;
  }
  close(): Promise<void> {
    return this.file.close();
  }
}

describe('changed-block tracking is checked against a sample', () => {
  let dir: string;
  let repo: Repository;
  let pool: ChunkWorkerPool;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'haven-cbt-sample-'));
    repo = await Repository.init(new LocalObjectStore(path.join(dir, 'repo')), {});
    pool = new ChunkWorkerPool(2);
  });
  after(async () => {
    await pool.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  const backup = async (file: string, previous: Awaited<ReturnType<typeof writeBackup>>['manifest'] | null, changes: ChangedBlocks | null) => {
    const f = await FileVolumeSource.open(file);
    const source = changes ? new TrackedFile(f, changes) : f;
    try {
      return await writeBackup(repo, source, { volume: { id: 'v', name: 'v' }, previous, pool });
    } finally {
      await source.close();
    }
  };

  it('a tracker that tells the truth: only its changes and the sample are read', async () => {
    const file = path.join(dir, 'honest.img');
    await fs.writeFile(file, randomBytes(16 * MiB));
    const first = await backup(file, null, null);
    const fh = await fs.open(file, 'r+');
    await fh.write(randomBytes(4096), 0, 4096, 5 * MiB);
    await fh.close();
    const second = await backup(file, first.manifest, { sinceBackupId: first.manifest.id, extents: [{ start: 5 * MiB, length: 4096 }] });
    assert.equal(second.changedBlockTracking, true);
    assert.equal(second.changedBlockTrackingDistrusted, undefined);
    assert.ok(second.readBytes >= 4096 && second.readBytes <= 4096 + 32 * 64 * 1024, `readBytes ${second.readBytes}`);
    const out = path.join(dir, 'honest.out');
    await restoreBackup(repo, second.manifest, out, { pool });
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(file)));
  });

  it('a tracker that missed changes: the sample finds one, the whole volume is read, the backup is right', async () => {
    const file = path.join(dir, 'liar.img');
    await fs.writeFile(file, randomBytes(16 * MiB));
    const first = await backup(file, null, null);
    await fs.writeFile(file, randomBytes(16 * MiB)); // every chunk changed...
    const second = await backup(file, first.manifest, { sinceBackupId: first.manifest.id, extents: [] }); // ...and the tracker says none did
    assert.equal(second.changedBlockTracking, false);
    assert.match(second.changedBlockTrackingDistrusted ?? '', /changed though the changed-block tracking said it had not/);
    assert.ok(second.readBytes >= 16 * MiB, `readBytes ${second.readBytes}: the whole volume`);
    const out = path.join(dir, 'liar.out');
    await restoreBackup(repo, second.manifest, out, { pool });
    assert.ok((await fs.readFile(out)).equals(await fs.readFile(file)), 'the backup holds the volume as it is, not as the tracker said');
  });
});
