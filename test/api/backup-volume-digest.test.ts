/**
 * A backup's volume digest is recorded in its catalog row when it completes (migration 0013), on
 * SQLite and on PostgreSQL; a backup job through the service fills it from its manifest.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { Catalog } from '../../src/catalog/catalog.ts';
import { migrate } from '../../src/catalog/migrate.ts';
import { PostgresDatabase } from '../../src/catalog/postgres-database.ts';
import type { SqlDatabase } from '../../src/catalog/sql.ts';
import { SqliteDatabase } from '../../src/catalog/sqlite-database.ts';
import type { Backup } from '../../src/domain/model.ts';
import { freshDatabase } from '../helpers/postgres.ts';
import { ADMIN_PASSWORD, startService } from '../helpers/service.ts';
import { volumeDigestOfFile } from '../helpers/volume-digest.ts';
import { MiB, overwrite, randomBytesSeeded, TempDirs } from '../helpers/volumes.ts';

const temp = new TempDirs('haven-vdigest-');
after(() => temp.cleanup());

const backup = (id: string): Backup => ({
  id, projectId: 'p', volumeId: 'v1', snapshotId: null, name: id, description: null, status: 'creating', fullBackup: true, parentId: null, sizeGb: 1, sizeBytes: 1, storedBytes: 0,
  newBytes: 0, objectCount: 0, origin: 'vbs', policyId: null, tags: [], failReason: null, availabilityZone: 'az', createdAt: 1, updatedAt: 1, dataTimestamp: 1, checkpointItemId: null,
});

/** completeBackup stores the digest (or null, for a manifest from before it) in the migrated column. */
async function checkColumn(db: SqlDatabase): Promise<void> {
  await migrate(db);
  const c = new Catalog(db);
  const digest = 'ab'.repeat(32);
  await c.backups.insertBackup(backup('new'));
  assert.ok(await c.backups.completeBackup('new', { sizeBytes: 1, storedBytes: 1, newBytes: 1, objectCount: 1, parentId: null, dataTimestamp: 1, volumeDigest: digest }, 2));
  await c.backups.insertBackup({ ...backup('old'), volumeId: 'v2' });
  assert.ok(await c.backups.completeBackup('old', { sizeBytes: 1, storedBytes: 1, newBytes: 1, objectCount: 1, parentId: null, dataTimestamp: 1, volumeDigest: null }, 2));
  const rows = await db.all<{ id: string; volume_digest: string | null }>('SELECT id, volume_digest FROM backups ORDER BY id');
  assert.deepEqual(rows.map((r) => ({ ...r })), [{ id: 'new', volume_digest: digest }, { id: 'old', volume_digest: null }]);
}

describe('the catalog records a backup\'s volume digest', async () => {
  it('migration 0013 and completeBackup, on SQLite', async () => {
    const db = new SqliteDatabase(path.join(temp.make(), 'catalog.db'));
    try {
      await checkColumn(db);
    } finally {
      await db.close();
    }
  });

  const pg = await freshDatabase();
  it('migration 0013 and completeBackup, on PostgreSQL', { skip: 'skip' in pg ? pg.skip : false }, async () => {
    if ('skip' in pg) return;
    const db = new PostgresDatabase(pg.url);
    try {
      await checkColumn(db);
    } finally {
      await db.close();
      await pg.drop();
    }
  });

  it('a backup job fills it with its manifest\'s digest: that of the volume as backed up', async () => {
    const svc = await startService(temp);
    try {
      const { token, projectId: pid } = await svc.login('admin', ADMIN_PASSWORD, 'admin');
      const v = ((await svc.req({ method: 'POST', url: `/v3/${pid}/volumes`, token, payload: { volume: { size: 1, name: 'src' } } })).json() as { volume: { id: string } }).volume.id;
      const file = await svc.volumePath(v);
      await overwrite(file, 5 * MiB + 7, randomBytesSeeded(3 * MiB, 61));
      const b = await svc.req({ method: 'POST', url: `/v2/${pid}/cloudbackups`, token, payload: { backup: { volume_id: v, name: 'd1' } } });
      const job = await svc.waitJob(token, pid, (b.json() as { job_id: string }).job_id);
      assert.equal(job.status, 'SUCCESS', JSON.stringify(job));
      const backupId = (job.entities as { backup_id: string }).backup_id;
      const row = await svc.app.catalog.db.get<{ volume_digest: string | null }>('SELECT volume_digest FROM backups WHERE id = ?', [backupId]);
      const manifest = await svc.app.engine.manifest(backupId);
      assert.equal(manifest.formatVersion === 2 && manifest.volumeDigest, row?.volume_digest);
      assert.equal(row?.volume_digest, await volumeDigestOfFile(svc.app.engine.repo, file));
    } finally {
      await svc.close();
    }
  });
});
