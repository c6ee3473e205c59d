/**
 * Rules the catalog itself enforces, on SQLite and (when reachable) PostgreSQL: at most one backup
 * of a volume in `creating`, whatever process inserts it; migrations by processes starting together.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { Catalog, ProjectLock } from '../../src/catalog/catalog.ts';
import { migrate } from '../../src/catalog/migrate.ts';
import { PostgresDatabase } from '../../src/catalog/postgres-database.ts';
import type { SqlDatabase } from '../../src/catalog/sql.ts';
import { SqliteDatabase } from '../../src/catalog/sqlite-database.ts';
import type { Backup } from '../../src/domain/model.ts';
import { isUniqueViolation } from '../../src/services/backup-service.ts';
import { freshDatabase } from '../helpers/postgres.ts';
import { TempDirs } from '../helpers/volumes.ts';

const backup = (id: string, status: Backup['status']): Backup => ({
  id, projectId: 'p', volumeId: 'v1', snapshotId: null, name: id, description: null, status, fullBackup: true, parentId: null, sizeGb: 1, sizeBytes: 1, storedBytes: 0,
  newBytes: 0, objectCount: 0, origin: 'vbs', policyId: null, tags: [], failReason: null, availabilityZone: 'az', createdAt: 1, updatedAt: 1, dataTimestamp: 1, checkpointItemId: null,
});

async function check(db: SqlDatabase): Promise<void> {
  await migrate(db);
  const c = new Catalog(db);
  // The per-key lock only means something inside a transaction; outside one it is refused.
  await assert.rejects(c.lockKey(ProjectLock.policies, 'p'), /needs a transaction/);
  await c.transaction((tx) => tx.lockKey(ProjectLock.policies, 'p'));
  await c.backups.insertBackup(backup('a', 'creating'));
  await c.backups.insertBackup(backup('b', 'available'));
  await assert.rejects(c.backups.insertBackup(backup('c', 'creating')), (err: unknown) => isUniqueViolation(err));
  // Once the first is done, the next may start.
  assert.ok(await c.backups.applyBackupEvent('a', 'succeed', 2));
  await c.backups.insertBackup(backup('c', 'creating'));
  assert.equal(await c.backups.countInStatus('v1', ['creating']), 1);
}

describe('catalog constraints', async () => {
  const temp = new TempDirs('haven-cat-');
  it('one creating backup per volume (SQLite)', async () => {
    const db = new SqliteDatabase(path.join(temp.make('sqlite'), 'c.sqlite'));
    try {
      await check(db);
    } finally {
      await db.close();
      temp.cleanup();
    }
  });
  const pgdb = await freshDatabase();
  it('one creating backup per volume (PostgreSQL)', { skip: 'skip' in pgdb ? pgdb.skip : false }, async () => {
    if ('skip' in pgdb) return;
    const db = new PostgresDatabase(pgdb.url);
    try {
      await check(db);
    } finally {
      await db.close();
      await pgdb.drop();
    }
  });
  const fresh = await freshDatabase();
  it('processes starting together on a fresh PostgreSQL database all migrate it, each migration applied once', { skip: 'skip' in fresh ? fresh.skip : false }, async () => {
    if ('skip' in fresh) return;
    const dbs = Array.from({ length: 4 }, () => new PostgresDatabase(fresh.url));
    try {
      const applied = await Promise.all(dbs.map((db) => migrate(db)));
      const all = applied.flat().sort((a, b) => a - b);
      const versions = (await dbs[0]!.all<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version')).map((r) => Number(r.version));
      assert.deepEqual(all, versions, 'every migration applied by exactly one of them');
      assert.ok(versions.length > 0);
    } finally {
      for (const db of dbs) await db.close();
      await fresh.drop();
    }
  });
  it('opening a new SQLite file while another process holds its lock waits for it instead of failing', async () => {
    const file = path.join(temp.make('sqlite-busy'), 'c.sqlite');
    // Another process takes the file's write lock for a moment (as one starting at the same time does).
    const holder = spawn(process.execPath, ['-e', `
      const { DatabaseSync } = require('node:sqlite');
      const db = new DatabaseSync(${JSON.stringify(file)});
      db.exec('BEGIN EXCLUSIVE; CREATE TABLE t (x INTEGER);');
      process.stdout.write('locked\\n');
      setTimeout(() => { db.exec('COMMIT'); db.close(); }, 400);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = once(holder, 'exit');
    await once(createInterface({ input: holder.stdout! }), 'line');
    const db = new SqliteDatabase(file);
    try {
      await migrate(db);
      assert.ok((await db.all('SELECT version FROM schema_migrations')).length > 0);
    } finally {
      await db.close();
      await exited;
    }
  });
});
