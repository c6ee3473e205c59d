/**
 * A fresh PostgreSQL database per test file (created from nothing, dropped after). The server is
 * HAVEN_TEST_PG_URL, by default the local one CI and the development machines run; when it cannot
 * be reached the tests skip, except under CI (CI=true), where a missing database fails them.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

const ADMIN_URL = process.env.HAVEN_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export async function freshDatabase(): Promise<{ url: string; drop: () => Promise<void> } | { skip: string }> {
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  try {
    await admin.connect();
  } catch (err) {
    if (process.env.CI === 'true') throw new Error(`PostgreSQL at ${ADMIN_URL} is required under CI: ${(err as Error).message}`);
    return { skip: `no PostgreSQL at ${ADMIN_URL} (${(err as Error).message})` };
  }
  const name = `haven_t_${randomBytes(6).toString('hex')}`;
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const a = new pg.Client({ connectionString: ADMIN_URL });
      await a.connect();
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}
