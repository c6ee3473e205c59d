/**
 * Forward-only numbered migrations (migrations/NNNN_name.sql), shared by both dialects. Each runs
 * in its own transaction and is recorded in schema_migrations; a catalog newer than this code is
 * refused rather than guessed at.
 */
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { AppError, ErrorCode } from '../domain/errors.ts';
import type { SqlDatabase, SqlExecutor } from './sql.ts';

const MIGRATIONS_DIR = path.resolve(import.meta.dirname, '..', '..', 'migrations');

interface Migration {
  version: number;
  name: string;
  sql: string;
}

function loadMigrations(): Migration[] {
  return readdirSync(MIGRATIONS_DIR)
    .filter((f) => /^\d{4}_[\w-]+\.sql$/.test(f))
    .sort()
    .map((f) => ({ version: Number(f.slice(0, 4)), name: f, sql: readFileSync(path.join(MIGRATIONS_DIR, f), 'utf8') }));
}

/** Processes starting together take turns (PostgreSQL); SQLite's BEGIN IMMEDIATE already does. */
async function lockMigrations(db: SqlDatabase, tx: SqlExecutor): Promise<void> {
  if (db.dialect === 'postgres') await tx.get('SELECT pg_advisory_xact_lock(7262930)');
}

/** Applies pending migrations; returns the versions applied. */
export async function migrate(db: SqlDatabase): Promise<number[]> {
  // CREATE TABLE IF NOT EXISTS is not safe against itself on PostgreSQL: two processes starting
  // together on a fresh database both try and one fails on pg_type's unique index. So it runs
  // under the migration lock too.
  await db.transaction(async (tx) => {
    await lockMigrations(db, tx);
    await tx.run('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
  });
  const migrations = loadMigrations();
  const applied: number[] = [];
  const rows = await db.all<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version');
  const done = new Set(rows.map((r) => Number(r.version)));
  const newest = migrations.at(-1)?.version ?? 0;
  const unknown = [...done].filter((v) => v > newest);
  if (unknown.length) throw new AppError(ErrorCode.CatalogError, `the catalog has schema version ${Math.max(...unknown)}, newer than this Haven knows (${newest}); upgrade Haven`);
  for (const m of migrations) {
    if (done.has(m.version)) continue;
    await db.transaction(async (tx) => {
      await lockMigrations(db, tx);
      // Another process may have applied it meanwhile.
      const again = await tx.get('SELECT version FROM schema_migrations WHERE version = ?', [m.version]);
      if (again) return;
      for (const stmt of splitStatements(m.sql)) await tx.run(stmt);
      await tx.run('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)', [m.version, m.name, Date.now()]);
      applied.push(m.version);
    });
  }
  return applied;
}

/** Splits a migration script at semicolons that end a line (the scripts keep to that form). */
function splitStatements(sql: string): string[] {
  return sql
    .split('\n')
    .filter((l) => !l.trim().startsWith('--'))
    .join('\n')
    .split(/;\s*$/m)
    .map((s) => s.trim())
    .filter(Boolean);
}
