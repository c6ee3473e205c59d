/**
 * The catalog a configuration names, opened and migrated: PostgreSQL (HAVEN_CATALOG_URL) or the
 * SQLite file in the data folder. The one place that decides it, for the service (compose.ts) and
 * the operator commands (`haven project …`, `haven user …`), so both always work on the same catalog.
 */
import * as path from 'node:path';
import type { Config } from '../config/config.ts';
import { Catalog } from '../catalog/catalog.ts';
import { migrate } from '../catalog/migrate.ts';
import { PostgresDatabase } from '../catalog/postgres-database.ts';
import type { SqlDatabase } from '../catalog/sql.ts';
import { SqliteDatabase } from '../catalog/sqlite-database.ts';
import { secureDataFolder } from './data-folder.ts';

export async function openCatalog(config: Config): Promise<{ db: SqlDatabase; catalog: Catalog }> {
  secureDataFolder(config.dataDir, { sqliteCatalog: !config.catalogUrl });
  const db: SqlDatabase = config.catalogUrl ? new PostgresDatabase(config.catalogUrl) : new SqliteDatabase(path.join(config.dataDir, 'catalog.sqlite'));
  try {
    await migrate(db);
  } catch (err) {
    await db.close().catch(() => undefined); // the migration's error is the one to report
    throw err;
  }
  return { db, catalog: new Catalog(db) };
}
